"""``FleetEntry``: one row of a fleet run's index page, as ``render_index`` lays it out.

Plain data, torch-free: the CLI fills one per suspect as the fleet goes, and the
index is rendered from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from rules.document import Document


@dataclass(frozen=True)
class FleetEntry:
    """One suspect of a fleet run, as its index lists it: its judged document, or why it could not be scanned,
    and where its files were written (relative to the index)."""

    name: str
    suspect: str
    document: Document | None
    error: str | None = None
    """The one line the CLI shows for a suspect that could not be scanned (``scanner.cli.app.describe``)."""
    report: str | None = None
    findings: str | None = None
