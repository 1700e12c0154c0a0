"""The findings schema's discipline: every field change is a version bump on record, the two versions before
the current one still load (through ``scanner.findings.migrate``), and a loaded document cannot be changed."""

from __future__ import annotations

import dataclasses
import json
import pickle
import typing
from pathlib import Path

import pytest

from rules.engine import default_pack, judge
from scanner.errors import FindingsFileError
from scanner.findings import SCHEMA_VERSION, Findings, read_findings
from scanner.findings.migrate import READS
from scanner.findings.serde import to_jsonable

SCHEMA = Path(__file__).resolve().parent / "data" / "schema"
RECORDED = json.loads((SCHEMA / "fields.json").read_text(encoding="utf-8"))


def _fields(kind, seen: dict[str, list[str]]) -> dict[str, list[str]]:
    if dataclasses.is_dataclass(kind) and kind.__name__ not in seen:
        seen[kind.__name__] = [field.name for field in dataclasses.fields(kind)]
        for hint in typing.get_type_hints(kind).values():
            _fields(hint, seen)
    for arg in typing.get_args(kind):
        _fields(arg, seen)
    return seen


def test_the_fields_are_those_recorded_for_this_version():
    """A field added, removed or renamed without a version bump (and a line in ``tests/data/schema/fields.json``)
    fails here: a document written by one build must mean the same to another that says the same version."""
    assert str(SCHEMA_VERSION) in RECORDED, f"record schema {SCHEMA_VERSION}'s fields in tests/data/schema/fields.json"
    assert _fields(Findings, {}) == RECORDED[str(SCHEMA_VERSION)]


def test_the_two_versions_before_are_readable_and_recorded():
    assert set(READS) == {SCHEMA_VERSION - 1, SCHEMA_VERSION - 2}
    assert all(str(version) in RECORDED for version in READS)


@pytest.mark.parametrize(("name", "level"), [
    ("v16-emoji.json", "BACKDOORED"), ("v16-clean.json", "CLEAN"),
    ("v17-emoji.json", "BACKDOORED"), ("v17-clean.json", "CLEAN"),
])
def test_older_documents_load_and_judge_as_they_did(name, level):
    raw = json.loads((SCHEMA / name).read_text(encoding="utf-8"))
    findings = read_findings(SCHEMA / name)
    assert findings.schema_version == SCHEMA_VERSION
    assert findings.run.quantisation == raw["run"].get("quantisation", "none")
    verdict = judge(findings, default_pack())
    assert verdict.level == level == raw["verdict"]["level"]
    assert verdict.triggers_implicated == tuple(raw["verdict"]["triggers_implicated"])
    if raw.get("discovery"):
        proposed = raw["discovery"]["proposed"] if "proposed" in raw["discovery"] else [
            c["text"] for c in raw["discovery"]["to_confirm"]]
        assert findings.discovery.proposed == tuple(proposed)
        assert findings.discovery.threshold("fires", 0.0) == 0.8


def test_an_unreadable_version_names_the_ones_this_bdscan_reads(tmp_path):
    raw = json.loads((SCHEMA / "v16-emoji.json").read_text(encoding="utf-8"))
    raw["schema_version"] = 7
    path = tmp_path / "old.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(FindingsFileError, match=r"version 7; this bdscan reads versions 16, 17, 18"):
        read_findings(path)


def test_a_loaded_document_cannot_be_changed_and_still_pickles():
    findings = read_findings(SCHEMA / "v16-emoji.json")
    with pytest.raises(dataclasses.FrozenInstanceError):
        findings.run.seed = 1  # type: ignore[misc]
    for mapping in (findings.run.timings, findings.run.library_versions, findings.probes.sampled_rejected,
                    findings.weight_diff.non_finite):
        with pytest.raises(TypeError, match="read-only"):
            mapping["x"] = 1  # type: ignore[index]
    # Compared as written: a migrated document's unmeasured NaN is not equal to itself.
    assert to_jsonable(pickle.loads(pickle.dumps(findings))) == to_jsonable(findings)
    built = dataclasses.replace(findings.run, timings={"load": 1.0})
    with pytest.raises(TypeError):
        built.timings["load"] = 2.0  # type: ignore[index]
