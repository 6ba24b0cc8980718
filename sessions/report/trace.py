"""One session's chart: measured amplitude against time, with target band, events, absences."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from sessions.adherence import (
    PRESENCE_EVENT,
)
from sessions.jsonshapes import status_word
from sessions.report.context import ReportSession, ReportSummary, _start_text
from sessions.report.svg import _L, _f, _grid_lines, _nice_step, _svg_open, _ticks
from sessions.report.words import _e


def _downsampled(points: Sequence[tuple[float, float]], buckets: int) -> list[tuple[float, float]]:
    """At most ``2 * buckets`` points keeping each bucket's lowest and highest amplitude."""
    if len(points) <= 2 * buckets:
        return list(points)
    size = len(points) / buckets
    kept: list[tuple[float, float]] = []
    for b in range(buckets):
        chunk = points[int(b * size) : int((b + 1) * size)]
        if not chunk:
            continue
        low = min(chunk, key=lambda p: p[1])
        high = max(chunk, key=lambda p: p[1])
        kept.extend(sorted({low, high}))
    return kept


def _tolerance_of(record: ReportSummary) -> float | None:
    try:
        value = json.loads(record.protocol_json).get("dose_tolerance")
    except (ValueError, AttributeError, RecursionError):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1:
        return float(value)
    return None


def render_session_svg(
    record: ReportSession,
    *,
    dose_tolerance: float | None = None,
    width: int = 720,
    height: int = 240,
    standalone: bool = False,
) -> str:
    """The envelope of one session: measured amplitude against time, with the target band.

    The band is ``target_g * (1 +/- dose_tolerance)``; the tolerance is read from the
    session's own protocol unless given. ``standalone`` adds the SVG namespace so the text
    can be saved as an ``.svg`` file; inside HTML it is not needed.
    """
    tolerance = dose_tolerance if dose_tolerance is not None else _tolerance_of(record)
    target = record.target_g
    points = sorted((t, g) for t, g in record.envelope if math.isfinite(t) and math.isfinite(g))
    left, right, top, bottom = 52, 26, 26, 50  # the legend sits under the time axis
    plot_w, plot_h = width - left - right, height - top - bottom
    t_end = max([points[-1][0] if points else 0.0, 60.0])
    timed = [e for e in record.safety_events if isinstance(e.get("t_s"), int | float)]
    events = [e for e in timed if e.get("reason") != PRESENCE_EVENT]
    absent_s = _absent_s(record)
    nobody = _nobody_span(record, points)
    t_end = max([t_end, *(float(e["t_s"]) for e in events)])
    g_top = max([target * 1.5, *(g * 1.05 for _, g in points)])

    def x(t_s: float) -> float:
        return left + plot_w * t_s / t_end

    def y(g: float) -> float:
        return top + plot_h * (1.0 - g / g_top)

    label = (
        f"Session {record.session_id}, {record.local_date.isoformat()} slot {record.slot}: "
        f"measured amplitude against time; target {target:g} g"
        + (f" +/- {100 * tolerance:g}%" if tolerance is not None else "")
        + f"; {record.minutes_at_dose:.1f} of {record.minutes_prescribed:.1f} min at dose; "
        f"status {record.status}"
    )
    parts = [_svg_open(width, height, label, "trace", standalone)]
    status = status_word(str(record.status)).replace("_", " ")
    parts.append(
        f'<text x="{left}" y="16" {_L["chart-title"]}>{_e(record.local_date.isoformat())} '
        f"{_e(_start_text(record))} slot {record.slot} &#183; {_e(status)} &#183; "
        f"{record.minutes_at_dose:.1f}/{record.minutes_prescribed:.1f} min at dose</text>"
    )
    if nobody is not None:
        x0, x1 = x(nobody[0]), x(nobody[1])
        parts.append(
            f'<rect {_L["nobody"]} x="{_f(x0)}" y="{top}" width="{_f(max(x1 - x0, 1.0))}" '
            f'height="{plot_h}"><title>nobody on the plate from {nobody[0]:.0f} s to '
            f"{nobody[1]:.0f} s: the session stopped</title></rect>"
            f'<text {_L["nobody-text"]} x="{_f(x0 + 3)}" y="{top + 12}">nobody on the plate'
            "</text>"
        )
    if tolerance is not None:
        band_top, band_bottom = y(target * (1 + tolerance)), y(target * (1 - tolerance))
        parts.append(
            f'<rect {_L["band"]} x="{left}" y="{_f(band_top)}" width="{plot_w}" '
            f'height="{_f(band_bottom - band_top)}"><title>target band {target:g} g '
            f"+/- {100 * tolerance:g}%</title></rect>"
        )
    parts.append(
        f'<line {_L["target"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(target))}" '
        f'y2="{_f(y(target))}"/>'
    )
    ticks = _ticks(g_top, _nice_step(g_top, 4))
    parts.extend(_grid_lines(ticks, y, left, plot_w, lambda tick: f"{tick:g}"))
    step_s = _nice_step(t_end, 6) if t_end < 120 else 60.0 * _nice_step(t_end / 60.0, 6)
    for tick in _ticks(t_end, step_s):
        text = f"{tick:g} s" if t_end < 120 else f"{tick / 60:g} min"
        parts.append(
            f'<text {_L["tick"]} x="{_f(x(tick))}" y="{top + plot_h + 16}" '
            f'text-anchor="middle">{text}</text>'
        )
    parts.append(
        f'<text {_L["axis"]} x="14" y="{_f(top + plot_h / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_f(top + plot_h / 2)})">peak g</text>'
    )
    if points:
        line = " ".join(f"{_f(x(t))},{_f(y(g))}" for t, g in _downsampled(points, plot_w))
        parts.append(f'<polyline {_L["envelope"]} points="{line}"/>')
    else:
        parts.append(
            f'<text {_L["tick"]} x="{_f(left + plot_w / 2)}" y="{_f(top + plot_h / 2)}" '
            'text-anchor="middle">no amplitude recorded</text>'
        )
    for event in events:
        at = x(float(event["t_s"]))
        name = str(event.get("reason", "safety event"))
        kind = "trip" if record.status == "tripped" else "event"
        parts.append(
            f"<g><title>{_e(name)} at {float(event['t_s']):.1f} s: "
            f'{_e(event.get("detail", ""))}</title><line {_L["event"]} x1="{_f(at)}" '
            f'x2="{_f(at)}" y1="{top}" y2="{top + plot_h}"/><text {_L["event-text"]} '
            f'x="{_f(at - 3)}" y="{top + 12}" text-anchor="end">{kind}: {_e(name)}</text></g>'
        )
    parts.append(f'<rect {_L["frame"]} x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>')
    parts.append(_trace_legend(left, height - 10, tolerance is not None, bool(events),
                               nobody is not None, absent_s))  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


_NOBODY = re.compile(r"nobody on the plate for (\d+(?:\.\d+)?) minute")


def _nobody_span(
    record: ReportSession, points: Sequence[tuple[float, float]]
) -> tuple[float, float] | None:
    """When nobody was on the plate, as far as the record tells: the minutes before a session
    stopped because nobody was on it (its reason says how long). Earlier step-offs are only
    counted (the presence event's ``absent_s``), not timed, so they are not drawn."""
    found = _NOBODY.search(str(record.reason))
    if found is None or not points:
        return None
    end = points[-1][0]
    return max(0.0, end - 60.0 * float(found.group(1))), end


def _absent_s(record: ReportSummary) -> float:
    """Seconds nobody was on the plate during the hold, from the record's presence event."""
    for event in record.safety_events:
        values = event.get("values")
        if event.get("reason") == PRESENCE_EVENT and isinstance(values, dict):
            absent = values.get("absent_s")
            if isinstance(absent, int | float) and not isinstance(absent, bool):
                return float(absent)
    return 0.0


def _trace_legend(
    left: float, base: float, band: bool, events: bool, nobody: bool, absent_s: float
) -> str:
    """The key under a session chart: only what the chart shows."""
    items = [(f'<line {_L["envelope"]} x1="0" x2="14" y1="-4" y2="-4"/>', "measured amplitude")]
    if band:
        items.append((f'<rect {_L["band"]} x="0" y="-9" width="14" height="10"/>', "target band"))
    if events:
        items.append((f'<line {_L["event"]} x1="7" x2="7" y1="-10" y2="2"/>', "trip / event"))
    if nobody:
        items.append(
            (f'<rect {_L["nobody"]} x="0" y="-9" width="14" height="10"/>', "nobody on the plate")
        )
    parts = []
    x = left
    for mark, text in items:
        parts.append(
            f'<g transform="translate({_f(x)},{_f(base)})">{mark}<text {_L["tick"]} x="18" '
            f'y="0">{_e(text)}</text></g>'
        )
        x += 26 + 6.2 * len(text)
    if absent_s > 0:
        parts.append(
            f'<text {_L["tick"]} x="{_f(x)}" y="{_f(base)}">off the plate {absent_s:.0f} s in '
            "all</text>"
        )
    return "".join(parts)
