"""rich-backed progress for the CLI; the one place that draws progress bars."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgress:
    """A ``scanner.progress.Progress`` drawing rich bars on the given (stderr) console."""

    def __init__(self, console: Console) -> None:
        self._bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self._totals: dict[int, int] = {}

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
        self._bars.advance(task, amount)

    def finish(self, task: int) -> None:
        self._bars.update(task, completed=self._totals[task])

    def describe(self, task: int, description: str) -> None:
        self._bars.update(task, description=description)
