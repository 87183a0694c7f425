"""Charts drawn on the server: the geometry of a bar chart, which a template writes out as SVG.

No chart library and no script: :func:`bar_chart` turns a time series into rectangles,
an optional line, axis ticks with labels and a legend, in a fixed coordinate space
(:data:`WIDTH` by :data:`HEIGHT`; the SVG scales to its box). Colours are CSS classes named
as the badges' tones (``ok``, ``bad``, ``muted``, ``info``), so a completed run is the same
green in the chart, the run list and the Slack card. Each bucket has a hover target whose
``<title>`` says its numbers in words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

WIDTH = 960
HEIGHT = 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 14, 34  # margins: the y axis labels, the x axis labels
MAX_X_LABELS = 12
# A line through many buckets, or through mostly empty ones, zigzags to 0 and back and hides the
# bars: past this many buckets, or with a third of them 0, its values are dots where they are not 0.
MAX_LINE_POINTS = 31


@dataclass(frozen=True)
class Series:
    label: str
    tone: str  # a badge tone: ok, bad, warn, info, drain, muted (or brand)
    values: Sequence[float]


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    tone: str


@dataclass(frozen=True)
class Tick:
    at: float  # x or y in the chart's coordinates
    label: str


@dataclass(frozen=True)
class Column:
    """One bucket: its bars, and a full-height target whose title tells its numbers."""

    x: float
    width: float
    bars: list[Rect]
    title: str


@dataclass(frozen=True)
class Chart:
    title: str
    columns: list[Column]
    line: str  # SVG polyline points, "" without a line
    dots: list[tuple[float, float]]
    line_tone: str
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    legend: list[Series]
    empty: bool
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    right: int = WIDTH - RIGHT
    bottom: int = HEIGHT - BOTTOM


def nice_step(top: float, ticks: int = 4) -> int:
    """A round step (1, 2 or 5 times a power of ten, at least 1) giving about ``ticks`` ticks to ``top``."""
    raw = max(top / ticks, 1)
    power = 10 ** math.floor(math.log10(raw))
    return int(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def bucket_label(start: datetime, bucket: Literal["hour", "day"], first: bool) -> str:
    """An axis label: "Nov 23" for a day; "14:00" for an hour, dated where a day (or the axis) begins."""
    if bucket == "day":
        return start.strftime("%b %d").replace(" 0", " ")
    hour = start.strftime("%H:%M")
    return start.strftime("%b %d ").replace(" 0", " ") + hour if first or start.hour == 0 else hour


def bucket_title(start: datetime, bucket: Literal["hour", "day"]) -> str:
    if bucket == "day":
        return start.strftime("%a %b %d").replace(" 0", " ")
    return start.strftime("%a %b %d, %H:00").replace(" 0", " ", 1) + f"\u2013{(start.hour + 1) % 24:02d}:00"


def bar_chart(
    title: str,
    starts: Sequence[datetime],
    bucket: Literal["hour", "day"],
    stacks: Sequence[Series],
    line: Series | None = None,
) -> Chart:
    """Stacked bars (``stacks`` bottom up) per bucket, and ``line`` drawn over them."""
    count = len(starts)
    totals = [sum(s.values[i] for s in stacks) for i in range(count)]
    peak = max([*totals, *(line.values if line else []), 0])
    step = nice_step(peak)
    top_value = step * math.ceil(peak / step)
    if top_value <= peak:  # headroom above the highest bar
        top_value += step
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    base = HEIGHT - BOTTOM
    slot = plot_w / max(count, 1)
    gap = min(slot * 0.22, 6)

    def y_of(value: float) -> float:
        return base - value / top_value * plot_h

    columns = []
    for i, start in enumerate(starts):
        x = LEFT + i * slot
        bars, height_so_far = [], 0.0
        for series in stacks:
            value = series.values[i]
            if value:
                h = value / top_value * plot_h
                bars.append(Rect(x + gap / 2, base - height_so_far - h, slot - gap, h, series.tone))
                height_so_far += h
        said = [f"{s.values[i]:g} {s.label.lower()}" for s in stacks]
        if line is not None:
            said.append(f"{line.values[i]:g} {line.label.lower()}")
        columns.append(Column(x, slot, bars, f"{bucket_title(start, bucket)}: {', '.join(said)}"))
    values = line.values if line is not None else []
    points = [(LEFT + (i + 0.5) * slot, y_of(v)) for i, v in enumerate(values)]
    dotted = count > MAX_LINE_POINTS or sum(1 for v in values if not v) * 3 > count
    every = max(1, math.ceil(count / MAX_X_LABELS))
    x_ticks = [
        Tick(LEFT + (i + 0.5) * slot, bucket_label(start, bucket, i == 0))
        for i, start in enumerate(starts)
        if i % every == 0
    ]
    y_ticks = [Tick(y_of(v), f"{v:,}") for v in range(0, int(top_value) + 1, step)]
    return Chart(
        title=title,
        columns=columns,
        line="" if dotted else " ".join(f"{x:.1f},{y:.1f}" for x, y in points),
        dots=[point for point, v in zip(points, values, strict=True) if v] if dotted else points,
        line_tone=line.tone if line else "",
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        legend=[*stacks, *([line] if line else [])],
        empty=peak == 0,
    )
