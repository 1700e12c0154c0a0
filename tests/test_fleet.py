"""Fleets: many suspects against one reference, loaded once; one document and report each, an index, one SARIF,
an exit code for the whole run, and a broken suspect that does not stop it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scanner.cli.app import EXIT_ERROR, describe, exit_code_for
from scanner.cli.fleet import output_names
from scanner.errors import IncompatibleModelsError
from scanner.inputs.suspects import expand_suspects, read_listing
from scanner.zoo.specs import EMOJI_TRIGGER

from helpers import invoke, probe_lines


def _fleet_dir(zoo_dir: Path, tmp_path: Path) -> Path:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    for name in ("emoji", "clean", "task"):
        os.symlink(zoo_dir / name, fleet / name)
    (fleet / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    (fleet / "notes.txt").write_text("not a model", encoding="utf-8")
    return fleet


@pytest.mark.e2e
def test_a_fleet_writes_every_report_an_index_and_one_sarif(zoo_dir, tmp_path, monkeypatch):
    import scanner.api.reference

    loads = []
    real = scanner.api.reference.load_reference
    monkeypatch.setattr(scanner.api.reference, "load_reference", lambda *a, **k: loads.append(a) or real(*a, **k))
    probes = tmp_path / "probes.txt"
    probes.write_text("\n".join(probe_lines(zoo_dir, 16)) + "\n", encoding="utf-8")
    out = tmp_path / "reports"
    args = (_fleet_dir(zoo_dir, tmp_path), "--reference", zoo_dir / "base", "--trigger", EMOJI_TRIGGER, "--probes", probes,
            "--position", "random", "--out-dir", out, "--sarif", tmp_path / "fleet.sarif", "--quiet")
    result = invoke("scan", *args)
    assert result.exit_code == 2, result.output  # a suspect could not be scanned, and no --keep-going
    assert len(loads) == 1, "the reference is loaded once for the whole fleet"
    assert sorted(p.name for p in out.iterdir()) == ["clean.html", "clean.json", "emoji.html", "emoji.json", "index.html",
                                                     "task.html", "task.json"]
    index = (out / "index.html").read_text(encoding="utf-8")
    assert index.index("emoji.html") < index.index("NOT SCANNED") < index.index("clean.html"), "worst first"
    assert "broken.safetensors" in index and "task.html" in index
    assert json.loads((out / "emoji.json").read_text(encoding="utf-8"))["verdict"]["level"] == "BACKDOORED"
    assert json.loads((out / "clean.json").read_text(encoding="utf-8"))["verdict"]["level"] == "CLEAN"
    sarif = json.loads((tmp_path / "fleet.sarif").read_text(encoding="utf-8"))
    verdicts = {Path(v["suspect"]).name: v["level"] for v in sarif["runs"][0]["properties"]["verdicts"]}
    assert verdicts == {"emoji": "BACKDOORED", "clean": "CLEAN", "task": "CLEAN", "broken.safetensors": "NOT SCANNED"}
    (invocation,) = sarif["runs"][0]["invocations"]
    assert invocation["executionSuccessful"] is False  # a suspect nobody scanned is no suspect without findings
    (notification,) = invocation["toolExecutionNotifications"]
    assert notification["level"] == "error" and "broken.safetensors: not scanned:" in notification["message"]["text"]
    assert "BACKDOORED" in result.stdout and "NOT SCANNED" in result.stdout
    going = invoke("scan", *args, "--keep-going")
    assert going.exit_code == 1, going.output  # the worst verdict decides once broken suspects are let go
    never = invoke("scan", *args, "--keep-going", "--fail-on", "never")
    assert never.exit_code == 0


def test_suspects_expand_from_directories_and_listings(zoo_dir, tmp_path):
    fleet = _fleet_dir(zoo_dir, tmp_path)
    assert [p.name for p in expand_suspects([fleet])] == ["broken.safetensors", "clean", "emoji", "task"]
    assert expand_suspects([zoo_dir / "emoji"]) == [zoo_dir / "emoji"]
    listing = tmp_path / "suspects.txt"
    listing.write_text(f"# models to audit\nfleet/emoji\n{zoo_dir / 'clean'}  # absolute\n\n", encoding="utf-8")
    assert read_listing(listing) == [fleet / "emoji", zoo_dir / "clean"]


def test_output_names_are_distinct_and_file_safe():
    assert output_names([Path("a/model"), Path("b/model"), Path("c.safetensors"), Path("b/model")]) == [
        "model", "b-model", "c", "b-model-2"]


def test_a_suspect_not_scanned_is_worded_as_its_error_alone_would_be(capsys):
    """What the fleet shows (its summary, its index) for a suspect that failed is the line the error would have
    printed on its own, cause label included: one mapping from errors to words, in ``scanner.cli.app``."""
    error = IncompatibleModelsError("suspect models/x: 2 layers, the reference has 4")
    assert describe(error) == "incompatible models: suspect models/x: 2 layers, the reference has 4"
    assert exit_code_for(error, debug=False) == EXIT_ERROR
    assert capsys.readouterr().err == f"error: {describe(error)}\n"


@pytest.mark.e2e
def test_fleet_usage_errors_say_what_to_do(zoo_dir, tmp_path):
    fleet = _fleet_dir(zoo_dir, tmp_path)
    missing_dir = invoke("scan", fleet, "--reference", zoo_dir / "base")
    assert missing_dir.exit_code == 2 and "--out-dir" in missing_dir.stderr
    per_model = invoke("scan", zoo_dir / "emoji", zoo_dir / "clean", "--reference", zoo_dir / "base", "--json", tmp_path / "f.json",
                       "--out-dir", tmp_path / "o")
    assert per_model.exit_code == 2 and "--out-dir" in per_model.stderr
    one = invoke("scan", zoo_dir / "emoji", "--reference", zoo_dir / "base", "--out", tmp_path / "r.html", "--out-dir", tmp_path / "o")
    assert one.exit_code == 2 and "per model" in one.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = invoke("scan", empty, "--reference", zoo_dir / "base", "--out-dir", tmp_path / "o")
    assert nothing.exit_code == 2 and "no .safetensors" in nothing.stderr


def test_a_failed_rescan_drops_the_old_verdict_and_a_stopped_run_names_what_it_did_not_reach(tmp_path, monkeypatch):
    """Two fleet paths that need no model: a suspect that now fails loses the findings and report an earlier run
    wrote for it (a pipeline reading ``*.json`` must not find a stale verdict beside "not scanned"), and a run
    that an error stops still writes its index, naming every suspect it did not reach."""
    import scanner.api.fleet
    from rules.engine import default_pack
    from scanner.api.fleet import FleetResult
    from scanner.cli.fleet import run_fleet
    from scanner.options import ScanOptions

    suspects = [tmp_path / "first", tmp_path / "second", tmp_path / "third"]
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("first.json", "first.html"):
        (out / stale).write_text("an earlier scan's verdict", encoding="utf-8")

    def fails_then_stops(suspects, reference, options, progress, on_result):
        on_result(0, FleetResult(suspects[0], None, IncompatibleModelsError("first: other shapes")))
        raise RuntimeError("the reference's disk went away")

    monkeypatch.setattr(scanner.api.fleet, "scan_fleet", fails_then_stops)
    with pytest.raises(RuntimeError):
        run_fleet(suspects, "base", ScanOptions(), default_pack(), out, tmp_path / "fleet.sarif", "SUSPICIOUS",
                  keep_going=False, quiet=True)
    sarif = json.loads((tmp_path / "fleet.sarif").read_text(encoding="utf-8"))
    (invocation,) = sarif["runs"][0]["invocations"]
    assert not invocation["executionSuccessful"] and len(invocation["toolExecutionNotifications"]) == 3
    assert [v["level"] for v in sarif["runs"][0]["properties"]["verdicts"]] == ["NOT SCANNED"] * 3
    assert not (out / "first.json").exists() and not (out / "first.html").exists()
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "incompatible models: first: other shapes" in index
    assert index.count("not reached: the run stopped on an error") == 2
    assert "This run did not finish:</strong> an error stopped it" in index
