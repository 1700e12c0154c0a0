"""rich-backed progress for the CLI; the one place that draws progress bars."""

from __future__ import annotations

from datetime import timedelta

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

MOST_LINES = 6
"""Lines the display may hold at once: the overall line, a fleet's line and the steps under way; an older step
beyond them is hidden (it still counts), so the display never scrolls the terminal."""


class RemainingColumn(ProgressColumn):
    """rich's estimate of the time a task has left, once it has one: blank for a task without a total or before
    its speed is known, instead of rich's ``-:--:--``."""

    max_refresh = 0.5

    def render(self, task: Task) -> Text:
        if task.total is None or task.finished or task.time_remaining is None:
            return Text("")
        return Text(f"~{timedelta(seconds=round(task.time_remaining))} left", style="progress.remaining")


class RichProgress:
    """A ``scanner.progress.Progress`` drawing rich bars on the given (stderr) console: a first line with the
    scan's stage (k of n), the steps done and the time since the start, and a bar for each step under way with
    its estimate. A finished step leaves the display: a clean scan stacked about 40 bars, several named alike
    ("growth to 2 tokens (end)" once per line of growth)."""

    def __init__(self, console: Console) -> None:
        self._bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), RemainingColumn(),
            console=console, transient=True,
        )
        self._totals: dict[int, int] = {}
        self._spanning: set[int] = set()
        self._stage = ""
        self._overall = self._bars.add_task(self._headline(), total=None)
        self.most_shown = 1
        """The most lines the display held at once."""

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._bars.stop()

    def _headline(self) -> str:
        done = int(self._bars.tasks[0].completed) if self._bars.tasks else 0
        return f"bdscan: {self._stage + ', ' if self._stage else ''}{done} steps done"

    def stage(self, index: int, total: int, name: str) -> None:
        self._stage = f"stage {index} of {total}, {name}"
        self._bars.update(self._overall, description=self._headline())
        # A task still open when a stage begins spans stages (a fleet's count of suspects): never hidden.
        self._spanning |= set(self._totals)

    def start(self, description: str, total: int) -> int:
        task = self._bars.add_task(description, total=total)
        self._totals[task] = total
        visible = [t for t in self._bars.tasks if t.visible]
        if len(visible) > MOST_LINES:
            # The oldest step under way is hidden, never the overall line or a task that spans stages.
            oldest = next(t for t in visible if t.id in self._totals and t.id != task and t.id not in self._spanning)
            self._bars.update(oldest.id, visible=False)
        self.most_shown = max(self.most_shown, len(self.showing))
        return task

    def advance(self, task: int, amount: int = 1) -> None:
        if task in self._totals:  # a step finished (and removed) takes no more counts
            self._bars.advance(task, amount)

    def finish(self, task: int) -> None:
        if self._totals.pop(task, None) is None:
            return  # finished before
        self._bars.remove_task(task)
        self._bars.advance(self._overall, 1)
        self._bars.update(self._overall, description=self._headline())

    @property
    def steps_done(self) -> int:
        """Steps finished, as the first line counts them."""
        return int(self._bars.tasks[0].completed)

    @property
    def showing(self) -> list[str]:
        """The lines on display, first to last (the overall line, then each step under way)."""
        return [task.description for task in self._bars.tasks if task.visible]

    def describe(self, task: int, description: str) -> None:
        if task in self._totals:
            self._bars.update(task, description=description)
