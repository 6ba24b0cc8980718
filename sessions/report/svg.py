"""What every SVG chart of the report shares: the look, the opening tag, coordinates, ticks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import date, timedelta

from sessions.report.words import _e


def _f(value: float) -> str:
    """A coordinate: two decimals, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


_SVG_LOOK = {  # presentation attributes, so an SVG looks right outside the page too
    "grid": 'stroke="#e6e8ec" stroke-width="1"',
    "frame": 'fill="none" stroke="#b9bec7" stroke-width="1"',
    "tick": 'font-size="11" fill="#5b6472"',
    "axis": 'font-size="11.5" fill="#5b6472"',
    "note": 'font-size="11.5" font-weight="600" fill="#1d2430"',
    "limit-text": 'font-size="11.5" font-weight="600" fill="#cf3f3f"',
    "chart-title": 'font-size="12" font-weight="600" fill="#1d2430"',
    "tickmark": 'stroke="#b9bec7" stroke-width="1"',
    "prescribed": 'stroke="#1d2430" stroke-width="1.5" stroke-dasharray="6 4"',
    "extra": 'fill="#b8bec8"',
    "zero": 'stroke="none"',
    "limit": 'stroke="#cf3f3f" stroke-width="1.5" stroke-dasharray="6 4"',
    "ok": 'fill="#2f6db3" fill-opacity="0.75"',
    "over": 'fill="#cf3f3f" stroke="#7a1010" stroke-width="1"',
    "nodata": 'stroke="#8a919c" stroke-width="2"',
    "band": 'fill="#3f9e5f" fill-opacity="0.16"',
    "target": 'stroke="#3f9e5f" stroke-width="1.2" stroke-dasharray="5 3"',
    "envelope": 'fill="none" stroke="#2f6db3" stroke-width="1.4" stroke-linejoin="round"',
    "event": 'stroke="#cf3f3f" stroke-width="2"',
    "change": 'stroke="#6b3fa0" stroke-width="2" stroke-dasharray="2 3"',
    "change-text": 'font-size="11" font-weight="600" fill="#6b3fa0"',
    "event-text": 'font-size="11" font-weight="600" fill="#cf3f3f"',
    "nobody": 'fill="#8a919c" fill-opacity="0.22"',
    "nobody-text": 'font-size="11" font-weight="600" fill="#5b6472"',
}
_L = {name: f'class="{name}" {look}' for name, look in _SVG_LOOK.items()}
_SVG_FONT = "Segoe UI, Helvetica Neue, Arial, Liberation Sans, DejaVu Sans, sans-serif"


def _svg_open(width: int, height: int, label: str, css_class: str, standalone: bool) -> str:
    namespace = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    return (
        f'<svg{namespace} class="{css_class}" viewBox="0 0 {width} {height}" '
        f'font-family="{_SVG_FONT}" '
        f'width="{width}" height="{height}" role="img" aria-label="{_e(label)}">'
        f"<title>{_e(label)}</title>"
    )


def _ticks(top: float, step: float) -> list[float]:
    """0, ``step``, 2 ``step``, ... up to ``top`` (each rounded, so the steps never drift)."""
    ticks: list[float] = []
    tick = 0.0
    while tick <= top + 1e-9:
        ticks.append(tick)
        tick = round(tick + step, 9)
    return ticks


def _grid_lines(
    ticks: Iterable[float],
    y: Callable[[float], float],
    left: float,
    plot_w: float,
    label: Callable[[float], str],
) -> list[str]:
    """A horizontal grid line at each tick across the plot, labelled on its left."""
    return [
        f'<line {_L["grid"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(tick))}" '
        f'y2="{_f(y(tick))}"/><text {_L["tick"]} x="{left - 6}" y="{_f(y(tick) + 4)}" '
        f'text-anchor="end">{label(tick)}</text>'
        for tick in ticks
    ]


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(ticks, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if raw <= m * power:
            return m * power
    return 10.0 * power


_DAY_FILL = {
    "full": "#3f9e5f",
    "partial": "#e9a62b",
    "missed": "#cf3f3f",
    "today": "#4a78c2",
    "future": "#d9dde3",
    "outside": "#e4e6ea",
}


def _date_axis(first: date, count: int, left: float, slot_w: float, base: float) -> list[str]:
    """Labels under a chart of ``count`` days from ``first``: Mondays, or months if long."""
    parts = []
    for k in range(count):
        day = first + timedelta(days=k)
        if count <= 70:
            show, text = day.weekday() == 0 or k == 0, f"{day.day} {day:%b}"
        else:
            show, text = (
                day.day == 1 or k == 0,
                f"{day:%b %Y}" if day.month == 1 or k == 0 else f"{day:%b}",
            )
        if not show:
            continue
        x = left + k * slot_w
        parts.append(
            f'<line {_L["tickmark"]} x1="{_f(x)}" x2="{_f(x)}" y1="{_f(base)}" '
            f'y2="{_f(base + 5)}"/><text {_L["tick"]} x="{_f(x)}" y="{_f(base + 18)}">'
            f"{_e(text)}</text>"
        )
    return parts
