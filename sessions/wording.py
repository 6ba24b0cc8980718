"""Every sentence a patient reads, in one table: what happened and what to do next.

A patient at home reads these on ``liv start``, ``liv status``, ``liv demo`` and ``liv protocol
install``. They are short and plain: no units, no technical words, no raw numbers, no nested
parentheses. What an engineer needs (the trip's measured values, the device's own text) goes to
the session record and the log, and to the screen only with ``liv -v``.

:data:`WORDING` is keyed by situation: ``outcome.*`` ends a session (by its status, stop reason
or safety trip), ``refused.*`` is a start that did not happen, ``progress.*`` is the line the
patient watches, ``status.*`` is ``liv status``, ``wait.*`` says why no session may start now
and when one may (``when.*`` are its pieces; sessions.scheduling builds them), ``setup.*`` and
``enroll.*`` are what this computer lacks to start (the prescription, the clinic's key, the
plate), with the command an engineer would run sent to the log. Templates take ``{counted}``
(time at dose, as :func:`minutes_text` says it), ``{left}`` (``9:28``), ``{days}`` and the like.
docs/wording.md is generated from this table (:func:`wording_markdown`; a test keeps the two
equal). Nothing here imports the plate or the control loop: ``liv status`` stays quick.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from datetime import date

from sessions.stops import (
    NOBODY_PREFIX,
    OUT_OF_TIME_PREFIX,
    STOP_CTRL_C,
    STOP_PIPE,
    STOP_SIGHUP,
    STOP_SIGTERM,
    STOP_SIGTERM_V1,
)

AGAIN = "run liv start again"
CLINIC = "call your clinic"

WORDING: dict[str, str] = {
    # ---- how a session ends -----------------------------------------------------------------
    "outcome.completed": "Session complete, well done: you can step off the plate now.",
    "outcome.stop.ctrl_c": (
        f"You stopped the session; {{counted}} counted. To finish it, {AGAIN} later today."
    ),
    "outcome.stop.sigterm": (
        f"The computer stopped the session; {{counted}} counted. To finish it, {AGAIN}."
    ),
    "outcome.stop.sighup": (
        f"The session stopped because its window was closed; {{counted}} counted. To finish it, "
        f"{AGAIN}."
    ),
    "outcome.stop.pipe": (
        f"The session stopped because its screen output was closed; {{counted}} counted. To "
        f"finish it, {AGAIN}."
    ),
    "outcome.stop.nobody": (
        f"Nobody was on the plate for two minutes, so the session stopped; {{counted}} counted. "
        f"{AGAIN.capitalize()} and step on when it tells you."
    ),
    "outcome.stop.out_of_time": (
        f"The session took too long and stopped; {{counted}} counted. {AGAIN.capitalize()}, "
        f"and {CLINIC} if this keeps happening."
    ),
    "outcome.stop.other": f"The session stopped; {{counted}} counted. To finish it, {AGAIN}.",
    # A safety trip: what the plate noticed, then the next step that fits it (outcome.trip_next).
    "outcome.trip.strong": "The plate stopped itself for safety because it shook too hard.",
    "outcome.trip.weak": (
        "The plate stopped itself for safety because it could not reach full strength."
    ),
    "outcome.trip.still": (
        "The plate stopped itself for safety because it did not move as it should."
    ),
    "outcome.trip.sensor": (
        "The plate stopped itself for safety because its motion sensor gave wrong readings."
    ),
    "outcome.trip.connection": "The plate stopped because its connection to this computer failed.",
    "outcome.trip.plate": "The plate stopped itself for safety because it reported a problem.",
    "outcome.trip.host": (
        "The plate stopped safely because this computer was too busy to keep up with it."
    ),
    "outcome.trip_next.strong": (
        f"{{counted_cap}} counted. Step off and do not use the plate again before you {CLINIC}."
    ),
    "outcome.trip_next.weak": (
        f"{{counted_cap}} counted. Make sure the plate stands flat on a hard floor, then {AGAIN}; "
        f"if it stops again, {CLINIC}."
    ),
    "outcome.trip_next.still": (
        f"{{counted_cap}} counted. Check that the plate's power is plugged in, then {AGAIN}; if it "
        f"stops again, {CLINIC}."
    ),
    "outcome.trip_next.sensor": (
        f"{{counted_cap}} counted. Do not use the plate again before you {CLINIC}."
    ),
    "outcome.trip_next.connection": (
        f"{{counted_cap}} counted. Check the cable between the plate and this computer, then "
        f"{AGAIN}; if it stops again, {CLINIC}."
    ),
    "outcome.trip_next.plate": (
        f"{{counted_cap}} counted. Switch the plate off and on again, then {AGAIN}; if it stops "
        f"again, {CLINIC}."
    ),
    "outcome.trip_next.host": (
        f"{{counted_cap}} counted. Close the other programs on this computer, then {AGAIN}; if it "
        f"stops again, {CLINIC}."
    ),
    # ---- a start that did not happen --------------------------------------------------------
    "refused.stopped": (
        f"You stopped before the session began, so no session was recorded; {AGAIN} when you "
        "are ready."
    ),
    "refused.stopped_by_computer": (
        f"The computer stopped the session before it began, so no session was recorded; {AGAIN} "
        "when you are ready."
    ),
    "refused.stopped_closed": (
        f"The window was closed before the session began, so no session was recorded; {AGAIN} "
        "when you are ready."
    ),
    "refused.not_calibrated": (
        f"The plate has not been set up for your prescription yet, so nothing was started; "
        f"please {CLINIC}."
    ),
    "refused.setup_damaged": (
        "The plate's settings on this computer are damaged, so nothing was started; please "
        f"{CLINIC}."
    ),
    "refused.sensor": (
        "The plate's motion sensor failed its check, so nothing was started; please contact "
        "your clinic."
    ),
    "refused.fault_hot": (
        "The plate got too hot; leave it switched on with nobody on it for 30 minutes to cool, "
        f"then {AGAIN}."
    ),
    "refused.fault_moving": (
        f"The plate is still moving after a problem; step off, switch it off and on, then {AGAIN}."
    ),
    "refused.fault_service": (
        f"The plate has a problem that needs a person; do not use it, switch it off and {CLINIC}."
    ),
    "refused.no_plate": (
        f"This computer cannot reach the plate; check that it is plugged in and switched on, "
        f"then {AGAIN}."
    ),
    "refused.plate_busy": (f"Another program is using the plate; close it, then {AGAIN}."),
    "refused.session_running": (
        "A session is already running on this computer; let it finish, or stop it in its own "
        "window with Ctrl-C."
    ),
    "refused.plate_software": (
        f"The plate's software does not match this program, so nothing was started; please "
        f"{CLINIC}."
    ),
    "refused.plate_readings": (
        f"The plate sent readings this program cannot use, so nothing was started; please {CLINIC}."
    ),
    "refused.prescription": (
        f"Your prescription asks for a setting this plate does not allow, so nothing was "
        f"started; please {CLINIC}."
    ),
    # ---- while the plate runs ---------------------------------------------------------------
    "start.new": "Starting session {slot} of {per_day} today.",
    "start.resume": "Resuming session {slot} of today, {left} to go.",
    "start.override": "Starting session {slot} of today outside the schedule, as asked.",
    "progress.begin": "Step onto the plate now and stand still; press Ctrl-C to stop.",
    "progress.starting": "Starting - stay on the plate",
    "progress.checking": "Checking that you are on the plate - keep standing",
    "progress.keep": "Keep standing",
    "progress.weak": "Keep standing - getting back to full strength",
    "progress.paused": "Paused - step back onto the plate",
    "progress.stopping": "Stopping - step off when it is still",
    "progress.left": "{left} left",
    # ---- liv status -------------------------------------------------------------------------
    "start.paired": (
        "This plate is now paired with this computer; from now on only this plate can record "
        "your sessions."
    ),
    "start.cannot_vouch": (
        "This plate cannot sign your session records, so your clinic will not be able to check "
        f"them; the session runs and is saved as usual. Please {CLINIC} about the plate."
    ),
    "start.simulated": "This plate is a simulator, so this session does not count.",
    "status.demo": "This is the demo: its sessions are simulated and are not therapy.",
    "status.prescription_ok": "Your prescription is the one your clinic signed.",
    "status.today": "Today is {day} ({zone} time).",
    "status.slot_done": "Session {slot}: done.",
    "status.slot_part": "Session {slot}: {counted} of {goal} done.",
    "status.slot_due": "Session {slot}: not done yet.",
    "status.not_counted": (
        "Today's setup or practice runs of the plate do not count toward your sessions."
    ),
    "status.next_now": "Next: session {slot} is due now; run liv start when you are ready.",
    "status.running": (
        "Now: a session is running on this computer; it ends by itself when its time is done."
    ),
    "status.next": "{message}",  # the message says what is next ("Please wait: ...")
    "status.streak_0": "No day with every session done yet: today can be the first.",
    "status.streak_1": "Every session done 1 day in a row.",
    "status.streak_n": "Every session done {days} days in a row.",
    # a record dated before one recorded before it (sessions/log/clockorder.py), recent only
    # (status.py SET_BACK_WINDOW): the clinic sees every one, the patient cannot clear it
    "status.set_back_one": (
        "The session dated {day} started before one recorded before it ended. This computer's "
        "clock was set back, or a clock that ran fast was put right. It does not count for "
        "that day. Check that the clock is right; your clinic will see this."
    ),
    "status.set_back_many": (
        "Sessions dated {day} started before ones recorded before them ended. This computer's "
        "clock was set back, or a clock that ran fast was put right. They do not count for "
        "those days. Check that the clock is right; your clinic will see this."
    ),
    # this log holds sessions that end after this computer's clock (SessionLog.clock_behind)
    "status.clock_behind": (
        "This computer's clock may be behind: some sessions are dated later than now. Set the "
        "clock to the right date and time. If it is right already, it ran fast before."
    ),
    # ---- liv protocol install ---------------------------------------------------------------
    "install.done": "Your new prescription is installed; run liv status to see what is due.",
    "install.summary": "It asks for {per_day} of {minutes} each, from {first} to {last}.",
    "install.study_ended": (
        "This prescription's study ended on {day}, so no session is due under it; ask your "
        "clinic for a current one."
    ),
    "install.study_later": (
        "This prescription's study starts on {day}; no session is due before then."
    ),
    # ---- liv status and liv start: why no session may start now ----------------------------
    "wait.before_study": "Your study starts on {day}, {away}; no session is due before then.",
    "wait.after_study": "Your study ended on {day}; no more sessions are due.",
    "wait.day_done": "Today's {per_day} sessions are done; the next one is due {when}.",
    "wait.day_done_last": (
        "Today's {per_day} sessions are done, and they were the last ones of your study."
    ),
    "wait.gap": "Please wait: the next session is allowed {when}, {gap} after the last one ended.",
    "wait.gap_window": (
        "Please wait: the next session is allowed {when}, at least {gap} after the last one "
        "and at one of your session times."
    ),
    "wait.gap_study_ends": (
        "No more sessions are due: your study ends on {day}, before {gap} have passed since the "
        "last one."
    ),
    "wait.window": (
        "Sessions can start only at your prescribed times; the next one begins {when}."
    ),
    "wait.window_none": (
        "Sessions can start only at your prescribed times, and no such time is left in your study."
    ),
    # pieces of the sentences above: when the next session may start
    "when.from_today": "from {clock}",
    "when.from_tomorrow": "tomorrow from {clock}",
    "when.from_day": "on {day} from {clock}",
    "when.at_today": "at {clock}",
    "when.at_tomorrow": "tomorrow at {clock}",
    "when.at_day": "on {day} at {clock}",
    "when.tomorrow": "tomorrow",
    "when.days_away": "in {days} days",
    "when.twice_before": "{clock} (before the clocks went back)",
    "when.twice_after": "{clock} (after the clocks went back)",
    # ---- setting up this computer (any command that needs the prescription or the plate) ----
    "setup.not_enrolled": (
        "This computer is not enrolled with your clinic. Ask your clinic to enrol it, then "
        "install your prescription."
    ),
    "setup.key_damaged": (
        "The clinic key on this computer is damaged. Ask your clinic to enrol it again."
    ),
    "setup.other_clinic": (
        "This computer is already enrolled with another clinic. To change clinic, run liv "
        "enroll again with --replace; the change is recorded."
    ),
    "setup.no_prescription": (
        "No prescription is installed on this computer yet. Ask your clinic for your "
        "prescription file."
    ),
    "setup.no_plate": (
        "No plate is set up on this computer yet. Plug it in and switch it on, then ask your "
        "clinic to set it up."
    ),
    "setup.not_signed": (
        "This prescription is not signed by your clinic. Ask your clinic for a new prescription "
        "file."
    ),
    # ---- liv enroll: the clinic key file given --------------------------------------------------
    "enroll.missing": "There is no clinic key file at {path}; check its name.",
    "enroll.folder": "{path} is a folder, not a clinic key file.",
    "enroll.unreadable": "The clinic key file {path} cannot be read; check that you may open it.",
    "enroll.too_large": "{path} is far too large to be a clinic key file.",
    "enroll.not_a_key": (
        "{path} is not a clinic key file; use the public key file your clinic gave you."
    ),
    # ---- liv demo ---------------------------------------------------------------------------
    "demo.banner": (
        "DEMO: a simulated plate and a made-up patient; nothing here is a real session."
    ),
}

# Safety trip codes (controller.safety.TripReason values) -> the sentence saying what happened.
TRIP_WORDING: dict[str, str] = {
    "over_acceleration": "outcome.trip.strong",
    "excess_harmonics": "outcome.trip.strong",
    "runaway": "outcome.trip.strong",
    "drive_saturated": "outcome.trip.weak",
    "cannot_reach_dose": "outcome.trip.weak",
    "no_response": "outcome.trip.still",
    "sensor_stuck": "outcome.trip.sensor",
    "sensor_saturated": "outcome.trip.sensor",
    "sensor_gravity": "outcome.trip.sensor",
    "link_lost": "outcome.trip.connection",
    "link_degraded": "outcome.trip.connection",
    "device_fault": "outcome.trip.plate",
    "device_reset": "outcome.trip.plate",
    "device_refused": "outcome.trip.plate",
    "sample_index_jump": "outcome.trip.plate",
    "host_too_slow": "outcome.trip.host",
}

# The runner's record reasons for a stop (sessions.stops and sessions.runner) -> the sentence.
STOP_WORDING: dict[str, str] = {
    STOP_CTRL_C: "outcome.stop.ctrl_c",
    STOP_SIGTERM: "outcome.stop.sigterm",
    STOP_SIGTERM_V1: "outcome.stop.sigterm",  # records written before said it so
    STOP_SIGHUP: "outcome.stop.sighup",
    STOP_PIPE: "outcome.stop.pipe",
}

# Progress states (sessions.runner.Progress.state) -> what the patient reads while standing.
PROGRESS_WORDING: dict[str, str] = {
    "ramping up": "progress.starting",
    "checking that somebody is on the plate": "progress.checking",
    "at dose": "progress.keep",
    "at dose (presence not verified)": "progress.keep",
    "below dose": "progress.weak",
    "paused: nobody on the plate": "progress.paused",
    "stopping": "progress.stopping",
}


# Errors that refuse a start (by class name, so nothing here imports the plate) -> sentence.
# An error not listed keeps its own message (a schedule refusal, a missing installation).
REFUSAL_WORDING: dict[str, str] = {
    "SessionStoppedError": "refused.stopped",
    "NoCalibrationError": "refused.not_calibrated",
    "CalibrationError": "refused.setup_damaged",  # a damaged calibration file
    "SensorCalibrationError": "refused.setup_damaged",
    "SensorCheckError": "refused.sensor",
    "PlateFaultLatchedError": "refused.fault_service",
    "DeviceBusyError": "refused.plate_busy",
    "SessionRunningError": "refused.session_running",
    "IncompatibleVersionError": "refused.plate_software",
    "InvalidDeviceInfoError": "refused.plate_software",
    # the plate talks, but its sample clock went back: its firmware is at fault, not the cable
    "SampleIndexError": "refused.plate_readings",
    "DoseLimitError": "refused.prescription",
    "BridgeError": "refused.no_plate",  # every other trouble reaching the plate
}


_STOPPED_BEFORE = {
    STOP_SIGTERM: "refused.stopped_by_computer",
    STOP_SIGTERM_V1: "refused.stopped_by_computer",
    STOP_SIGHUP: "refused.stopped_closed",
    STOP_PIPE: "refused.stopped_closed",
}


# Errors whose own message stays: a --device URL that names no kind of plate is the setup's
# mistake, and the message names the URL and what is allowed.
KEEP_MESSAGE = frozenset({"UnknownUrlError"})


def refusal_sentence(exc: BaseException) -> str | None:
    """The patient's sentence for an error that stopped a start, or None to keep its message."""
    for cls in type(exc).__mro__:
        if cls.__name__ in KEEP_MESSAGE:
            return None
        key = REFUSAL_WORDING.get(cls.__name__)
        if key is None:
            continue
        if key == "refused.stopped":
            key = _STOPPED_BEFORE.get(getattr(exc, "reason", ""), key)
        if key == "refused.fault_service":
            hot = getattr(exc, "name", "") == "COIL_OVERTEMP"
            if hot and not getattr(exc, "needs_person", True):
                key = "refused.fault_hot"
            elif "still moving" in str(exc):
                key = "refused.fault_moving"
        return say(key)
    return None


def say(key: str, **values: object) -> str:
    """The sentence ``key`` with its blanks filled in."""
    return WORDING[key].format(**values)


def day_text(day: date) -> str:
    """A day as a person writes it: '30 November 2026' (with the weekday: 'Monday 30 ...')."""
    return f"{day.day} {day:%B %Y}"


def minutes_text(minutes: float) -> str:
    """Time at dose in words, never more than was delivered: 'no time', '9 minutes'."""
    if minutes <= 0.0:
        return "no time"
    whole = math.floor(minutes + 1e-6)
    if whole < 1:
        return "less than a minute"
    return "1 minute" if whole == 1 else f"{whole} minutes"


def hours_text(hours: float) -> str:
    """A wait in words: '3 hours', '1 hour', '2 hours 30 minutes', '45 minutes'."""
    total = max(0, round(hours * 60.0))
    whole, minutes = divmod(total, 60)
    parts = []
    if whole:
        parts.append("1 hour" if whole == 1 else f"{whole} hours")
    if minutes or not whole:
        parts.append("1 minute" if minutes == 1 else f"{minutes} minutes")
    return " ".join(parts)


def clock_left(seconds: float) -> str:
    """Seconds still to go as the patient's clock: '9:28'."""
    minutes, secs = divmod(max(0, math.ceil(seconds - 1e-6)), 60)
    return f"{minutes}:{secs:02d}"


def start_sentence(slot: int, per_day: int, minutes: float, resumed: bool, override: bool) -> str:
    """What starts now, before the patient steps on ('Starting session 1 of 2 today.')."""
    if override:
        return say("start.override", slot=slot)
    if resumed:
        return say("start.resume", slot=slot, left=minutes_text(math.ceil(minutes - 1e-6)))
    return say("start.new", slot=slot, per_day=per_day)


def outcome_sentence(status: str, reason: str, minutes: float, trip: str | None) -> str:
    """What the patient reads when a session ends (the record keeps ``reason`` in full)."""
    counted = minutes_text(minutes)
    if status == "completed":
        return say("outcome.completed")
    if status == "tripped":
        what = TRIP_WORDING.get(trip or "", "outcome.trip.plate")
        then = what.replace("outcome.trip.", "outcome.trip_next.")
        return f"{say(what)} {say(then, counted_cap=counted.capitalize())}"
    key = STOP_WORDING.get(reason)
    if key is None:
        if reason.startswith(NOBODY_PREFIX):
            key = "outcome.stop.nobody"
        elif reason.startswith(OUT_OF_TIME_PREFIX):
            key = "outcome.stop.out_of_time"
        else:
            key = "outcome.stop.other"
    return say(key, counted=counted)


def progress_text(state: str, remaining_s: float) -> str:
    """The words of the progress line: 'Keep standing - 9:28 left'."""
    words = say(PROGRESS_WORDING.get(state, "progress.keep"))
    if state in ("at dose", "at dose (presence not verified)", "below dose"):
        head, sep, tail = words.partition(" - ")
        left = say("progress.left", left=clock_left(remaining_s))
        return f"{head} - {left}" + (f" - {tail}" if sep else "")
    return words


def streak_sentence(days: int) -> str:
    if days <= 0:
        return say("status.streak_0")
    if days == 1:
        return say("status.streak_1")
    return say("status.streak_n", days=days)


# ---- the person-readable table (docs/wording.md) ------------------------------------------

_SECTIONS: Mapping[str, str] = {
    "outcome": "How a session ends",
    "refused": "A start that did not happen",
    "start": "When a session starts",
    "progress": "While the plate runs",
    "status": "liv status",
    "wait": "Why no session may start now (liv status, liv start)",
    "when": "When the next session may start (pieces of the sentences above)",
    "setup": "Setting up this computer",
    "enroll": "liv enroll",
    "install": "liv protocol install",
    "demo": "liv demo",
}


def wording_markdown() -> str:
    """docs/wording.md: every patient sentence, by situation (generated; a test compares)."""
    lines = [
        "# What patients read",
        "",
        "Generated from `sessions/wording.py` (`python -m sessions.wording > docs/wording.md`);",
        "`tests/test_wording.py` checks that this page matches the table and that every",
        "sentence is short (at most 25 words) and free of technical words, raw numbers, reprs",
        "and nested parentheses. Blanks in braces are filled in when the sentence is shown:",
        "`{counted}` is the time at dose in whole minutes, never rounded up (for example",
        '"9 minutes"); `{left}` is the time still to go (for example "9:28").',
        "Technical detail (measured values, the plate's own text) goes to the session record,",
        "the log and `liv -v`, never here.",
    ]
    for prefix, title in _SECTIONS.items():
        lines += ["", f"## {title}", "", "| situation | what the patient reads |", "|---|---|"]
        for key, text in WORDING.items():
            if key.split(".", 1)[0] == prefix:
                lines.append(f"| `{key}` | {text.replace('|', '/')} |")
    lines += ["", "## Which safety stop says what", "", "| stop | sentence |", "|---|---|"]
    lines += [f"| `{code}` | `{key}` |" for code, key in TRIP_WORDING.items()]
    lines += ["", "## What the progress line says in each state", ""]
    lines += ["| state | sentence |", "|---|---|"]
    lines += [f"| {state} | `{key}` |" for state, key in PROGRESS_WORDING.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - writes docs/wording.md
    sys.stdout.write(wording_markdown())
