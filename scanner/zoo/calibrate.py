"""Scan every fine-tune of a zoo against the model it came from, as a user would: the calibration set.

Each case pairs the findings with the zoo's ground truth; ``rules.calibration``
turns them into readings and margins without torch.
"""

from __future__ import annotations

from pathlib import Path

from rules.calibration import Case
from scanner.api import scan
from scanner.errors import ZooDirectoryError
from scanner.options import ScanOptions
from scanner.progress import NO_PROGRESS, Progress
from scanner.zoo.manifest import load_manifest


def scan_zoo(
    directory: Path | str, options: ScanOptions = ScanOptions(), names: tuple[str, ...] = (),
    progress: Progress = NO_PROGRESS,
) -> list[Case]:
    """Scan each fine-tune in the zoo at ``directory`` (or those in ``names``) against its parent with ``options``."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    if manifest is None:
        raise ZooDirectoryError(f"{directory}: no zoo here (no zoo.json); build one with bdscan zoo build")
    unknown = set(names) - set(manifest.models)
    if unknown:
        raise ZooDirectoryError(f"{directory}: no model {', '.join(sorted(unknown))} (models: {', '.join(manifest.models)})")
    cases = []
    for name, record in manifest.models.items():
        if record.is_base or (names and name not in names):
            continue
        findings = scan(directory / record.path, str(directory / record.parent), options, progress)
        cases.append(Case(name, record.trigger, findings))
    return cases
