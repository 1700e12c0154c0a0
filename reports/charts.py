"""Chart layouts for the report: numbers in, shapes with coordinates and colours out.

Pure functions over values already in the findings; they only place and
colour them. The template draws the shapes as inline SVG, so every label goes
through jinja2's autoescaping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rules.numbers import sig3

CELL = 22
LABEL_WIDTH = 56


@dataclass(frozen=True)
class Cell:
    x: float
    y: float
    size: float
    colour: str
    title: str


@dataclass(frozen=True)
class Heatmap:
    width: float
    height: float
    cells: tuple[Cell, ...]
    row_labels: tuple[tuple[float, str], ...]
    column_labels: tuple[tuple[float, str], ...]
    low: float
    high: float
    label_width: float
    legend: tuple[tuple[str, str], ...] = ()
    """(colour, value) swatches from the scale's low end to its high end, with zero between where it crosses it."""
    empty: bool = False
    """Every value is zero: the report says so in a sentence instead of drawing a blank grid."""


def _drawable(value: float) -> float:
    """Non-finite values are drawn as zero; their tooltips still say what they were."""
    return value if math.isfinite(value) else 0.0


def _colour(value: float, low: float, high: float) -> str:
    """White to red for positive scales; blue-white-red when the scale crosses zero; grey for non-finite."""
    if not math.isfinite(value):
        return "rgb(150,150,150)"
    if low < 0 < high:
        bound = max(-low, high) or 1.0
        t = max(-1.0, min(1.0, value / bound))
        if t >= 0:
            return f"rgb(255,{int(255 * (1 - t))},{int(255 * (1 - t))})"
        return f"rgb({int(255 * (1 + t))},{int(255 * (1 + t))},255)"
    span = (high - low) or 1.0
    t = max(0.0, min(1.0, (value - low) / span))
    return f"rgb({int(255 - 75 * t)},{int(255 - 225 * t)},{int(255 - 215 * t)})"


def heatmap(grid: Sequence[Sequence[float]], row_name: str = "L", column_name: str = "H", cell: float = CELL,
            row_labels: Sequence[str] | None = None, column_labels: Sequence[str] | None = None) -> Heatmap:
    """A ``[row][column]`` grid as coloured cells, labelled ``L0..`` and ``H0..`` by default."""
    values = [v for row in grid for v in row if math.isfinite(v)]
    # From zero where nothing is negative: a weight change of 0.92 to 1.0 everywhere, stretched from its minimum,
    # would paint uniform change as sharp contrast.
    low, high = (min(min(values), 0.0), max(values)) if values else (0.0, 1.0)
    rows = list(row_labels) if row_labels is not None else [f"{row_name}{i}" for i in range(len(grid))]
    columns = list(column_labels) if column_labels is not None else [f"{column_name}{j}" for j in range(len(grid[0]) if grid else 0)]
    # Token labels are long and drawn rotated above the grid; 6.5 px per monospace character at 10 px.
    label_width = max(LABEL_WIDTH, 6.5 * max((len(r) for r in rows), default=0) + 8)
    top = 6.0 * max((len(c) for c in columns), default=0) + 14 if column_labels is not None else 18
    cells = tuple(
        Cell(label_width + j * cell, top + i * cell, cell, _colour(value, low, high), f"{rows[i]} {columns[j]}: {sig3(value)}")
        for i, row in enumerate(grid) for j, value in enumerate(row)
    )
    return Heatmap(
        width=label_width + len(columns) * cell + 8, height=top + len(rows) * cell + 8, cells=cells,
        row_labels=tuple((top + i * cell + cell * 0.7, label) for i, label in enumerate(rows)),
        column_labels=tuple((label_width + j * cell + cell / 2, label) for j, label in enumerate(columns)),
        low=low, high=high, label_width=label_width,
        legend=tuple((_colour(v, low, high), tick_label(v)) for v in ((low, 0.0, high) if low < 0 < high else (low, high))),
        empty=all(v == 0 for row in grid for v in row),
    )


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    points: str
    """SVG polyline points, ``"x,y x,y"``."""
    dots: tuple[tuple[float, float, str], ...]


@dataclass(frozen=True)
class LineChart:
    width: float
    height: float
    series: tuple[Series, ...]
    x_ticks: tuple[tuple[float, str], ...]
    y_ticks: tuple[tuple[float, str], ...]
    threshold_y: float | None
    left: float
    bottom: float
    right: float
    x_title: str = ""
    y_title: str = ""


def nice_ticks(low: float, high: float, count: int = 5) -> tuple[float, ...]:
    """About ``count`` round tick values (steps of 1, 2, 2.5 or 5 times a power of ten) from at or below ``low`` to at
    or above ``high``: an axis labelled 0, 1.14, 2.28, 3.41 makes a reader do arithmetic."""
    span = high - low
    if not span > 0:
        span = abs(high) or 1.0
    raw = span / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    last = max(last, first + 1)
    return tuple(round(k * step, 12) for k in range(first, last + 1))


def tick_label(value: float) -> str:
    """A tick value as every number is written (``rules.numbers.sig3``): 0.25, 2, 1.00e-05."""
    return sig3(value)


AXIS_ROOM = 14.0
"""Room for an axis title beside the tick labels (10 px text)."""


def line_chart(x_labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[float]]], *,
               y_max: float | None = None, threshold: float | None = None,
               width: float = 480, height: float = 240, x_title: str = "", y_title: str = "") -> LineChart:
    """Series that share an x axis of ``x_labels``; ``threshold`` draws a dashed horizontal line; the titles name
    each axis with its unit."""
    left, right, top, bottom = 48.0 + AXIS_ROOM, width - 12, 12.0, height - 30 - AXIS_ROOM
    series = [(name, colour, [_drawable(v) for v in ys]) for name, colour, ys in series]
    values = [v for _, _, ys in series for v in ys]
    ticks = nice_ticks(0.0, y_max if y_max is not None else max(values + [threshold or 0.0, 1e-9]))
    peak = ticks[-1]
    count = max(1, len(x_labels) - 1)

    def x_at(i: int) -> float:
        return left + (right - left) * i / count

    def y_at(v: float) -> float:
        return bottom - (bottom - top) * max(0.0, min(v, peak)) / peak

    drawn = tuple(
        Series(name, colour, " ".join(f"{x_at(i):.1f},{y_at(v):.1f}" for i, v in enumerate(ys)),
               tuple((x_at(i), y_at(v), f"{x_labels[i]}: {sig3(v)}") for i, v in enumerate(ys)))
        for name, colour, ys in series
    )
    step = max(1, len(x_labels) // 12)
    return LineChart(
        width=width, height=height, series=drawn,
        x_ticks=tuple((x_at(i), x_labels[i]) for i in range(0, len(x_labels), step)),
        y_ticks=tuple((y_at(v), tick_label(v)) for v in ticks),
        threshold_y=y_at(threshold) if threshold is not None else None, left=left, bottom=bottom, right=right,
        x_title=x_title, y_title=y_title,
    )


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    colour: str
    title: str


@dataclass(frozen=True)
class BarChart:
    width: float
    height: float
    bars: tuple[Bar, ...]
    labels: tuple[tuple[float, str], ...]
    zero_y: float
    y_ticks: tuple[tuple[float, str], ...]
    left: float
    right: float
    x_title: str = ""
    y_title: str = ""
    empty: bool = False
    """Every value is zero: the report says so in a sentence instead of drawing an empty plot."""


def bar_chart(labels: Sequence[str], groups: Sequence[tuple[str, str, Sequence[float]]], *,
              width: float = 480, height: float = 200, x_title: str = "", y_title: str = "") -> BarChart:
    """Grouped bars, one group per label, one bar per series; handles negative values; a value axis on the left
    titled ``y_title``, the labels' axis ``x_title``."""
    left, right, top, bottom = 48.0 + AXIS_ROOM, width - 12, 12.0, height - 34 - AXIS_ROOM
    groups = [(name, colour, [_drawable(v) for v in ys]) for name, colour, ys in groups]
    values = [v for _, _, ys in groups for v in ys] or [0.0]
    ticks = nice_ticks(min(min(values), 0.0), max(max(values), 0.0))
    low, high = ticks[0], ticks[-1]
    span = high - low
    zero = top + (bottom - top) * high / span
    slot = (right - left) / max(1, len(labels))
    bar_width = slot * 0.8 / max(1, len(groups))
    bars = []
    for g, (name, colour, ys) in enumerate(groups):
        for i, value in enumerate(ys):
            length = (bottom - top) * abs(value) / span
            bars.append(Bar(left + i * slot + slot * 0.1 + g * bar_width, zero - length if value >= 0 else zero,
                            bar_width, max(length, 0.5), colour, f"{labels[i]} {name}: {sig3(value)}"))
    step = max(1, len(labels) // 16)
    shown = tuple((left + i * slot + slot / 2, label) for i, label in enumerate(labels) if i % step == 0)
    y_ticks = tuple((zero - (bottom - top) * v / span, tick_label(v)) for v in ticks)
    return BarChart(width, height, tuple(bars), shown, zero, y_ticks, left, right, x_title, y_title,
                    empty=all(v == 0 for v in values))
