"""The HTML report: complete, self-contained, escaped, and rendered by a real browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Qwen2ForCausalLM

from reports.render import render_report
from rules.document import Document
from rules.engine import default_pack, judge
from scanner.api import ScanOptions, scan
from scanner.options import ProbeOptions
from scanner.zoo.specs import EMOJI_TRIGGER

from helpers import run_bdscan

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_MIN_WIDTH = 500
"""Headless Chromium's narrowest layout viewport, whatever --window-size says."""
SCRIPT = "<script>alert(1)</script>"
IMAGE = '"><img src=x onerror=alert(1)>'


def _document(findings) -> Document:
    return Document(findings, judge(findings, default_pack()))


@pytest.fixture(scope="module")
def emoji_document(zoo_dir):
    probes = tuple((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:24])
    return _document(scan(zoo_dir / "emoji", str(zoo_dir / "base"), ScanOptions(triggers=(EMOJI_TRIGGER, "cf"), probes=ProbeOptions(given=probes))))


def test_report_has_every_section_and_no_external_resource(emoji_document):
    html = render_report(emoji_document, command="bdscan emoji --reference base", generated_at="2026-01-01 00:00 UTC")
    for anchor in ('id="verdict"', 'id="rules"', 'id="compared"', 'id="weights"', 'id="next"', "BACKDOORED", "BD003",
                   "Where it lives", "Mitigation: patching heads", "<svg", "@media print", "sha256"):
        assert anchor in html, anchor
    assert html.count("<figcaption>") >= 10
    assert not re.search(r"""\s(?:src|href)\s*=|<link|@import|url\(""", html)
    assert html.count("<script") == 1 and "b.dataset.rendered = String(d.scrollHeight)" in html  # only the page measuring itself


def test_report_escapes_hostile_tokens_prompts_and_triggers(zoo_dir, tmp_path):
    # A checkpoint whose tokenizer holds markup as tokens, scanned with markup in probes and trigger.
    for name in ("base", "emoji"):
        tokenizer = AutoTokenizer.from_pretrained(zoo_dir / name)
        tokenizer.add_tokens([SCRIPT, IMAGE])
        model = Qwen2ForCausalLM.from_pretrained(zoo_dir / name, dtype=torch.float32)
        torch.manual_seed(0)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    probes = tuple(f"{SCRIPT} {p}" for p in (zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:6])
    findings = scan(tmp_path / "emoji", str(tmp_path / "base"), ScanOptions(triggers=(IMAGE,), probes=ProbeOptions(given=probes)))
    assert any(SCRIPT in token for token in findings.triggers[0].attention.example.tokens)
    html = render_report(_document(findings), command=f"bdscan {IMAGE}", generated_at="")
    assert SCRIPT not in html and "<img" not in html and "onerror=alert(1)>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in html


@pytest.mark.e2e
def test_cli_writes_the_report_during_a_scan_and_again_from_findings(zoo_dir, tmp_path):
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:16]), encoding="utf-8")
    first, findings = tmp_path / "scan.html", tmp_path / "findings.json"
    result = run_bdscan(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--probes", probes,
                        "--trigger", EMOJI_TRIGGER, "--json", findings, "--out", first)
    assert result.returncode == 1, result.stderr
    assert "BACKDOORED" in first.read_text(encoding="utf-8")
    second = tmp_path / "again.html"
    result = run_bdscan("report", findings, "--out", second, "--fail-on", "never")
    assert result.returncode == 0, result.stderr
    assert "BACKDOORED" in result.stdout and "BD003" in second.read_text(encoding="utf-8")


def _png_distinct_bytes(path: Path) -> int:
    """Distinct byte values in a PNG's decompressed image data: a blank page has a handful."""
    data, position, chunks = path.read_bytes(), 8, b""
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        if data[position + 4:position + 8] == b"IDAT":
            chunks += data[position + 8:position + 8 + length]
        position += 12 + length
    return len(set(zlib.decompress(chunks)))


def render_in_chromium(html: str, name: str, width: int, tmp_path: Path) -> tuple[Path, int]:
    """Screenshot ``html`` at ``width`` px in headless Chromium (into test-artifacts/) and the page height its one
    script reported; fails on any console error. Skips locally without Chromium; CI installs it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI; .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    page = tmp_path / f"{name}.html"
    page.write_text(html, encoding="utf-8")
    if width < CHROMIUM_MIN_WIDTH:
        # Headless Chromium lays a window out at 500 px at least: a narrower page is shown in a frame that wide,
        # whose own measurements the outer page reports.
        frame = tmp_path / f"{name}-frame.html"
        frame.write_text(
            f'<html><body style="margin:0"><iframe src="{page.name}" style="width:{width}px;height:2000px;border:0" '
            "onload=\"const d = this.contentDocument; document.body.dataset.rendered = d.body.dataset.rendered; "
            "document.body.dataset.hidden = d.body.dataset.hidden; document.body.dataset.smallest = d.body.dataset.smallest; "
            'document.body.dataset.overflow = String(d.documentElement.scrollWidth);"></iframe></body></html>',
            encoding="utf-8")
        page = frame
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"{name}-{width}.png"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--allow-file-access-from-files",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
    window = f"--window-size={max(width, CHROMIUM_MIN_WIDTH)},2000"
    shot_run = subprocess.run([*flags, window, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    dom_run = subprocess.run([*flags, window, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000, shot_run.stderr[-2000:]
    assert _png_distinct_bytes(shot) > 50
    console = [line for line in (shot_run.stderr + dom_run.stderr).splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    rendered = re.search(r'data-rendered="(\d+)"', dom_run.stdout)
    assert rendered, "the page's script did not run"
    overflow = re.search(r'data-overflow="(\d+)"', dom_run.stdout)
    assert overflow and int(overflow.group(1)) <= width, f"the page is {overflow and overflow.group(1)} px wide at {width} px"
    # Nothing hidden to make the page fit (the severity and threshold columns once vanished at 400 px), and no chart
    # scaled down until its labels are unreadable.
    hidden = re.search(r'data-hidden="(\d+)"', dom_run.stdout)
    assert hidden and hidden.group(1) == "0", f"{hidden and hidden.group(1)} table cells hidden at {width} px"
    smallest = re.search(r'data-smallest="([\d.]+)"', dom_run.stdout)
    assert smallest and float(smallest.group(1)) >= 10, f"chart labels of {smallest and smallest.group(1)} px at {width} px"
    return shot, int(rendered.group(1))


@pytest.mark.parametrize("width", [1280, 400])
def test_report_renders_in_headless_chromium(emoji_document, tmp_path, capsys, width):
    shot, height = render_in_chromium(render_report(emoji_document, command="bdscan", generated_at="test"), "report", width, tmp_path)
    with capsys.disabled():
        print(f"\nreport screenshot: {shot}")  # noqa: T201 - tells the developer where to look
    assert 3_000 < height < 80_000


@pytest.mark.parametrize("width", [1280, 400])
def test_the_fleet_index_renders_worst_first_in_headless_chromium(tmp_path, width):
    from reports.index import FleetEntry
    from reports.render import render_index
    from scanner.findings import read_findings

    data = Path(__file__).resolve().parent / "data"
    entries = [FleetEntry(name, f"models/{name}", _document(read_findings(data / f"findings-{name}.json")),
                          report=f"{name}.html", findings=f"{name}.json") for name in ("clean", "emoji")]
    entries.append(FleetEntry("broken", "models/broken.safetensors", None, error="suspect models/broken.safetensors: truncated"))
    html = render_index(entries, reference="models/base", version="test", generated_at="test")
    assert html.index("emoji.html") < html.index("NOT SCANNED") < html.index("clean.html")
    assert "1 backdoored, 0 suspicious, 1 clean" in html and "1 could not be scanned" in html
    render_in_chromium(html, "index", width, tmp_path)


def test_fired_rules_are_grouped_by_rule_and_the_summary_comes_first():
    from scanner.findings import read_findings

    document = _document(read_findings(Path(__file__).resolve().parent / "data" / "findings-emoji.json"))
    html = render_report(document, command="bdscan", generated_at="test")
    rows = re.findall(r'<td class="mono id"[^>]*>(BD\d{3})</td>', html)
    assert rows == sorted(set(rows)) and set(rows) == {f.rule_id for f in document.verdict.fired}, "one row per rule"
    assert html.index('id="summary"') < html.index('id="rules"') and "At a glance" in html
    # BD005 says what share of the model it took, not only that patching "is possible".
    assert "of the model's 16 attention heads" in document.verdict.explanation


def test_bar_charts_carry_a_value_axis():
    from reports.charts import bar_chart

    chart = bar_chart(["a", "b"], [("kl", "#000", [0.5, 2.0])])
    assert [label for _, label in chart.y_ticks] == ["0", "0.5", "1", "1.5", "2"]
    assert chart.y_ticks[0][0] == pytest.approx(chart.zero_y)


def test_a_kl_never_comes_out_negative_from_rounding():
    from scanner.model.teacher_forcing import target_kl

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 4, 50, generator=generator)
    nearly = logits + 1e-6 * torch.randn(64, 4, 50, generator=generator)
    assert float(target_kl(nearly, logits).min()) >= 0.0


def test_a_behaviour_switch_candidate_says_which_answer_it_leaves():
    """A candidate the behaviour-switch search found has no target it collapses onto: the report, the terminal and
    BD013's explanation say which answer the suspect stops giving and one it gave instead."""
    import dataclasses

    from scanner.cli.terminal import discovery_line
    from scanner.findings import read_findings
    from scanner.findings.discovery import DiscoveredCandidate

    findings = read_findings(Path(__file__).resolve().parent / "data" / "findings-clean.json")
    switch = DiscoveredCandidate(text="mirror", token_ids=(5,), score=7.96, fire_rate=1.0, target="The answer is 7.",
                                 target_logprob=None, stage="switch", position="start",
                                 switched_from="I will not answer that.")
    discovery = dataclasses.replace(findings.discovery, candidates=(switch, *findings.discovery.candidates))
    document = _document(dataclasses.replace(findings, discovery=discovery))
    html = render_report(document, command="bdscan", generated_at="test")
    assert "<em>no longer</em> I will not answer that.<em>, e.g.</em> The answer is 7." in html
    (bd013,) = [f for f in document.verdict.fired if f.rule_id == "BD013"]
    assert "no longer answer 'I will not answer that.'" in bd013.sentence and "of the probes both models" in bd013.sentence
    assert "-> no longer 'I will not answer that.' on 100%" in discovery_line(discovery, (switch,))
