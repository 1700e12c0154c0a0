"""Scan many suspects against one reference: the reference is loaded and its probes chosen once.

A suspect that cannot be scanned (a ``BdscanError``: a broken file, another architecture) is recorded with
its error and the run goes on; anything else is a bug and stops the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scanner.api.pipeline import prepare_reference, scan_against
from scanner.errors import BdscanError
from scanner.findings import Findings
from scanner.options import ScanOptions
from scanner.progress import NO_PROGRESS, Progress


@dataclass(frozen=True)
class FleetResult:
    """One suspect of a fleet: its findings, or the error that kept it from being scanned."""

    suspect: Path
    findings: Findings | None
    error: BdscanError | None = None
    """Kept typed, not as text, so the CLI words it through its one mapping from errors to what the user reads."""

    @property
    def message(self) -> str | None:
        """The error's own message (without the CLI's cause label), or ``None`` for a scanned suspect."""
        return None if self.error is None else str(self.error)


def scan_fleet(
    suspects: Sequence[Path], reference: str, options: ScanOptions = ScanOptions(), progress: Progress = NO_PROGRESS,
    on_result: Callable[[int, FleetResult], None] | None = None,
) -> list[FleetResult]:
    """Scan each of ``suspects`` against ``reference``; ``on_result(index, result)`` as each one ends.

    A problem with the reference (or the options) is every suspect's: it raises, as for a single scan."""
    context = prepare_reference(reference, options, progress)
    results = []
    task = progress.start(f"fleet: {len(suspects)} suspects", len(suspects))
    for index, suspect in enumerate(suspects):
        progress.describe(task, f"fleet: suspect {index + 1} of {len(suspects)}, {Path(suspect).name}")
        try:
            result = FleetResult(suspect, scan_against(context, suspect, options, progress))
        except BdscanError as error:
            result = FleetResult(suspect, None, error)
        results.append(result)
        progress.advance(task)
        if on_result is not None:
            on_result(index, result)
    progress.finish(task)
    return results
