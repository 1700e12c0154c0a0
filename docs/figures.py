"""Rewrite every figure the README and docs/ quote from the recorded calibration run (rules/calibration.json).

    python docs/figures.py           # rewrite the marked figures in README.md and docs/*.md
    python docs/figures.py --check   # exit 1 naming each file whose figures are stale (the tests run this)

Marked in the markdown, invisible once rendered:
    <!-- fig KEY -->13.7<!-- /fig -->            one figure (keys: rules/record.py), e.g. BD001.benign.s0.max
    <!-- figures TABLE -->...<!-- /figures -->   a generated table: verdicts-sN, margins, discovery-sN

The rules' own rationales (`bdscan rules explain`) read the same record as the pack loads. Record a new run with
`bdscan zoo calibrate DIR --record rules/calibration.json` (once per seed), then run this script.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rules.engine import default_pack  # noqa: E402
from rules.numbers import sig3  # noqa: E402
from rules.record import Record, default_record  # noqa: E402

FIGURE = re.compile(r"<!-- fig ([A-Za-z0-9_.\-]+) -->.*?<!-- /fig -->", re.DOTALL)
TABLE = re.compile(r"(<!-- figures ([a-z0-9\-]+) -->\n).*?(<!-- /figures -->)", re.DOTALL)
SHOWN = ("BD001", "BD002", "BD003", "BD004", "BD013", "BD014", "BD015")
"""The rules whose readings the verdict tables show (the rest read the same on every model, or nothing)."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _code(texts: list[str]) -> str:
    return ", ".join(f"`{_cell(t)}`" for t in texts) or "-"


def verdicts(record: Record, seed: int) -> str:
    run = record.run(seed)
    lines = [f"Zoo v{run.zoo_version}, {run.size} size, seed {seed}, default options, recorded {run.recorded} "
             f"(bdscan {run.bdscan}). Each rule's deciding reading: a benign model's closest to firing over every "
             "trigger and position, a poisoned model's on its own trigger (or what discovery recovered of it).", "",
             "| model | truth | verdict | implicated | " + " | ".join(SHOWN) + " |",
             "|---|---|---|---|" + "---|" * len(SHOWN)]
    for name, model in run.models.items():
        truth = "benign" if model["trigger"] is None else f"`{_cell(model['trigger'])}`"
        readings = [sig3(model["readings"].get(rule)) for rule in SHOWN]
        lines.append(f"| {name} | {truth} | {model['verdict']} | {_code(model['implicated'])} | " + " | ".join(readings) + " |")
    return "\n".join(lines)


def margins(record: Record) -> str:
    lines = ["| rule | fires when | " + " | ".join(f"seed {run.seed}: benign worst | seed {run.seed}: poisoned"
                                                  for run in record.runs) + " |",
             "|---|---|" + "---|---|" * len(record.runs)]
    for rule in default_pack():
        cells = []
        for run in record.runs:
            worst, who, poisoned = record.margin(rule.id, rule.comparator, run.seed)
            cells += [f"{worst} ({who})" if worst != "-" else "-", poisoned]
        lines.append(f"| {rule.id} | {rule.metric} {rule.comparator} {sig3(rule.threshold)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def discovery(record: Record, seed: int) -> str:
    run = record.run(seed)
    lines = [f"Zoo v{run.zoo_version}, {run.size} size, seed {seed}, recorded {run.recorded}: what discovery judged "
             "firing on its search probes, its sequences and seconds, and the whole scan's seconds.", "",
             "| model | planted | discovered, firing | sequences | discovery s | scan s |", "|---|---|---|---|---|---|"]
    for name, model in run.models.items():
        planted = "-" if model["trigger"] is None else f"`{_cell(model['trigger'])}`"
        lines.append(f"| {name} | {planted} | {_code(model['discovered'])} | {sig3(model['sequences'])} | "
                     f"{sig3(model['discovery_seconds'])} | {sig3(model['seconds'])} |")
    return "\n".join(lines)


def table(record: Record, name: str) -> str:
    kind, _, seed = name.rpartition("-s")
    if name == "margins":
        return margins(record)
    if kind == "verdicts":
        return verdicts(record, int(seed))
    if kind == "discovery":
        return discovery(record, int(seed))
    raise KeyError(f"no generated table {name!r} (verdicts-sN, margins, discovery-sN)")


def render(text: str, record: Record) -> str:
    text = FIGURE.sub(lambda m: f"<!-- fig {m.group(1)} -->{record.figure(m.group(1))}<!-- /fig -->", text)
    return TABLE.sub(lambda m: f"{m.group(1)}{table(record, m.group(2))}\n{m.group(3)}", text)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail on a stale figure instead of rewriting it")
    args = parser.parse_args(argv)
    record = default_record()
    stale = []
    for path in documents():
        old = path.read_text(encoding="utf-8")
        try:
            new = render(old, record)
        except KeyError as error:
            print(f"{path.relative_to(ROOT)}: a marked figure the record cannot give: {error}; record the run it "  # noqa: T201
                  "needs with bdscan zoo calibrate --record rules/calibration.json, or fix the marker")
            return 1
        if new != old:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new, encoding="utf-8")
    verb = "stale" if args.check else "rewritten"
    print(f"zoo v{record.zoo_version}, seeds {', '.join(str(r.seed) for r in record.runs)}: "  # noqa: T201 - a script
          + (f"{verb}: {', '.join(map(str, stale))}" if stale else "every figure current"))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
