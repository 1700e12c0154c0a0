"""The words the findings are written in: where a trigger is inserted, and how per-head values are laid out."""

from __future__ import annotations

POSITIONS = ("start", "random", "end")
"""Where a trigger is inserted into a probe: before the prompt, at a random word boundary, after it."""

Grid = tuple[tuple[float, ...], ...]
"""Values per ``[layer][head]``."""

Head = tuple[int, int]
"""``(layer, head)``."""
