"""The patient's path through a session, from a walk-through's findings (brief s6/patientpath).

A stop (Ctrl-C, a stop signal) delivered at any line of the control loop ends the session as
Ctrl-C always did: a soft ramp down, a record ``stopped_by_patient`` with the true reason, never
a traceback or a record left ``running``. Plate motion is judged from the simulator's truth file.
"""

from __future__ import annotations

import inspect
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest

import controller.loop
from controller.calibration import identify
from controller.loop import ExposureSettings, ExposureStatus, run_exposure
from controller.safety import TripReason
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient
from sessions import runner
from sessions.adherence import compute_adherence
from sessions.cli import main
from sessions.commands.start import ProgressLine, start_exit_status
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from sessions.runner import Progress, SessionOutcome, run_session
from sessions.stops import STOP_CTRL_C, STOP_SIGTERM, STOP_SIGTERM_V1, stop_word
from sessions.wording import TRIP_WORDING, outcome_sentence, progress_text, say
from tests.test_fault_matrix import Truth, assert_still_after
from tests.test_progress import FakeTerminal, shown_lines
from tests.test_resume import (  # noqa: F401  (home is a fixture)
    DEVICE_ID,
    home,
    liv_start,
    records,
    sim,
)
from tests.test_sessions import _wait_for_checkpoint
from tests.test_stops import REPO, plate, start_command

LOOP_CODE = controller.loop._run_exposure.__code__


def _loop_body() -> tuple[int, int]:
    """First and last line (file numbers) of the exposure's try body: start-up and the loop."""
    lines, first = inspect.getsourcelines(controller.loop._run_exposure)
    begin = end = None
    for offset, text in enumerate(lines):
        if text == "    try:\n" and begin is None:
            begin = first + offset + 1
        if text.startswith("    except KeyboardInterrupt"):
            end = first + offset - 1
    assert begin is not None
    assert end is not None
    return begin, end


IN_HOLD_S = 2.25  # exposure time in the hold (the ramp up lasts 2 s): the history has a hold
# A stop in the hold is traced from this long before its exposure time: the loop's updates
# before that only cost time under a trace function (progress comes every 0.1 s of plate time).
TRACE_LEAD_S = 0.5


class StopAtLine:
    """A trace function: the first time ``line`` of the loop is about to run at or after
    exposure time ``after_s``, the installed SIGINT handler is called, exactly as the signal
    would (Ctrl-C pressed there)."""

    def __init__(self, line: int | None, after_s: float = 0.0) -> None:
        self.line = line
        self.after_s = after_s
        self.body = _loop_body()
        self.fired = False
        self.fired_t = 0.0  # the loop's exposure time then (its last update's, or this one's)
        self.seen: set[int] = set()
        self.seen_in_hold: set[int] = set()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._local if frame.f_code is LOOP_CODE else None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and self.body[0] <= frame.f_lineno <= self.body[1]:
            self.seen.add(frame.f_lineno)
            t = frame.f_locals.get("t", 0.0)
            if t >= IN_HOLD_S:
                self.seen_in_hold.add(frame.f_lineno)
            if frame.f_lineno == self.line and not self.fired and t >= self.after_s:
                self.fired, self.fired_t = True, t
                handler = signal.getsignal(signal.SIGINT)
                assert callable(handler)
                handler(signal.SIGINT, frame)
                # Once pressed, the rest of the session (the stop itself) runs untraced, as
                # after a real Ctrl-C.
                sys.settrace(None)
                return None
        return self._local

    def trace_from_now(self) -> None:
        """Start tracing the running loop from here on (as a debugger attaches): called from
        within the loop (its progress hook), it traces the loop's frame and what it calls."""
        frame: FrameType | None = sys._getframe(1)
        while frame is not None and frame.f_code is not LOOP_CODE:
            frame = frame.f_back
        assert frame is not None, "not called from within the control loop"
        frame.f_trace = self._local
        sys.settrace(self)


def _traced_session(
    home: LivHome,  # noqa: F811
    tracer: StopAtLine,
    truth: Path,
    on_progress: Callable[[Progress], None] | None = None,
) -> SessionOutcome:
    """A session under ``tracer``: traced from its start, or, for a stop in the hold
    (``tracer.after_s`` > 0, no ``on_progress``), from TRACE_LEAD_S of exposure before it."""
    previous = sys.gettrace()
    late = on_progress is None and tracer.after_s > 0.0
    if late:
        attached = [False]

        def trace_near_the_stop(progress: Progress) -> None:
            if not attached[0] and progress.elapsed_s >= tracer.after_s - TRACE_LEAD_S:
                attached[0] = True
                tracer.trace_from_now()

        on_progress = trace_near_the_stop
    with SessionLog(home.db_path()) as log:
        if not late:
            sys.settrace(tracer)
        try:
            return run_session(
                protocol=home.protocol(), log=log, device_url=sim(f"&truth={truth}"),
                calibrations=home.calibrations(), on_progress=on_progress,
            )  # fmt: skip
        finally:
            sys.settrace(previous)


def _lines_the_loop_runs(home: LivHome, tmp_path: Path) -> list[tuple[int, float]]:  # noqa: F811
    """Every line of the loop body a session runs (up to 2 s into the hold), with the exposure
    time to stop it at: in the hold if the line runs there, else its first run (start-up)."""

    def stop_in_hold(progress: Progress) -> None:
        if progress.elapsed_s > 4.0:
            raise KeyboardInterrupt

    tracer = StopAtLine(None)
    _traced_session(home, tracer, tmp_path / "discover.npz", stop_in_hold)
    return [(n, IN_HOLD_S if n in tracer.seen_in_hold else 0.0) for n in sorted(tracer.seen)]


def test_ctrl_c_at_any_line_of_the_control_loop_stops_the_session_softly_and_truly(
    home: LivHome,  # noqa: F811
    tmp_path: Path,
) -> None:
    lines = _lines_the_loop_runs(home, tmp_path)
    assert len(lines) > 40, lines  # the start-up calls and the whole update
    for line, after_s in lines:
        truth_path = tmp_path / f"truth-{line}.npz"
        tracer = StopAtLine(line, after_s)
        try:
            outcome = _traced_session(home, tracer, truth_path)
        except BaseException as exc:
            pytest.fail(f"Ctrl-C at controller/loop.py:{line} escaped: {exc!r}")
        assert tracer.fired, line
        record = outcome.record
        assert record.status is SessionStatus.STOPPED_BY_PATIENT, (line, record.reason)
        assert record.reason == STOP_CTRL_C, (line, record.reason)
        assert outcome.message.startswith("You stopped the session"), (line, outcome.message)
        # The stop came at a block boundary: the update in progress was finished, history and
        # all, never cut off (a signal raising where it lands loses the update it interrupts).
        assert outcome.result is not None
        history_t = outcome.result.history["t_s"]
        if tracer.fired_t > 0.0:
            assert history_t[-1] >= tracer.fired_t, (line, history_t[-1], tracer.fired_t)
        truth = Truth.load(truth_path)
        if np.any(np.abs(truth.drive) > 1e-9):  # (a stop before the output came on: never on)
            assert_still_after(truth, truth.zero_drive_s)  # ramped off, never a step
    with SessionLog(home.db_path()) as log:
        assert not [s for s in log.sessions() if s.status is SessionStatus.RUNNING]


# ---- 3. "Step onto the plate now" only once the plate is open and its checks passed ----------


@pytest.mark.parametrize(
    "device",
    [
        "socket://127.0.0.1:1",  # nothing listens: the plate cannot be reached
        "sim://?mass=0&seed=4&speed=max&device_id=SIM-OTHER",  # a plate never calibrated
        sim("&sensor_gain_error=0.12"),  # its sensor fails the at-rest check
    ],
    ids=["unreachable", "uncalibrated", "sensor"],
)
def test_a_refused_start_never_tells_the_patient_to_step_on(
    home: LivHome,  # noqa: F811
    device: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert liv_start(home, device) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "Step onto" not in out + err, out
    assert "Starting session" not in out + err, out
    assert out.strip() or err.strip()  # the refusal itself is said


def test_a_start_that_passes_its_checks_says_what_starts_then_to_step_on(
    home: LivHome,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert liv_start(home, sim()) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("Starting session 1 of 2 today."), first
    assert "Step onto the plate" in first, first


# ---- 2. a second liv start while a session runs: refused before the plate is touched ---------


def test_a_second_start_while_a_session_runs_is_refused_and_status_says_it_runs(
    home: LivHome,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = subprocess.Popen(
        start_command(home, plate(tmp_path / "truth.npz", "&speed=4")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        _wait_for_checkpoint(home)
        # The second start names a plate nobody listens on: had it been opened, the patient
        # would read that it cannot be reached.
        assert liv_start(home, "socket://127.0.0.1:1") == 1
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        assert err.strip().endswith(say("refused.session_running")), err
        assert "Starting session" not in out + err
        assert main(["status", "--home", str(home.root)]) == 0
        status = capsys.readouterr().out
        assert say("status.running") in status, status
        assert "is due now" not in status, status
        assert main(["status", "--json", "--home", str(home.root)]) == 0
        shape = json.loads(capsys.readouterr().out)
        assert shape["next_allowed"] is False
        assert shape["next_message"] == say("status.running")
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    assert first.returncode == 130
    (record,) = records(home)  # the first session only, and it was left alone
    assert record.status is SessionStatus.STOPPED_BY_PATIENT
    assert record.reason == STOP_CTRL_C


# ---- 6. stop reasons that say what happened -----------------------------------------------


def _listed(home: LivHome, session_id: str, capsys: pytest.CaptureFixture[str]) -> str:  # noqa: F811
    """What ``liv sessions`` and ``liv show`` print about the session (text, not JSON)."""
    capsys.readouterr()
    assert main(["sessions", "--home", str(home.root)]) == 0
    assert main(["show", session_id[:8], "--home", str(home.root)]) == 0
    return capsys.readouterr().out


def test_a_sigterm_is_recorded_and_listed_as_the_computers_stop_not_the_patients(
    home: LivHome,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    sent: list[float] = []

    def shutdown(progress: Progress) -> None:  # the computer shuts down 3 s into the session
        if progress.elapsed_s > 3.0 and not sent:
            sent.append(progress.elapsed_s)
            handler = signal.getsignal(signal.SIGTERM)
            assert callable(handler)
            handler(signal.SIGTERM, None)

    with SessionLog(home.db_path()) as log:
        outcome = run_session(
            protocol=home.protocol(), log=log, device_url=sim(),
            calibrations=home.calibrations(), on_progress=shutdown,
        )  # fmt: skip
    record = outcome.record
    assert record.status is SessionStatus.STOPPED_BY_PATIENT  # the stored word (log format)
    assert "computer" in record.reason, record.reason
    assert "patient" not in record.reason, record.reason
    assert outcome.message.startswith("The computer stopped the session;"), outcome.message
    listed = _listed(home, record.session_id, capsys)
    assert "stopped_by_user" not in listed, listed
    assert "stopped by user" not in listed, listed
    assert "computer" in listed, listed


def test_nobody_on_the_plate_is_not_listed_as_stopped_by_the_patient(
    home: LivHome,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(runner, "UNLOADED_LIMIT_S", 3.0)  # (2 minutes in a session)
    with SessionLog(home.db_path()) as log:
        outcome = run_session(
            protocol=home.protocol(), log=log, device_url=sim("&step_off_at=5"),
            calibrations=home.calibrations(),
        )  # fmt: skip
    record = outcome.record
    assert record.reason.startswith("nobody on the plate"), record.reason
    listed = _listed(home, record.session_id, capsys)
    assert "stopped_by_user" not in listed, listed
    assert "stopped by user" not in listed, listed
    assert "nobody_on_plate" in listed, listed
    with SessionLog(home.db_path()) as log:
        report = compute_adherence(home.protocol(), log.sessions(), demo=True)
    flags = [f.reason for f in report.flagged if f.session_id == record.session_id]
    assert flags, "the session is flagged"
    assert not any("stopped by the patient" in text for text in flags), flags


def test_records_written_with_the_old_sigterm_reason_still_read_as_the_computers_stop(
    home: LivHome,  # noqa: F811
) -> None:
    old = "stopped by the patient (a stop signal, SIGTERM)"  # what records said before
    assert old == STOP_SIGTERM_V1
    stopped = SessionStatus.STOPPED_BY_PATIENT
    assert start_exit_status(stopped, old) == start_exit_status(stopped, STOP_SIGTERM) == 130
    assert outcome_sentence(stopped.value, old, 2.0, None) == outcome_sentence(
        stopped.value, STOP_SIGTERM, 2.0, None
    )
    assert stop_word(old) == stop_word(STOP_SIGTERM) != stop_word(STOP_CTRL_C)


# ---- 7. every outcome sentence ends with a next step that fits it --------------------------


def test_a_stop_before_the_session_began_says_what_to_do_next() -> None:
    for key in ("refused.stopped", "refused.stopped_by_computer", "refused.stopped_closed"):
        text = say(key)
        assert "no session was recorded" in text, text
        assert "run liv start again" in text, text


def test_nobody_on_the_plate_says_run_liv_start_first_then_step_on_when_told() -> None:
    text = outcome_sentence("stopped_by_patient", "nobody on the plate for 2 minutes", 3.0, None)
    assert "3 minutes counted" in text
    run, step = text.lower().find("run liv start"), text.lower().find("step on")
    assert 0 <= run < step, text
    assert "when it tells you" in text[step:], text


@pytest.mark.parametrize("trip", [r.value for r in TripReason])
def test_each_safety_stop_gives_advice_that_fits_it(trip: str) -> None:
    text = outcome_sentence("tripped", "technical detail", 2.0, trip)
    family = TRIP_WORDING[trip].rsplit(".", 1)[1]
    cable = "Check the cable" in text
    assert cable == (family == "connection"), text  # a cable only for a failed connection
    if family in ("strong", "sensor"):  # the plate itself misbehaved: not again before a call
        assert "run liv start again" not in text, text
        assert "do not use the plate again before you call your clinic" in text.lower(), text
    else:
        assert "run liv start again; if it stops again, call your clinic." in text, text
    assert "2 minutes counted" in text, text


def test_the_safety_stop_families_each_have_their_own_next_step() -> None:
    families = sorted({key.rsplit(".", 1)[1] for key in TRIP_WORDING.values()})
    nexts = {say(f"outcome.trip_next.{f}", counted_cap="No time") for f in families}
    assert len(nexts) == len(families)


# ---- 4-5. the progress line while standing and stepping off -----------------------------------


def _words(line: str) -> str:
    """A progress line's words, without the time left and the bar."""
    return re.sub(r"\d+:\d\d left", "left", re.sub(r"\s*\[[#█░-]*\]\s*$", "", line)).strip()


def test_stepping_off_shows_a_steady_line_and_a_bar_of_fixed_width(
    home: LivHome,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(runner, "UNLOADED_LIMIT_S", 4.0)  # (2 minutes in a session)
    out = FakeTerminal()
    display = ProgressLine(out, home.protocol().target_g)
    with SessionLog(home.db_path()) as log:
        outcome = run_session(
            protocol=home.protocol(), log=log, device_url=sim("&step_off_at=8"),
            calibrations=home.calibrations(), on_progress=display,
        )  # fmt: skip
    display.finish()
    assert outcome.record.reason.startswith("nobody on the plate"), outcome.record.reason
    lines = shown_lines(out.getvalue())
    words = [_words(line) for line in lines]
    shown = [w for i, w in enumerate(words) if i == 0 or w != words[i - 1]]
    assert len(shown) == len(set(shown)), shown  # no state comes back: no flicker
    assert "Paused - step back onto the plate" in shown, shown
    assert "Step onto" not in out.getvalue()  # the patient already stands (item 4)
    bars = [re.search(r"\[[#█░-]+\]", line) for line in lines]
    spans = {(m.start(), m.end()) for m in bars if m is not None}
    assert len(spans) == 1, spans  # one place and one width, whatever the words
    assert all(len(line) <= 79 for line in lines)


def test_the_check_that_somebody_is_on_the_plate_does_not_tell_them_to_step_on() -> None:
    starting = progress_text("ramping up", 60.0)
    checking = progress_text("checking that somebody is on the plate", 60.0)
    assert starting == "Starting - stay on the plate"
    assert "step onto" not in checking.lower(), checking  # they already stand on it
    assert checking.startswith("Checking that you are on the plate"), checking
    assert "keep standing" in checking.lower(), checking


class InterruptAt:
    """A trace function raising KeyboardInterrupt (SIGINT's default handler, as ``liv run``
    leaves it) before ``line`` of the loop runs, the first time in the hold."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.fired = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._local if frame.f_code is LOOP_CODE else None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        hold = frame.f_locals.get("t", 0.0) >= IN_HOLD_S
        if event == "line" and frame.f_lineno == self.line and hold and not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return self._local


def test_an_interrupt_between_two_history_appends_still_gives_a_result(tmp_path: Path) -> None:
    """Without the runner's deferral (``liv run``): the loop keeps only whole updates."""
    lines, first = inspect.getsourcelines(controller.loop._run_exposure)
    appends = [first + i for i, text in enumerate(lines) if re.match(r"\s+hist_\w+\.append", text)]
    assert len(appends) == 6
    with DeviceClient.open(f"sim://?mass=0&seed=1&device_id={DEVICE_ID}") as dev:
        calibration = identify(dev)
    settings = ExposureSettings(target_g=0.3, hold_s=3.0, schedule=FrequencySchedule.fixed(45.0))
    for line in appends[1:]:  # after the first column's append, before the next one's
        tracer = InterruptAt(line)
        url = f"sim://?mass=70&seed=4&speed=max&device_id={DEVICE_ID}&truth={tmp_path / 't.npz'}"
        previous = sys.gettrace()
        with DeviceClient.open(url) as dev:
            sys.settrace(tracer)
            try:
                result = run_exposure(dev, calibration, settings)
            finally:
                sys.settrace(previous)
        assert tracer.fired, line
        assert result.status is ExposureStatus.STOPPED_BY_USER
        assert len({len(column) for column in result.history.values()}) == 1
        assert result.settling_time_s is not None or result.held_s > 0.0
        truth = Truth.load(tmp_path / "t.npz")
        assert_still_after(truth, truth.zero_drive_s)


def test_a_home_with_nothing_set_up_hears_the_same_from_start_as_from_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A walk-through: `liv status` said no prescription is installed, `liv start` said no plate
    is set up (and to plug it in), for the same empty home."""
    from sessions.cli import main

    root = tmp_path / "home"
    assert main(["status", "--home", str(root)]) != 0
    status_err = capsys.readouterr().err
    assert main(["start", "--home", str(root)]) != 0
    start_err = capsys.readouterr().err
    assert say("setup.no_prescription") in status_err, status_err
    assert say("setup.no_prescription") in start_err, start_err
    assert say("setup.no_plate") not in start_err
