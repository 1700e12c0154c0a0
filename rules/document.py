"""The findings document: what a scan measured and the verdict judged from it, in one versioned JSON file.

``bdscan scan --json`` writes it; ``bdscan judge`` and ``bdscan report`` read
it. A stored verdict is shown to readers of the file but never trusted:
loading keeps only the findings, and judging runs again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rules.verdict import Verdict
from scanner.errors import FindingsFileError
from scanner.findings import Findings
from scanner.serde import to_jsonable


@dataclass(frozen=True)
class Document:
    findings: Findings
    verdict: Verdict

    def to_json(self) -> str:
        """The findings' fields with ``verdict`` beside them (schema ``findings.schema_version``)."""
        return json.dumps({**to_jsonable(self.findings), "verdict": to_jsonable(self.verdict)}, indent=2, ensure_ascii=False)


def read_findings(path: Path | str) -> Findings:
    """The findings of a saved document (its stored verdict dropped); ``FindingsFileError`` if it is not one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FindingsFileError(f"{path}: cannot be read as a findings document ({error})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise FindingsFileError(f"{path}: not JSON ({error})") from None
    if isinstance(raw, dict):
        raw.pop("verdict", None)
    return Findings.from_jsonable(raw, str(path))


@dataclass(frozen=True)
class FleetEntry:
    """One suspect of a fleet run, as its index lists it: its judged document, or why it could not be scanned,
    and where its files were written (relative to the index)."""

    name: str
    suspect: str
    document: Document | None
    error: str | None = None
    report: str | None = None
    findings: str | None = None
