"""How long-running stages report progress without knowing who draws it.

The scanner never renders: it calls a ``Progress`` that the caller passes in.
The CLI passes one backed by rich on stderr; library users get ``NO_PROGRESS``.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, description: str, total: int) -> int:
        """Open a task of ``total`` units; returns its handle."""

    def advance(self, task: int, amount: int = 1) -> None:
        """Mark ``amount`` more units of ``task`` done."""

    def finish(self, task: int) -> None:
        """Close ``task`` (complete or not)."""

    def describe(self, task: int, description: str) -> None:
        """Say anew what ``task`` is doing (a fleet's counts of done, running, failed and queued suspects)."""

    def stage(self, index: int, total: int, name: str) -> None:
        """The scan entered stage ``index`` (from 1) of ``total``, ``name`` (``scanner.api.stages.scan_stages``)."""


class _NoProgress:
    def start(self, description: str, total: int) -> int:
        return 0

    def advance(self, task: int, amount: int = 1) -> None:
        pass

    def finish(self, task: int) -> None:
        pass

    def describe(self, task: int, description: str) -> None:
        pass

    def stage(self, index: int, total: int, name: str) -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()
