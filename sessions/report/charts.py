"""The report period's charts: minutes at dose per day, accuracy per session, weekly adherence."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import date

from sessions.adherence import (
    AMPLITUDE_P95_LIMIT_PCT,
    AdherenceReport,
    DayAdherence,
)
from sessions.report.context import ReportContext, ReportSummary, _start_text
from sessions.report.svg import (
    _DAY_FILL,
    _L,
    _date_axis,
    _f,
    _grid_lines,
    _nice_step,
    _svg_open,
    _ticks,
)
from sessions.report.words import _change_text, _e, _long_date, _min, _pct, _since_text


def accuracy_text(p95_pct: float | None, uncertainty_pct: float | None) -> str:
    """A session's accuracy as shown: "p95 error 0.80% +/- 0.30%" (the +/- is the standard
    uncertainty of one 1-s window; records from before it was kept show the p95 alone)."""
    if p95_pct is None:
        return "no accuracy figure"
    spread = f" +/- {uncertainty_pct:.2f}%" if uncertainty_pct is not None else ""
    return f"p95 error {p95_pct:.2f}%{spread}"


def _minutes_chart(report: AdherenceReport) -> str:
    days = [d for d in report.days if d.status != "future"]
    width, height = 1040, 250
    left, right, top, bottom = 52, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    prescribed = report.minutes_per_session * report.sessions_per_day
    y_top = max([prescribed, *(d.minutes_prescribed for d in days)]) * 1.5
    steps = _prescribed_steps(days)
    label = (
        f"Minutes at dose per day, {report.period_start.isoformat()} to "
        f"{report.period_end.isoformat()}, against "
        + (
            f"{prescribed:g} minutes prescribed"
            if len(steps) <= 1
            else "the minutes prescribed by the protocol in force each day"
        )
    )
    parts = [_svg_open(width, height, label, "chart", False)]
    if not days:
        parts.append(f'<text {_L["tick"]} x="{left}" y="{top + 20}">no days yet</text></svg>')
        return "".join(parts)

    def y(minutes: float) -> float:
        return top + plot_h * (1.0 - min(minutes, y_top) / y_top)

    ticks = _ticks(y_top, _nice_step(y_top, 5))
    parts.extend(_grid_lines(ticks, y, left, plot_w, lambda tick: f"{tick:g}"))
    slot_w = plot_w / len(days)
    gap = slot_w * 0.18 if slot_w >= 4 else 0.0
    for k, d in enumerate(days):
        x0 = left + k * slot_w + gap / 2
        bar_w = max(slot_w - gap, 0.5)
        extra = max(d.minutes_logged - d.minutes_at_dose, 0.0)
        title = (
            f"{_long_date(d.day)}: {_min(d.minutes_at_dose)} of {_min(d.minutes_prescribed)} "
            f"min at dose ({d.status})"
            + (f"; {_min(extra)} min more logged, not counted" if extra > 0.005 else "")
        )
        parts.append(f"<g><title>{_e(title)}</title>")
        if d.minutes_at_dose > 0:
            parts.append(
                f'<rect x="{_f(x0)}" y="{_f(y(d.minutes_at_dose))}" width="{_f(bar_w)}" '
                f'height="{_f(y(0) - y(d.minutes_at_dose))}" fill="{_DAY_FILL[d.status]}"/>'
            )
        else:
            parts.append(
                f'<rect {_L["zero"]} x="{_f(x0)}" y="{_f(y(0) - 3)}" width="{_f(bar_w)}" '
                f'height="3" fill="{_DAY_FILL[d.status]}"/>'
            )
        if extra > 0.005:
            parts.append(
                f'<rect {_L["extra"]} x="{_f(x0)}" y="{_f(y(d.minutes_logged))}" '
                f'width="{_f(bar_w)}" height="{_f(y(d.minutes_at_dose) - y(d.minutes_logged))}"/>'
            )
        parts.append("</g>")
    for first_k, last_k, minutes in steps:  # one level per run of days with one prescription
        x1, x2 = left + first_k * slot_w, left + (last_k + 1) * slot_w
        parts.append(
            f'<line {_L["prescribed"]} x1="{_f(x1)}" x2="{_f(x2)}" y1="{_f(y(minutes))}" '
            f'y2="{_f(y(minutes))}"/>'
        )
    if steps:
        _, last_k, minutes = steps[-1]
        parts.append(
            f'<text {_L["note"]} x="{_f(left + (last_k + 1) * slot_w - 4)}" '
            f'y="{_f(y(minutes) - 5)}" text-anchor="end">prescribed {minutes:g} min</text>'
        )
    index = {d.day: k for k, d in enumerate(days)}
    for p in report.protocol_changes:
        at_k = index.get(p.in_force_from) if p.in_force_from is not None else None
        if at_k is None:
            continue
        x = left + at_k * slot_w
        parts.append(
            f'<g class="protocol-change"><title>{_e(_since_text(p))}: {_e(_change_text(p))}'
            f'</title><line {_L["change"]} x1="{_f(x)}" x2="{_f(x)}" y1="{top}" '
            f'y2="{top + plot_h}"/><text {_L["change-text"]} x="{_f(x + 3)}" y="{top + 11}">'
            f"protocol {_e(p.short_sha[:7])}</text></g>"
        )
    parts.extend(_date_axis(days[0].day, len(days), left, slot_w, top + plot_h))
    parts.append(
        f'<text {_L["axis"]} x="14" y="{_f(top + plot_h / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_f(top + plot_h / 2)})">minutes</text>'
    )
    parts.append(
        f'<rect {_L["frame"]} x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/></svg>'
    )
    return "".join(parts)


def _prescribed_steps(days: Sequence[DayAdherence]) -> list[tuple[int, int, float]]:
    """Runs of consecutive days with the same minutes prescribed: (first, last, minutes)."""
    steps: list[tuple[int, int, float]] = []
    for k, d in enumerate(days):
        if d.slots_prescribed == 0:  # no study in force that day: nothing prescribed
            continue
        if steps and steps[-1][1] == k - 1 and steps[-1][2] == d.minutes_prescribed:
            steps[-1] = (steps[-1][0], k, d.minutes_prescribed)
        else:
            steps.append((k, k, d.minutes_prescribed))
    return steps


def _accuracy_chart(report: AdherenceReport, sessions: Sequence[ReportSummary]) -> str:
    days = [d for d in report.days if d.status != "future"]
    width, height = 1040, 230
    left, right, top, bottom = 52, 16, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    limit = AMPLITUDE_P95_LIMIT_PCT
    label = (
        "Amplitude accuracy per session: 95th-percentile absolute error of the delivered peak "
        f"acceleration, percent of target; flag limit {limit:g}%"
    )
    parts = [_svg_open(width, height, label, "chart", False)]
    if not days:
        parts.append(f'<text {_L["tick"]} x="{left}" y="{top + 20}">no days yet</text></svg>')
        return "".join(parts)
    first = days[0].day
    measured = [s.p95_abs_error_pct for s in sessions if s.p95_abs_error_pct is not None]
    y_top = max(2.0 * limit, min(max(measured, default=0.0) * 1.15, 5.0 * limit))

    def y(pct: float) -> float:
        return top + plot_h * (1.0 - min(pct, y_top) / y_top)

    ticks = _ticks(y_top, _nice_step(y_top, 4))
    parts.extend(_grid_lines(ticks, y, left, plot_w, lambda tick: f"{tick:g}%"))
    slot_w = plot_w / len(days)
    per_day: dict[date, list[ReportSummary]] = defaultdict(list)
    for s in sessions:
        per_day[s.local_date].append(s)
    radius = max(1.6, min(4.0, slot_w / 4))
    for day, members in per_day.items():
        k = (day - first).days
        for j, s in enumerate(members):
            x = left + slot_w * (k + (j + 1) / (len(members) + 1))
            p95 = s.p95_abs_error_pct
            mean = s.mean_error_pct
            text = (
                f"{day.isoformat()} {_start_text(s)} slot {s.slot} ({s.session_id}): "
                # a summary that predates the field (or a test's stand-in) has no uncertainty
                + accuracy_text(p95, getattr(s, "error_uncertainty_pct", None))
                + (f", mean error {mean:+.2f}%" if mean is not None else "")
            )
            if p95 is None:
                parts.append(
                    f'<g><title>{_e(text)}</title><line {_L["nodata"]} x1="{_f(x)}" '
                    f'x2="{_f(x)}" y1="{_f(y(0))}" y2="{_f(y(0) - 8)}"/></g>'
                )
                continue
            over = p95 > limit
            shape = "over" if over else "ok"
            if over and p95 > y_top:
                parts.append(
                    f'<g><title>{_e(text)}</title><path {_L["over"]} d="M{_f(x - 5)},'
                    f"{_f(top + 9)} L{_f(x)},{_f(top + 1)} L{_f(x + 5)},{_f(top + 9)} "
                    f'Z"/></g>'
                )
            else:
                parts.append(
                    f'<g><title>{_e(text)}</title><circle {_L[shape]} cx="{_f(x)}" '
                    f'cy="{_f(y(p95))}" r="{_f(radius + (1 if over else 0))}"/></g>'
                )
    parts.append(
        f'<line {_L["limit"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(limit))}" '
        f'y2="{_f(y(limit))}"/><text {_L["limit-text"]} x="{left + plot_w - 4}" '
        f'y="{_f(y(limit) - 5)}" text-anchor="end">flag limit {limit:g}%</text>'
    )
    parts.extend(_date_axis(first, len(days), left, slot_w, top + plot_h))
    parts.append(
        f'<text {_L["axis"]} x="14" y="{_f(top + plot_h / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_f(top + plot_h / 2)})">p95 |error|</text>'
    )
    parts.append(
        f'<rect {_L["frame"]} x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/></svg>'
    )
    return "".join(parts)


def _weekly_chart(report: AdherenceReport, ctx: ReportContext) -> str:
    """Session adherence of each ISO week that has a counted day, against the target line."""
    weeks = [w for w in report.weeks if w.days_counted and w.session_adherence is not None]
    width, height = 1040, 190
    left, right, top, bottom = 52, 16, 16, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    label = (
        f"Weekly session adherence, {len(weeks)} week(s), against a target of {100 * ctx.target:g}%"
    )
    parts = [_svg_open(width, height, label, "chart weekly", False)]
    if not weeks:
        parts.append(
            f'<text {_L["tick"]} x="{left}" y="{top + 20}">no week counted yet</text></svg>'
        )
        return "".join(parts)

    def y(ratio: float) -> float:
        return top + plot_h * (1.0 - min(max(ratio, 0.0), 1.0))

    ticks = (0.0, 0.25, 0.5, 0.75, 1.0)
    parts.extend(_grid_lines(ticks, y, left, plot_w, lambda tick: f"{100 * tick:g}%"))
    slot_w = plot_w / max(len(weeks), 4)
    every = max(1, math.ceil(len(weeks) / 12))  # at most about 12 week labels
    for k, w in enumerate(weeks):
        ratio = w.session_adherence or 0.0
        below = ratio < ctx.target - 1e-9
        x0 = left + k * slot_w + slot_w * 0.15
        title = (
            f"{w.label}: {_pct(ratio)} of sessions ({w.slots_completed} of "
            f"{w.slots_prescribed}), {_pct(w.dose_adherence)} of minutes"
            + (" - below the target" if below else "")
        )
        parts.append(
            f'<g><title>{_e(title)}</title><rect x="{_f(x0)}" y="{_f(y(ratio))}" '
            f'width="{_f(slot_w * 0.7)}" height="{_f(max(y(0) - y(ratio), 1.0))}" '
            f'fill="{_DAY_FILL["partial" if below else "full"]}"/></g>'
        )
        if k % every == 0:
            parts.append(
                f'<text {_L["tick"]} x="{_f(x0 + slot_w * 0.35)}" y="{top + plot_h + 16}" '
                f'text-anchor="middle">{_e(w.label)}</text>'
            )
    parts.append(
        f'<line {_L["prescribed"]} x1="{left}" x2="{left + plot_w}" y1="{_f(y(ctx.target))}" '
        f'y2="{_f(y(ctx.target))}"/><text {_L["note"]} x="{left + plot_w - 4}" '
        f'y="{_f(y(ctx.target) - 5)}" text-anchor="end">target {100 * ctx.target:g}%</text>'
    )
    parts.append(
        f'<rect {_L["frame"]} x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/></svg>'
    )
    return "".join(parts)
