"""Recording what each stage of a scan did: its outcome (``ok``, ``skipped`` or ``error`` with the reason) and
its seconds, and turning a measurement's step callbacks into progress tasks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from scanner.errors import MeasurementError
from scanner.findings import StageRecord
from scanner.inputs.loading import OUT_OF_MEMORY
from scanner.model.memory import release_freed_memory
from scanner.options import ScanOptions
from scanner.progress import Progress

SCAN_STAGES = ("reference and probes", "suspect and weight difference", "discovery", "behaviour", "localisation")
"""A scan's stages as progress counts them, in order (``discovery`` only where it runs)."""


def enter_stage(progress: Progress, options: ScanOptions, name: str) -> None:
    """Tell ``progress`` the scan entered stage ``name``, numbered among the stages this scan runs."""
    stages = [stage for stage in SCAN_STAGES if stage != "discovery" or options.runs_discovery]
    progress.stage(stages.index(name) + 1, len(stages), name)


class StageLog:
    """Times stages and records their outcome. A stage that fails the way a measurement can fail (it raises
    ``MeasurementError``, or runs out of memory) becomes a record and the scan goes on; anything else is a bug
    and propagates, since a crash must never be reported as a finding."""

    def __init__(self) -> None:
        self.records: list[StageRecord] = []
        self.timings: dict[str, float] = {}

    @contextmanager
    def run(self, name: str, fallback: str = "") -> Iterator[None]:
        """Time the block as stage ``name`` and record how it ended. A stage that only saves work (a screen) gives
        the ``fallback`` the scan takes when it fails: its failure is then a skipped stage saying so, not an error,
        since no evidence is missing. What the stage freed is handed back to the operating system at its end
        (``release_freed_memory``), so that the next stage's peak is its own."""
        started = time.perf_counter()
        try:
            yield
        except (MeasurementError, *OUT_OF_MEMORY) as error:
            failed = f"{type(error).__name__}: {error}"
            self.records.append(StageRecord(name, "skipped", f"{failed}; {fallback}") if fallback
                                else StageRecord(name, "error", failed))
        else:
            self.records.append(StageRecord(name, "ok"))
        finally:
            release_freed_memory()
            self.add_time(name, time.perf_counter() - started)

    def add_time(self, name: str, seconds: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)

    def skip(self, name: str, reason: str) -> None:
        self.records.append(StageRecord(name, "skipped", reason))

    def failed(self, name: str) -> bool:
        return any(record.name == name and record.status == "error" for record in self.records)


class StepProgress:
    """Turns ``on_step(stage, done, total)`` callbacks into one progress task per stage (a new task whenever
    the stage changes or its count starts over)."""

    def __init__(self, progress: Progress, prefix: str) -> None:
        self.progress, self.prefix = progress, prefix
        self.stage, self.task, self.done = "", None, 0

    def __enter__(self) -> StepProgress:
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.task is None or stage != self.stage or done < self.done:
            self.__exit__()
            self.stage, self.task, self.done = stage, self.progress.start(f"{self.prefix}: {stage}", total), 0
        self.progress.advance(self.task, done - self.done)
        self.done = done

    def __exit__(self, *_: object) -> None:
        if self.task is not None:
            self.progress.finish(self.task)
            self.task = None
