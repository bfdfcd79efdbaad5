"""Charts drawn on the server as SVG (no script, nothing fetched: the strict CSP holds):
stacked bars of counts and a line of a measure, over the history's time buckets. Colours come
from classes styled in ``static/conveyor.css``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 640
HEIGHT = 160
#: Room for the axis labels.
LEFT, BOTTOM, TOP = 44, 18, 8


@dataclass(frozen=True)
class Series:
    """One row of values, drawn with CSS class ``kind`` (``ok``, ``failed``, ``runtime``)."""

    label: str
    kind: str
    values: Sequence[float]


def bars(title: str, starts: Sequence[float], series: Sequence[Series], unit: str = "") -> Markup:
    """Stacked bars, one per bucket starting at ``starts[i]``."""
    count = len(starts)
    totals = [sum(s.values[i] for s in series) for i in range(count)]
    top = _nice(max(totals, default=0.0))
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, count)
    parts = [_frame(title, top, unit, starts)]
    for i in range(count):
        y = float(HEIGHT - BOTTOM)
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = value / top * plot_h
            y -= h
            tip = f"{s.label}: {_fmt(value)}{unit} ({_clock(starts[i])} UTC)"
            parts.append(
                f'<rect class="bar {escape(s.kind)}" x="{LEFT + i * step + 0.5:.1f}" '
                f'y="{y:.1f}" width="{max(1.0, step - 1):.1f}" height="{h:.1f}">'
                f"<title>{escape(tip)}</title></rect>"
            )
    return _svg(title, parts, series)


def line(title: str, starts: Sequence[float], series: Sequence[Series], unit: str = "") -> Markup:
    """Lines through each bucket's value (buckets without a value break the line)."""
    count = len(starts)
    top = _nice(max((v for s in series for v in s.values), default=0.0))
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, count)
    parts = [_frame(title, top, unit, starts)]
    for s in series:
        points = []
        for i, value in enumerate(s.values):
            x = LEFT + (i + 0.5) * step
            y = HEIGHT - BOTTOM - value / top * plot_h
            if value > 0:
                points.append(f"{x:.1f},{y:.1f}")
                tip = f"{s.label}: {_fmt(value)}{unit} ({_clock(starts[i])} UTC)"
                parts.append(
                    f'<circle class="dot {escape(s.kind)}" cx="{x:.1f}" cy="{y:.1f}" r="2">'
                    f"<title>{escape(tip)}</title></circle>"
                )
        if len(points) > 1:
            drawn = " ".join(points)
            parts.insert(1, f'<polyline class="line {escape(s.kind)}" points="{drawn}"/>')
    return _svg(title, parts, series)


def _frame(title: str, top: float, unit: str, starts: Sequence[float]) -> str:
    base = HEIGHT - BOTTOM
    out = [
        f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{WIDTH}" y2="{base}"/>',
        f'<line class="grid" x1="{LEFT}" y1="{TOP}" x2="{WIDTH}" y2="{TOP}"/>',
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">'
        f"{escape(_fmt(top))}{escape(unit)}</text>",
        f'<text class="tick" x="{LEFT - 4}" y="{base}" text-anchor="end">0</text>',
    ]
    if starts:
        out.append(
            f'<text class="tick" x="{LEFT}" y="{HEIGHT - 4}">{_clock(starts[0])}</text>'
            f'<text class="tick" x="{WIDTH}" y="{HEIGHT - 4}" text-anchor="end">now</text>'
        )
    return "".join(out)


def _svg(title: str, parts: list[str], series: Sequence[Series]) -> Markup:
    legend = "".join(f'<span class="key {escape(s.kind)}">{escape(s.label)}</span>' for s in series)
    return Markup(
        f'<figure class="chart"><figcaption>{escape(title)} {legend}</figcaption>'
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg></figure>'
    )


def _nice(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^n at least ``value`` (the axis' top)."""
    if value <= 0:
        return 1.0
    scale = 10 ** (len(str(int(value))) - 1) if value >= 1 else 0.001
    while True:
        for step in (1, 2, 5):
            if step * scale >= value:
                return float(step * scale)
        scale *= 10


def _fmt(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.3g}"


def _clock(at: float) -> str:
    return time.strftime("%H:%M", time.gmtime(at))
