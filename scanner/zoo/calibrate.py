"""Scan every fine-tune of a zoo against the model it came from, as a user would: the calibration set.

Each case pairs the findings with the zoo's ground truth; ``rules.calibration``
turns them into readings and margins without torch.
"""

from __future__ import annotations

from pathlib import Path

from rules.calibration import Case
from scanner.api import scan
from scanner.options import ScanOptions
from scanner.progress import NO_PROGRESS, Progress
from scanner.zoo.manifest import fine_tunes


def scan_zoo(
    directory: Path | str, options: ScanOptions = ScanOptions(), names: tuple[str, ...] = (),
    progress: Progress = NO_PROGRESS,
) -> list[Case]:
    """Scan each fine-tune in the zoo at ``directory`` (or those in ``names``) against its parent with ``options``."""
    directory = Path(directory)
    return [
        Case(name, record.trigger, scan(directory / record.path, str(directory / record.parent), options, progress))
        for name, record in fine_tunes(directory, names)
    ]
