"""The calibration set: every fine-tune of a zoo with the findings of its scan against the model it came from.

Each case pairs the findings with the zoo's ground truth; ``rules.calibration`` turns them into readings and
margins without torch. The findings come from scanning now (``scan_zoo``, as a user would, with default
options) or from documents an earlier calibration saved (``saved_zoo``: torch-free, in a second), so thresholds
can be tried again on scans that took minutes.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

from rules.calibration import Case
from scanner.errors import InputError
from scanner.findings import Findings, read_findings
from scanner.inputs.locate import detect_suspect_kind, input_info
from scanner.options import ScanOptions
from scanner.progress import NO_PROGRESS, Progress
from scanner.zoo.manifest import fine_tunes


def scan_zoo(
    directory: Path | str, options: ScanOptions = ScanOptions(), names: tuple[str, ...] = (),
    progress: Progress = NO_PROGRESS, workers: int = 1,
) -> list[Case]:
    """Scan each fine-tune in the zoo at ``directory`` (or those in ``names``) against its parent with ``options``.

    ``workers`` > 1 scans that many at once, each in its own process on one torch thread: two such scans side by
    side took 91 s where the same two one after the other on two threads took 129 s (the test zoo, 2 cores). One
    thread sums in another order than two, so a figure may move in its last digits, never a verdict the rules
    draw from margins that wide."""
    directory = Path(directory)
    pairs = [(name, record.trigger, directory / record.path, str(directory / record.parent))
             for name, record in fine_tunes(directory, names)]
    if workers <= 1 or len(pairs) <= 1:
        from scanner.api import scan  # torch: ``saved_zoo`` must not pay for it

        return [Case(name, trigger, scan(path, parent, options, progress)) for name, trigger, path, parent in pairs]
    task = progress.start(f"scanning {len(pairs)} models, {workers} at a time", len(pairs))
    # spawn: fork would copy a parent that has already started torch's threads.
    with ProcessPoolExecutor(min(workers, len(pairs)), mp_context=get_context("spawn"), initializer=_one_thread) as pool:
        futures = {name: pool.submit(_scan, path, parent, options) for name, _, path, parent in pairs}
        for _ in as_completed(futures.values()):
            progress.advance(task)
    progress.finish(task)
    return [Case(name, trigger, futures[name].result()) for name, trigger, _, _ in pairs]


def _one_thread() -> None:
    """A worker's set-up: one torch thread, and no transformers progress bars, which several processes would draw
    over each other (the caller's ``progress`` counts the models)."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _scan(suspect: Path, reference: str, options: ScanOptions) -> Findings:
    from scanner.api import scan

    return scan(suspect, reference, options)


def saved_zoo(directory: Path | str, saved: Path | str, names: tuple[str, ...] = ()) -> list[Case]:
    """The cases of ``scan_zoo``, read from ``saved/NAME.json`` (what ``bdscan zoo calibrate --save`` writes, or
    any findings document of that model). ``InputError`` for a model without its document, or a document whose
    suspect weights are not that model's (its SHA-256 is checked), so a stale or misnamed file is never judged
    against another model's truth."""
    directory, saved = Path(directory), Path(saved)
    cases = []
    for name, record in fine_tunes(directory, names):
        document = saved / f"{name}.json"
        if not document.is_file():
            raise InputError(f"{document}: no saved findings for zoo model {name!r} (save them with --save DIR)")
        findings = read_findings(document)
        path = directory / record.path
        weights = input_info(path, detect_suspect_kind(path)).sha256
        if findings.suspect.sha256 != weights:
            raise InputError(f"{document}: its suspect's weights (sha256 {findings.suspect.sha256[:12]}) are not zoo "
                             f"model {name!r}'s ({weights[:12]}); scan it again or point --findings elsewhere")
        cases.append(Case(name, record.trigger, findings))
    return cases
