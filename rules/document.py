"""The findings document with its verdict: what a scan measured and how it was judged, in one versioned JSON file.

``bdscan scan --json`` writes it; ``bdscan judge`` and ``bdscan report`` read it back through
``scanner.findings.read_findings``, which drops the stored verdict: it is shown to readers of the file but
never trusted, and judging runs again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rules.verdict import Verdict
from scanner.findings import Findings
from scanner.findings.serde import to_jsonable


@dataclass(frozen=True)
class Document:
    findings: Findings
    verdict: Verdict

    def to_json(self) -> str:
        """The findings' fields with ``verdict`` beside them (schema ``findings.schema_version``)."""
        return json.dumps({**to_jsonable(self.findings), "verdict": to_jsonable(self.verdict)}, indent=2, ensure_ascii=False)
