"""rich-backed progress for the CLI; the one place that draws progress bars."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgress:
    """A ``scanner.progress.Progress`` drawing rich bars on the given (stderr) console: a first line with the steps
    done and the time since the start, and a bar for each step under way. A finished step leaves the display: a
    clean scan stacked about 40 bars, several named alike ("growth to 2 tokens (end)" once per line of growth)."""

    def __init__(self, console: Console) -> None:
        self._bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self._totals: dict[int, int] = {}
        self._overall = self._bars.add_task("bdscan: steps done", total=None)

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bars.stop()

    def start(self, description: str, total: int) -> int:
        task = self._bars.add_task(description, total=total)
        self._totals[task] = total
        return task

    def advance(self, task: int, amount: int = 1) -> None:
        if task in self._totals:  # a step finished (and removed) takes no more counts
            self._bars.advance(task, amount)

    def finish(self, task: int) -> None:
        if self._totals.pop(task, None) is None:
            return  # finished before
        self._bars.remove_task(task)
        self._bars.advance(self._overall, 1)

    @property
    def steps_done(self) -> int:
        """Steps finished, as the first line counts them."""
        return int(self._bars.tasks[0].completed)

    @property
    def showing(self) -> list[str]:
        """The lines on display, first to last (the steps done, then each step under way)."""
        return [task.description for task in self._bars.tasks]

    def describe(self, task: int, description: str) -> None:
        if task in self._totals:
            self._bars.update(task, description=description)
