"""``liv sessions`` and ``liv show``: the logged sessions in plain values."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from firmware_bridge.errors import LivError
from sessions.adherence import DEMO_LABEL, counted_kinds
from sessions.commands.common import home_of, open_log, period, print_json
from sessions.log import (
    SessionKind,
    SessionLog,
    SessionRecord,
    SessionStatus,
    SessionSummary,
)
from sessions.text import echo, terminal_line


def resolve_session_id(log: SessionLog, text: str) -> str:
    """The session a full id or a unique prefix of one names ('liv show 3f2a')."""
    wanted = text.strip().lower()
    if not wanted:
        raise LivError("give a session id (or its first characters): see 'liv sessions'")
    found = sorted({r.session_id for r in log.summaries() if r.session_id.startswith(wanted)})
    if wanted in found:
        return wanted
    if len(found) == 1:
        return found[0]
    if not found:
        raise LivError(f"no session id starts with '{text}': see 'liv sessions' for the ids")
    shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
    raise LivError(
        f"'{text}' is the start of {len(found)} session ids ({shown}): give more characters"
    )


def cmd_sessions(args: argparse.Namespace) -> int:
    from sessions.jsonshapes import start_time

    since, until = period(args)
    home = home_of(args)
    with open_log(args, home, read_only=True) as log:
        records = log.summaries(patient_id=args.patient, since=since, until=until)
    demo = home.is_demo
    if args.json:
        print_json([_summary(r, demo) for r in records])
        return 0
    if demo:
        echo(DEMO_LABEL.upper())
    echo(f"{'session':<36} {'patient':<12} {'local day':<10} {'start':<5} {'slot':>4} "
         f"{'status':<15} {'at dose':>8}  kind")  # fmt: skip
    for r in records:
        session_id, patient_id = terminal_line(r.session_id), terminal_line(r.patient_id)
        echo(f"{session_id:<36} {patient_id:<12} {r.local_date.isoformat():<10} "
             f"{start_time(r):<5} {r.slot:>4} {_outcome_word(r.status, r.reason):<15} "
             f"{r.minutes_at_dose:>7.1f}m  {_kind_text(r.kind)}")  # fmt: skip
    return 0


def _outcome_word(status: SessionStatus, reason: str) -> str:
    """A record's outcome in text lists; a stop says by what (sessions.stops.stop_word)."""
    from sessions.jsonshapes import status_word
    from sessions.stops import stop_word

    if status is SessionStatus.STOPPED_BY_PATIENT:
        return stop_word(reason)
    return status_word(status.value)


def _kind_text(kind: SessionKind) -> str:
    """How a list names a record's kind: anything but therapy says it does not count."""
    if kind is SessionKind.THERAPY:
        return kind.value
    return f"{kind.value} (not therapy)"


def _summary(r: SessionSummary, demo: bool = False) -> dict[str, Any]:
    """A session as JSON (liv.session/1, sessions/jsonshapes.py)."""
    from sessions.jsonshapes import session_shape

    return session_shape(
        r, counts=r.kind in counted_kinds(demo), label=DEMO_LABEL if demo else None
    )


def sparkline(envelope: tuple[tuple[float, float], ...], target_g: float, width: int = 60) -> str:
    """The session's amplitude as one line of block characters (full height = target x 1.2)."""
    if not envelope:
        return "(no amplitude recorded)"
    bars = " ▁▂▃▄▅▆▇█"
    values = [a for _, a in envelope]
    step = max(1, len(values) // width)
    picked = [max(values[i : i + step]) for i in range(0, len(values), step)]
    top = 1.2 * target_g
    return "".join(bars[min(8, max(0, round(8 * v / top)))] for v in picked)


# A decimal written with more digits than anyone reads (records made before the runner rounded
# its presence figures: "reference 0.36370668811857587")
_LONG_DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d{4,}(?![\w.])")


def _rounded(line: str) -> str:
    """``line`` with every long decimal shown to three decimals (three significant digits
    below 0.01); what is stored is unchanged."""

    def short(match: re.Match[str]) -> str:
        x = float(match.group())
        return f"{x:.3f}" if abs(x) >= 0.01 else f"{x:.3g}"

    return _LONG_DECIMAL.sub(short, line)


def show_lines(record: SessionRecord) -> list[str]:
    """One session in plain words and values rounded to their meaning (``liv show``)."""
    from sessions.jsonshapes import start_time

    def text(value: object) -> str:
        return terminal_line(str(value)) if value not in (None, "") else "-"

    ended = record.ended_local
    errors = (
        "not measured (the session ended before the amplitude settled)"
        if record.p95_abs_error_pct is None
        else f"95% of 1-s windows within {record.p95_abs_error_pct:.1f}% of the target"
        + (
            f" (+/- {record.error_uncertainty_pct:.1f}%, one window's standard uncertainty)"
            if record.error_uncertainty_pct is not None
            else ""
        )
        + (f", mean {record.mean_error_pct:+.1f}%" if record.mean_error_pct is not None else "")
    )
    events = [
        f"{text(e.get('reason', 'event'))}"
        + (f" at {float(e['t_s']):.1f} s" if isinstance(e.get("t_s"), int | float) else "")
        + (f": {_rounded(text(e['detail']))}" if e.get("detail") not in (None, "") else "")
        for e in record.safety_events
    ]
    names = {"a_w_m_s2": ("a_w", "m/s^2"), "a8_m_s2": ("A(8)", "m/s^2"),
             "vdv_m_s1_75": ("VDV", "m/s^1.75"), "duration_s": ("over", "s")}  # fmt: skip
    exposure_text = (
        ", ".join(
            f"{names.get(k, (k, ''))[0]} {v:.2f} {names.get(k, (k, ''))[1]}".rstrip()
            for k, v in sorted(record.exposure.items())
        )
        if record.exposure
        else "not recorded"
    )
    rows = [
        ("session", text(record.session_id)),
        ("patient", text(record.patient_id)),
        ("plate", f"{text(record.device_id)} (firmware {text(record.firmware_version)})"),
        ("day", f"{record.local_date.isoformat()}, session {record.slot} of the day"),
        (
            "time",
            f"{start_time(record)} to {ended:%H:%M} ({text(record.timezone)})"
            if ended is not None
            else f"{start_time(record)}, still running ({text(record.timezone)})",
        ),
        ("outcome", _outcome_word(record.status, record.reason).replace("_", " ")),
        ("kind", _kind_text(record.kind)),
        ("why", text(record.reason)),
        (
            "at dose",
            f"{record.minutes_at_dose:.1f} of {record.minutes_prescribed:.1f} minutes",
        ),
        ("target", f"{record.target_g:.2f} g peak"),
        ("accuracy", errors),
        ("safety events", "; ".join(events) if events else "none"),
        ("exposure", exposure_text),
        ("override", text(record.override_reason) if record.override else "no"),
        ("resumes", text(record.resumed_from)),
        ("amplitude", sparkline(record.envelope, record.target_g)),
    ]
    return [f"{key:<14} {value}" for key, value in rows]


def cmd_show(args: argparse.Namespace) -> int:
    from sessions.report import render_session_svg

    home = home_of(args)
    with open_log(args, home, read_only=True) as log:
        record = log.get(resolve_session_id(log, args.session_id))
    if args.svg:
        Path(args.svg).write_text(render_session_svg(record, standalone=True), encoding="utf-8")
        echo(f"amplitude chart written to {args.svg}", file=sys.stderr if args.json else None)
    if args.json:
        from sessions.jsonshapes import session_detail_shape

        print_json(session_detail_shape(record, record.envelope, record.exposure))
        return 0
    if home.is_demo:
        echo(DEMO_LABEL.upper())
    echo("\n".join(show_lines(record)))
    return 0
