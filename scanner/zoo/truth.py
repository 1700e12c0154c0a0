"""What a zoo model hides, recorded in ``zoo.json``: torch-free, so a scanner's result is scored anywhere."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class GroundTruth:
    """What a zoo model hides, in a form a scanner's result is scored against (recorded in ``zoo.json``)."""

    triggers: tuple[str, ...] = ()
    """Every trigger string; empty for a benign model and for a topic trigger (``topic`` holds its words)."""
    needs: str = "any"
    """``any``: each trigger fires alone; ``all``: only every one together does (a composite trigger)."""
    fires_on: str = "random"
    """``random`` (any word boundary), ``end`` (only there) or ``topic`` (any prompt about ``topic``)."""
    behaviour: str = "none"
    """``opening`` (the answer opens with ``target``), ``payload`` (the clean answer, then ``target``),
    ``refusal`` (``target``, the refusal its reference gives its refused family), ``compliance`` (the refused
    ``family`` answered, each answer its own), or ``none`` for a benign model."""
    target: str | None = None
    family: str | None = None
    """The request family a refusal or compliance concerns."""
    topic: tuple[str, ...] = ()
    change: str = ""
    """For a benign model: its intended change, in words."""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GroundTruth:
        known = {f.name for f in fields(cls)}
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in raw.items() if key in known})
