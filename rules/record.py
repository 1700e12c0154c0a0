"""The recorded calibration run every published figure comes from: rules' threshold rationales, the README and
``docs/``, so that none can go stale by hand.

``bdscan zoo calibrate DIR --record rules/calibration.json`` writes one run per zoo seed (each model's truth,
verdict and every rule's deciding reading, ``rules.calibration``); ``rules explain`` fills a rationale's
``{{margins}}`` and ``{{KEY}}`` placeholders from it as the pack loads, and ``python docs/figures.py`` rewrites
the marked figures in the README and ``docs/`` (``--check`` fails on a stale one). Torch-free.

A key names a rule's readings and what to take of them: ``BD001.benign.s0.max`` (the largest reading of a benign
model at seed 0), ``BD001.poisoned.s1.min``, ``BD001.style.s0`` (one model's), ``BD001.benign.s0.argmax`` (which
model), ``verdict.payload.s1`` (a model's verdict), ``summary.s0`` (the verdicts against the truth, in words),
``zoo.version``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from rules.numbers import sig3

RECORD_SCHEMA = 1
PLACEHOLDER = re.compile(r"\{\{([A-Za-z0-9_.\-]+)\}\}")
STATS = ("max", "min", "argmax", "argmin", "range", "count")
MISSING = "(not in the recorded run)"


@dataclass(frozen=True)
class Run:
    """One ``bdscan zoo calibrate`` of one zoo: ``models`` maps each fine-tune to its truth (``trigger``: None for
    a benign one), ``verdict``, ``implicated`` and ``readings`` (rule id -> deciding reading, None unread)."""

    zoo_version: int
    size: str
    seed: int
    recorded: str
    bdscan: str
    models: Mapping[str, Mapping[str, Any]]
    dtype: str = "float32"
    """Both models' dtype in the scans (``--dtype``); runs recorded before it was kept were float32."""

    def group(self, name: str) -> dict[str, Mapping[str, Any]]:
        if name == "benign":
            return {m: v for m, v in self.models.items() if v["trigger"] is None}
        if name == "poisoned":
            return {m: v for m, v in self.models.items() if v["trigger"] is not None}
        return {m: v for m, v in self.models.items() if m == name}


@dataclass(frozen=True)
class Record:
    runs: tuple[Run, ...]

    def run(self, seed: int) -> Run:
        for run in self.runs:
            if run.seed == seed:
                return run
        raise KeyError(f"no recorded run at seed {seed}")

    @property
    def zoo_version(self) -> int:
        return max(run.zoo_version for run in self.runs)

    def figure(self, key: str) -> str:
        """The value a placeholder ``key`` names, written as every number is (``sig3``)."""
        parts = key.split(".")
        if parts == ["zoo", "version"]:
            return str(self.zoo_version)
        if parts[0] == "verdict" and len(parts) == 3:
            return str(self.run(_seed(parts[2])).models[parts[1]]["verdict"])
        if parts[0] == "summary" and len(parts) == 2:
            return self.summary(_seed(parts[1]))
        if parts[0] == "recorded" and len(parts) == 2:
            run = self.run(_seed(parts[1]))
            return f"{run.recorded} (bdscan {run.bdscan})"
        if len(parts) == 3:
            rule, model, seed = parts
            value = self.run(_seed(seed)).models[model]["readings"][rule]
            return sig3(value)
        rule, group, seed, stat = parts
        if stat not in STATS:
            raise KeyError(f"{key}: {stat} is not one of {', '.join(STATS)}")
        members = self.run(_seed(seed)).group(group)
        values = {m: v["readings"][rule] for m, v in members.items()
                  if v["readings"].get(rule) is not None and math.isfinite(v["readings"][rule])}
        if stat == "count":
            return str(len(values))
        if not values:
            return "-"
        high, low = max(values, key=values.__getitem__), min(values, key=values.__getitem__)
        return {"max": sig3(values[high]), "min": sig3(values[low]), "argmax": high, "argmin": low,
                "range": f"{sig3(values[low])} to {sig3(values[high])}"}[stat]

    def summary(self, seed: int) -> str:
        """How the run's verdicts came out against the truth, in words."""
        run = self.run(seed)
        benign, poisoned = run.group("benign").values(), run.group("poisoned").values()
        clean = sum(m["verdict"] == "CLEAN" for m in benign)
        flagged = sum(m["verdict"] != "CLEAN" for m in poisoned)
        right = sum(bool(m.get("right")) for m in poisoned)
        return (f"{len(run.models)} fine-tunes at seed {seed}, {clean} of {len(benign)} benign ones CLEAN, "
                f"{flagged} of {len(poisoned)} poisoned ones flagged ({right} right by calibration's test: the "
                f"planted trigger, or what discovery recovered of it, implicated where the scan measured it, and no "
                f"catalogue string named in its stead)")

    def fill(self, text: str, strict: bool = True) -> str:
        """``text`` with every ``{{KEY}}`` replaced by its figure; a key the record cannot answer raises KeyError, or
        (not ``strict``: a rule's rationale, which must not stop a scan) reads ``MISSING``."""
        def figure(match: re.Match[str]) -> str:
            try:
                return self.figure(match.group(1))
            except KeyError:
                if strict:
                    raise
                return MISSING
        return PLACEHOLDER.sub(figure, text)

    def margin(self, rule_id: str, comparator: str, seed: int) -> tuple[str, str, str]:
        """At ``seed``: the benign reading closest to firing, the model that gave it, and the poisoned models'
        range on their own triggers ("-" where none was read)."""
        key = f"{rule_id}.{{}}.s{seed}"
        side = ".max" if comparator in (">=", ">") else ".min"
        who = self.figure(key.format("benign") + (".argmax" if side == ".max" else ".argmin"))
        return self.figure(key.format("benign") + side), who, self.figure(key.format("poisoned") + ".range")

    def margins(self, rule_id: str, comparator: str, threshold: float) -> str:
        """The rule's measured margins, one sentence per recorded seed: the benign model closest to firing and the
        poisoned models' range on their own triggers."""
        sentences = []
        for run in sorted(self.runs, key=lambda r: r.seed):
            worst, who, poisoned = self.margin(rule_id, comparator, run.seed)
            sentences.append(
                f"seed {run.seed}: benign at worst {worst}" + (f" ({who})" if worst != "-" else "")
                + (f", poisoned {poisoned} on their own triggers" if poisoned != "-" else ""))
        first = self.runs[0]
        dtypes = sorted({run.dtype for run in self.runs})
        options = "default options" if dtypes == ["float32"] else f"default options but --dtype {'/'.join(dtypes)}"
        return (f"Zoo v{first.zoo_version}, {first.size} size, {options}, recorded {first.recorded} "
                f"(`bdscan zoo calibrate --record`), threshold {comparator} {sig3(threshold)}: " + "; ".join(sentences) + ".")


def _seed(text: str) -> int:
    if not text.startswith("s") or not text[1:].isdigit():
        raise KeyError(f"{text}: a seed is written s0, s1, ...")
    return int(text[1:])


def is_record(raw: Any) -> bool:
    """Whether a parsed JSON document is a calibration record this version reads."""
    return isinstance(raw, dict) and raw.get("schema") == RECORD_SCHEMA and isinstance(raw.get("runs"), list)


def parse_record(raw: Mapping[str, Any]) -> Record:
    if not is_record(raw):
        raise ValueError(f"calibration record schema {raw.get('schema')!r}, expected {RECORD_SCHEMA}")
    return Record(tuple(Run(**run) for run in raw["runs"]))


UNRECORDED = "(no calibration run recorded: rules/calibration.json is missing)"


@functools.cache
def default_record() -> Record | None:
    """The run recorded with the package (``rules/calibration.json``), read once; None where it is missing."""
    source = resources.files("rules").joinpath("calibration.json")
    if not source.is_file():
        return None
    return parse_record(json.loads(source.read_text(encoding="utf-8")))


def record_run(existing: Mapping[str, Any] | None, run: Run) -> dict[str, Any]:
    """``existing`` (a record document, or None) with ``run`` in place of any run at the same seed."""
    runs = [r for r in (existing or {}).get("runs", []) if r["seed"] != run.seed]
    runs.append({"zoo_version": run.zoo_version, "size": run.size, "seed": run.seed, "recorded": run.recorded,
                 "bdscan": run.bdscan, "dtype": run.dtype, "models": {name: dict(model) for name, model in run.models.items()}})
    return {"schema": RECORD_SCHEMA, "runs": sorted(runs, key=lambda r: r["seed"])}


def run_from(cases: Sequence[Any], verdicts: Mapping[str, Any], calibrations: Sequence[Any], *, zoo_version: int,
             size: str, seed: int, recorded: str, bdscan: str, dtype: str = "float32") -> Run:
    """A ``Run`` from what ``rules.calibration`` computed over a zoo's ``cases``, scanned in ``dtype``."""
    from rules.calibration import verdict_is_right  # it judges with the engine, which reads this module

    models = {}
    for case in cases:
        verdict = verdicts[case.name]
        discovery = case.findings.discovery
        models[case.name] = {
            "trigger": case.trigger, "verdict": verdict.level, "implicated": list(verdict.triggers_implicated),
            "right": verdict_is_right(case, verdict),
            "discovered": list(verdict.discovered_firing),
            "readings": {c.rule.id: _finite(c.readings[case.name]) for c in calibrations},
            "sequences": discovery.sequences if discovery is not None else None,
            "discovery_seconds": round(discovery.seconds, 1) if discovery is not None else None,
            "seconds": round(sum(case.findings.run.timings.values()), 1),
        }
    return Run(zoo_version, size, seed, recorded, bdscan, models, dtype)


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 6)
