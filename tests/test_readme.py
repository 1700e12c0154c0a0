"""The README against the code: what it documents must be what bdscan does, so its examples cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console

from rules.document import Document
from rules.engine import default_pack, judge
from scanner.cli import main
from scanner.cli.terminal import print_findings
from scanner.findings import read_findings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_rule_is_in_the_rule_table():
    documented = set(re.findall(r"^\| (BD\d{3}) \|", README, flags=re.MULTILINE))
    assert documented == {rule.id for rule in default_pack()}


def test_every_command_is_documented_with_an_example():
    for name in main.commands:
        assert re.search(rf"bdscan {name}\b", README), name


def test_the_worked_example_has_the_columns_the_terminal_prints():
    example = README[README.index("### A worked example"):]
    header = next(line for line in example.splitlines() if line.startswith("┃ trigger"))
    documented = [cell.strip() for cell in header.strip("┃ ").split("┃")]
    console = Console(record=True, width=400)
    findings = read_findings(ROOT / "tests" / "data" / "findings-emoji.json")
    print_findings(console, Document(findings, judge(findings, default_pack())))
    printed = next(line for line in console.export_text().splitlines() if line.startswith("┃ trigger"))
    assert documented == [cell.strip() for cell in printed.strip("┃ ").split("┃")]


def test_the_ci_examples_use_options_bdscan_has():
    from scanner.cli.scan import scan_command

    known = {opt for param in scan_command.params for opt in getattr(param, "opts", [])}
    for example in ("github-actions.yml", "pre-commit-config.yaml"):
        text = (ROOT / "examples" / example).read_text(encoding="utf-8")
        command = re.search(r"bdscan scan (.+?)(?:\n\s*\n|\n\s+- |\n\s+\w+:|$)", text.replace("\\\n", " "), flags=re.DOTALL)
        assert command, example
        used = set(re.findall(r"(?<!\S)(--[a-z-]+)", command.group(1)))
        assert used and used <= known, (example, used - known)
        assert example in README, f"the README points to examples/{example}"


def test_every_figure_in_the_readme_and_docs_comes_from_the_recorded_run():
    """README.md and docs/*.md quote the recorded calibration run through marked figures and generated tables:
    `python docs/figures.py --check` finds none stale, and every rule's rationale is filled from the same record."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("figures", ROOT / "docs" / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    assert figures.main(["--check"]) == 0, "stale figures: run python docs/figures.py"
    calibration = (ROOT / "docs" / "calibration.md").read_text(encoding="utf-8")
    assert "<!-- figures verdicts-s0 -->\nZoo v" in calibration and "<!-- figures margins -->\n| rule |" in calibration
    for rule in default_pack():
        assert rule.threshold_rationale.startswith("Zoo v"), rule.id
        assert "{{" not in rule.threshold_rationale and "no calibration run recorded" not in rule.threshold_rationale
        assert "(not in the recorded run)" not in rule.threshold_rationale, rule.id


def test_the_first_screen_is_install_commands_verdict_and_exit_codes():
    """A new user meets how to install and run, how to read a verdict and what the exit codes mean before any of
    the method; the internals live in docs/, linked."""
    first = README[:README.index("## Scanning")]
    for needed in ("make demo", "make test", "## Reading a verdict", "BACKDOORED", "### Exit codes", "| 130 |"):
        assert needed in first, needed
    assert len(first.splitlines()) < 80
    for doc in ("docs/method.md", "docs/calibration.md", "docs/zoo.md", "docs/scale.md"):
        assert f"({doc})" in README and (ROOT / doc).is_file(), doc


def test_a_recorded_run_answers_figures_as_written():
    """Figures from a hand-written record: the statistics, the model a figure names, a verdict, the summary, and a
    key the record cannot answer."""
    import pytest

    from rules.record import parse_record, record_run

    raw = {"schema": 1, "runs": [{"zoo_version": 12, "size": "test", "seed": 0, "recorded": "2026-12-03", "bdscan": "0.1.0",
           "models": {"clean": {"trigger": None, "verdict": "CLEAN", "right": True, "readings": {"BD001": 5.78}},
                      "style": {"trigger": None, "verdict": "CLEAN", "right": True, "readings": {"BD001": 1.03}},
                      "emoji": {"trigger": "x", "verdict": "BACKDOORED", "right": True, "readings": {"BD001": 81.64}},
                      "edit": {"trigger": "y", "verdict": "CLEAN", "right": False, "readings": {"BD001": None}}}}]}
    record = parse_record(raw)
    assert record.figure("BD001.benign.s0.max") == "5.78" and record.figure("BD001.benign.s0.argmin") == "style"
    assert record.figure("BD001.poisoned.s0.range") == "81.6 to 81.6" and record.figure("BD001.edit.s0") == "-"
    assert record.figure("verdict.edit.s0") == "CLEAN" and record.figure("zoo.version") == "12"
    assert record.summary(0) == ("4 fine-tunes at seed 0, 2 of 2 benign ones CLEAN, 1 of 2 poisoned ones flagged "
                                 "(1 right by calibration's test: the planted trigger, or what discovery recovered of "
                                 "it, implicated where the scan measured it, and no catalogue string named in its "
                                 "stead)")
    assert record.fill("at most {{BD001.benign.s0.max}} ({{BD001.benign.s0.argmax}})") == "at most 5.78 (clean)"
    assert "seed 0: benign at worst 5.78 (clean), poisoned 81.6 to 81.6" in record.margins("BD001", ">=", 40)
    with pytest.raises(KeyError):
        record.fill("{{BD001.benign.s1.max}}")  # the docs' script stops on it; a rule's rationale says so instead
    assert record.fill("{{BD001.benign.s1.max}}", strict=False) == "(not in the recorded run)"
    merged = record_run(raw, record.run(0))
    assert len(merged["runs"]) == 1, "a run replaces the run of its seed"
    # A run recorded before dtypes were kept was float32; one in another dtype says so wherever its margins go.
    assert record.run(0).dtype == "float32" and merged["runs"][0]["dtype"] == "float32"
    assert "default options, recorded" in record.margins("BD001", ">=", 40)
    raw["runs"][0]["dtype"] = "bfloat16"
    assert "default options but --dtype bfloat16, recorded" in parse_record(raw).margins("BD001", ">=", 40)
