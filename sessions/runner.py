"""Run the session that is due: decide, drive the plate closed loop, log it durably.

The session clock counts only time at dose: in the hold, somebody on the plate, and the
measured amplitude within the protocol's tolerance of the target. Time in which presence
detection cannot tell (loaded and empty too close at this frequency) is counted, so a light
patient is neither sent away nor silently credited: the record's ``presence`` event says how
long it was, and a session with too much of it is flagged "presence not verified".

The row is written when the session starts and checkpointed every CHECKPOINT_S (wall clock
or device time, whichever comes first), so a crash or a kill loses at most those seconds. The
control loop only hands each checkpoint to a writer thread (:class:`_CheckpointWriter`): no
control update waits on SQLite. A checkpoint stores only the envelope points added since the
one before (about 50; docs/log-format.md), so the writer's Python work, which holds the GIL,
stays well under a millisecond however long the session: the control thread never waits long
for it, and the interpreter's switch interval is left as it is (a process-wide setting).
Ctrl-C, SIGTERM, SIGHUP (terminal closed) and a closed output pipe stop the session softly: the
plate ramps down and the session is recorded as stopped, with the true reason. Before the control
loop runs a signal raises :class:`StopRequest` at once (nothing can be torn while connecting);
while it runs a signal is only noted, and the loop stops at its next block boundary (the
``on_update`` callback raises it there), never in the middle of an update or a frame.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from controller.calibration import CalibrationStore
from controller.faults import bring_plate_to_rest
from controller.loop import (
    ControlUpdate,
    ExposureResult,
    ExposureSettings,
    ExposureStatus,
    Phase,
    run_exposure,
)
from controller.presence import LoadState, PresenceSummary
from controller.safety import SafetyLimits
from controller.sensor import (
    SensorCalibration,
    apply_sensor_calibration,
    check_sensor,
    check_tolerance,
)
from firmware_bridge.client import DeviceClient, DeviceIdentity, DeviceInfo
from firmware_bridge.countersign import key_id
from firmware_bridge.dose_limits import DoseLimitError
from firmware_bridge.errors import BridgeError, CommandRefusedError, LivError
from firmware_bridge.protocol import NakReason
from sessions.kinds import PRESENCE_EVENT, counted_kinds, session_kind
from sessions.log import DevicePins, LogError, SessionKind, SessionLog, SessionRecord, Voucher
from sessions.protocol import PatientProtocol
from sessions.scheduling import Decision, decide, history_start
from sessions.stops import (
    NOBODY_PREFIX,
    OUT_OF_TIME_PREFIX,
    STOP_CTRL_C,
    STOP_SIGHUP,
    STOP_SIGTERM,
)
from sessions.wording import outcome_sentence, say

_log = logging.getLogger(__name__)

CHECKPOINT_S = 5.0
# A checkpoint is written by the writer thread, off the control path: it may wait this long
# for a locked database (the next snapshot replaces it meanwhile) and is otherwise retried with
# the next one.
CHECKPOINT_WAIT_S = 2.0
WRITER_JOIN_S = 10.0  # at the end, how long the last checkpoint write may still take
ENVELOPE_EVERY_S = 0.1  # about 10 points a second for plots
PROGRESS_EVERY_S = 0.1  # the patient's display is told this often (plate time), and on changes
UNLOADED_LIMIT_S = 120.0  # nobody on the plate this long ends the session
HOLD_CAP_FACTOR = 3.0  # the hold never exceeds 3x the minutes still due (pauses included)


class SessionRefusedError(LivError):
    """No session may start now; the message says why and when one may."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.message)


class NoCalibrationError(LivError):
    pass


class PlateRangeError(DoseLimitError):
    """The prescription's frequencies lie outside what the plate drives (its HELLO range): the
    patient hears the prescription sentence (a setting this plate does not allow)."""


class SessionRunningError(LivError):
    """A session of this home is running in a living process: a second start would only find
    its plate busy (or unreachable), so it is refused before the plate is touched."""

    def __init__(self, session_ids: list[str]) -> None:
        self.session_ids = session_ids
        super().__init__(
            f"session {session_ids[0]} is still running in another liv process on this computer"
        )


class PlateKeyChangedError(LivError):
    """The plate answers with another key than the one this home paired with."""

    def __init__(self, device_id: str, pinned_key_id: str, key: bytes) -> None:
        self.device_id = device_id
        super().__init__(
            f"This plate ({device_id}) does not prove it is the one this home was paired with "
            f"(its key is {key_id(key)}, paired {pinned_key_id}), so no therapy is started: if "
            "the plate was replaced, pair it with 'liv device set URL --re-pair'."
        )


class StopRequest(KeyboardInterrupt):
    """Stop the session softly, as Ctrl-C does; ``reason`` is what the record says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_SIGNAL_REASONS: dict[int, str] = {
    signal.SIGINT: STOP_CTRL_C,
    signal.SIGTERM: STOP_SIGTERM,
    signal.SIGHUP: STOP_SIGHUP,
}


class SessionStoppedError(LivError):
    """The patient (or a signal) stopped ``liv start`` before the session row was written."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"{reason[0].upper()}{reason[1:]} before the session started; no "
                         "session was recorded.")  # fmt: skip
        self.reason = reason


@dataclass(frozen=True)
class Progress:
    """What the patient sees, once per control update."""

    remaining_s: float
    at_dose_s: float
    measured_g: float | None
    target_g: float
    state: str  # ramping up, at dose, below dose, paused: nobody on the plate, stopping
    elapsed_s: float = 0.0  # device time since the plate started streaming (a simulated clock)


@dataclass(frozen=True)
class SessionOutcome:
    decision: Decision
    record: SessionRecord
    result: ExposureResult | None  # None: stopped before the loop ran
    message: str  # one sentence for the patient


def utc_now() -> datetime:
    return datetime.now(UTC)


SIM_SCHEME = "sim://"


def device_kind(info: DeviceInfo, device_url: str) -> SessionKind:
    """What a session on this device is: simulated if the device or its URL says so.

    A simulator announces itself (HELLO capability SIMULATED), also when served on a pty or TCP
    port; a ``sim://`` URL is the in-process simulator whatever it announces. A device id that
    looks like a real plate's changes nothing. A device that does not announce SIMULATED is
    trusted on that bit only: what binds a record to a real plate is the plate's own key.
    """
    if "SIMULATED" in info.capabilities or device_url.strip().lower().startswith(SIM_SCHEME):
        return SessionKind.SIMULATED
    return SessionKind.THERAPY


# The members the dose clock compares every update with, read once: reading an Enum member off
# its class costs about 70 ns in Python 3.11, five of them a block.
_HOLD, _RAMP_DOWN = Phase.HOLD, Phase.RAMP_DOWN
_LOADED, _UNLOADED, _CANNOT_TELL = LoadState.LOADED, LoadState.UNLOADED, LoadState.CANNOT_TELL


class _DoseClock:
    """Time at dose, pauses, envelope and checkpoints for one session.

    :meth:`update` runs once per control update (50 a second, 30,000 in a 10-minute session at
    a simulated plate's full speed): what it reads of the protocol is read once here.
    """

    def __init__(
        self,
        protocol: PatientProtocol,
        minutes: float,
        checkpoint: Callable[[_DoseClock], None],
        on_progress: Callable[[Progress], None] | None,
        wall: Callable[[], float],
        stops: _Stops | None = None,
    ) -> None:
        self.protocol = protocol
        self.goal_s = minutes * 60.0
        self.at_dose_s = 0.0
        self.unloaded_run_s = 0.0
        self.envelope: list[tuple[float, float]] = []
        self.freqs: set[float] = set()
        self.stopped_unloaded = False
        self.stop_reason: str | None = None  # a StopRequest raised by on_progress
        self._checkpoint = checkpoint
        self._on_progress = on_progress
        self._wall = wall
        self._stops = stops
        self._last_wall = wall()
        self._last_device = 0.0
        self._last_t = 0.0
        self._next_envelope = 0.0
        self._next_progress = 0.0
        self._last_state = ""
        self._last_freq: float | None = None
        self._tol = protocol.dose_tolerance
        self._target = protocol.target_g
        self._delivered = 0.05 * protocol.target_g  # a setpoint above this delivers its freq
        self._done_at = self.goal_s - 1e-9

    @property
    def done(self) -> bool:
        return self.at_dose_s >= self._done_at

    @property
    def last_t_s(self) -> float:
        return self._last_t

    def update(self, u: ControlUpdate) -> bool:
        """Count one control update; True: the session is to end (the loop ramps down).

        The loop calls it once per block, between two updates: a stop noted meanwhile
        (``stops``: a signal) raises its :class:`StopRequest` here, before anything is counted
        (the loop ramps down softly and ends as stopped by the user).
        """
        stops = self._stops
        if stops is not None and stops.reason is not None:
            raise StopRequest(stops.reason)  # what _Stops.check raises
        t_s, phase, load, measured = u.t_s, u.phase, u.load, u.measured_g
        dt = t_s - self._last_t
        if not dt > 0.0:  # max(0.0, dt), as max picks it
            dt = 0.0
        self._last_t = t_s
        target = self._target
        in_band = measured is not None and abs(measured / target - 1.0) <= self._tol
        state = "stopping" if phase is _RAMP_DOWN else "ramping up"
        if phase is _HOLD:
            if load is _UNLOADED:
                state = "paused: nobody on the plate"
                self.unloaded_run_s += dt
            elif load is _CANNOT_TELL:
                # Counted, and the record says for how long (the presence event): the plate
                # cannot tell this patient from an empty plate at this frequency.
                state = "at dose (presence not verified)" if in_band else "below dose"
                if in_band:  # min(goal, at dose + dt), as min picks it
                    total = self.at_dose_s + dt
                    self.at_dose_s = total if total < self.goal_s else self.goal_s
            elif load is not _LOADED:
                # Nobody is known to be on the plate yet (the detector takes its reference
                # early in the hold): that time is not dose.
                state = "checking that somebody is on the plate"
            else:
                self.unloaded_run_s = 0.0
                if in_band:
                    state = "at dose"
                    total = self.at_dose_s + dt
                    self.at_dose_s = total if total < self.goal_s else self.goal_s
                else:
                    state = "below dose"
        # frequencies delivered, not the device's idle default (a fixed frequency is added once)
        freq = u.freq_hz
        if freq != self._last_freq and u.setpoint_g > self._delivered:
            self.freqs.add(round(freq, 1))
            self._last_freq = freq
        if t_s >= self._next_envelope and measured is not None:
            self.envelope.append((round(t_s, 3), round(measured, 5)))
            self._next_envelope = t_s + ENVELOPE_EVERY_S
        now = self._wall()
        if now - self._last_wall >= CHECKPOINT_S or t_s - self._last_device >= CHECKPOINT_S:
            self._checkpoint(self)
            self._last_wall, self._last_device = now, t_s
        if self.unloaded_run_s >= UNLOADED_LIMIT_S:
            self.stopped_unloaded = True
        ending = self.at_dose_s >= self._done_at or self.stopped_unloaded
        # The display is told what a person can follow: every PROGRESS_EVERY_S of plate time,
        # at once when the state changes, and at the end.
        if self._on_progress is not None and (
            t_s >= self._next_progress or state != self._last_state or ending
        ):
            self._next_progress = t_s + PROGRESS_EVERY_S
            self._last_state = state
            try:
                self._on_progress(
                    Progress(
                        max(0.0, self.goal_s - self.at_dose_s), self.at_dose_s, measured,
                        target, state, t_s,
                    )
                )  # fmt: skip
            except StopRequest as exc:  # e.g. the display found its output closed
                self.stop_reason = self.stop_reason or exc.reason
                raise
        return ending


class _Stops:
    """Why the session is being stopped; signals become :class:`StopRequest` with the reason.

    While ``deferred`` (the row is being written at the start, the control loop runs, the record
    is written at the end) a signal is only noted and acted on after: a stop cannot leave a
    session unrecorded, nor interrupt the loop halfway through an update (its history columns
    half appended, a frame half written). The loop acts on it at a block boundary
    (:meth:`check`).
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.deferred = False

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        if not self.deferred:
            raise StopRequest(reason)

    def check(self) -> None:
        """Raise the stop asked for meanwhile, if any (called where nothing can be torn)."""
        if self.reason is not None:
            raise StopRequest(self.reason)

    def note(self, exc: BaseException) -> None:
        """Remember the reason of a KeyboardInterrupt that did not come from a handler here."""
        if self.reason is None:
            self.reason = exc.reason if isinstance(exc, StopRequest) else STOP_CTRL_C


@contextmanager
def _stop_signals(stops: _Stops) -> Iterator[None]:
    """SIGINT, SIGTERM (a shutdown, a service manager) and SIGHUP stop the session softly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stops.stop(_SIGNAL_REASONS.get(signum, STOP_CTRL_C))

    previous = {signum: signal.signal(signum, handler) for signum in _SIGNAL_REASONS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


class _CheckpointWriter:
    """Writes checkpoints on its own thread, so no control update waits on the log.

    The control loop hands over a snapshot (:meth:`submit`: a lock held for a pointer swap);
    the thread writes the newest snapshot and drops older ones it had no time for, so a slow or
    locked database delays the record, never the plate. A snapshot holds the whole envelope so
    far, but the log appends only the points it has not stored yet (one chunk per checkpoint):
    the writer's work per checkpoint does not grow with the session, and a dropped or failed
    snapshot loses nothing the next one does not carry. Failures are counted and kept for the
    record (``log_write_failed``).
    """

    def __init__(self, log: SessionLog, session_id: str) -> None:
        self._log = log
        self._session_id = session_id
        self._cond = threading.Condition()
        self._pending: tuple[dict[str, Any], datetime, float] | None = None
        self._closing = False
        self.written = 0
        self.failures = 0
        self.first_failure: tuple[float, LogError] | None = None
        self.last_failure: LogError | None = None
        self._thread = threading.Thread(target=self._run, name="liv-checkpoint", daemon=True)
        self._thread.start()

    def submit(self, measured: dict[str, Any], now_utc: datetime, t_s: float) -> None:
        with self._cond:
            self._pending = (measured, now_utc, t_s)
            self._cond.notify()

    def close(self) -> None:
        """Stop the thread (a snapshot not yet written is dropped: the final record follows)."""
        with self._cond:
            self._closing = True
            self._pending = None
            self._cond.notify()
        self._thread.join(WRITER_JOIN_S)
        if self._thread.is_alive():
            _log.warning("the checkpoint writer did not finish within %g s", WRITER_JOIN_S)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                assert self._pending is not None
                (measured, now_utc, t_s), self._pending = self._pending, None
            try:
                self._log.checkpoint(
                    self._session_id, **measured, now_utc=now_utc, wait_s=CHECKPOINT_WAIT_S
                )
                self.written += 1
            except LogError as exc:
                # The plate keeps running: the next checkpoint stores every point not stored
                # yet, and the final write reports a log that stays unwritable.
                _log.warning("checkpoint not written (%s); retrying with the next one", exc)
                self.failures += 1
                self.last_failure = exc
                if self.first_failure is None:
                    self.first_failure = (t_s, exc)

    def failure_event(self) -> dict[str, Any] | None:
        """The record's ``log_write_failed`` event, if any checkpoint could not be written."""
        if self.first_failure is None or self.last_failure is None:
            return None
        t_s, first = self.first_failure
        return {
            "reason": "log_write_failed",
            "t_s": t_s,
            "text": "the session log could not be written during the session",
            "detail": f"{self.failures} checkpoint(s) not written; first: {first}",
            "values": {
                "checkpoints_failed": self.failures,
                "checkpoints_written": self.written,
                "first_error": first.reason.value,
                "last_error": self.last_failure.reason.value,
            },
        }


def run_session(
    *,
    protocol: PatientProtocol,
    log: SessionLog,
    device_url: str,
    calibrations: CalibrationStore,
    override_reason: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_decision: Callable[[Decision], None] | None = None,
    now: Callable[[], datetime] = utc_now,
    wall: Callable[[], float] = time.monotonic,
    demo: bool = False,
    pins: DevicePins | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> SessionOutcome:
    """Run the session due now. Raises SessionRefusedError (with the reason) if none is.

    The schedule reads only the sessions that count (therapy; simulated ones too in a demo
    home, ``demo``); the record's kind says whether the plate was a simulator.

    ``on_decision`` hears the decision once the plate is open and has passed its checks (the
    pairing, the calibration, the at-rest sensor check), just before the session row is written:
    a start refused by the plate is never announced as starting.

    A stop (Ctrl-C, SIGTERM, SIGHUP, a closed output pipe) before the session row is written
    raises :class:`SessionStoppedError` naming it; after, the session is recorded as stopped.

    A plate that countersigns (protocol 2.1) is paired at first use through ``pins`` (a
    different key later raises :class:`PlateKeyChangedError` before anything is recorded),
    vouches for records left unvouched before, and for the finished record at the end.
    ``on_notice`` hears what the patient should know about it (a pairing, a record missing);
    ``on_warning`` (default: ``on_notice``) the sentence the patient must read before the
    session: the plate cannot countersign, so the clinic will not be able to check its records.
    """
    stops = _Stops()
    with _stop_signals(stops):
        try:
            return _run_session(
                protocol, log, device_url, calibrations, override_reason, on_progress,
                on_decision, now, wall, stops, demo, pins, on_notice, on_warning,
            )  # fmt: skip
        except KeyboardInterrupt as exc:
            stops.note(exc)
            assert stops.reason is not None
            raise SessionStoppedError(stops.reason) from None


def _run_session(
    protocol: PatientProtocol,
    log: SessionLog,
    device_url: str,
    calibrations: CalibrationStore,
    override_reason: str | None,
    on_progress: Callable[[Progress], None] | None,
    on_decision: Callable[[Decision], None] | None,
    now: Callable[[], datetime],
    wall: Callable[[], float],
    stops: _Stops,
    demo: bool,
    pins: DevicePins | None = None,
    on_notice: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> SessionOutcome:
    log.recover_interrupted(now())
    running = log.live_sessions()  # (a crashed one was just recovered: these are alive)
    if running:
        raise SessionRunningError(running)
    moment = now()  # the decision reads only the window that can change it: no envelope
    counted = counted_kinds(demo)
    history = [
        s
        for s in log.summaries(protocol.patient_id, since=history_start(protocol, moment))
        if session_kind(s) in counted
    ]
    decision = decide(protocol, history, moment, override_reason)
    if not decision.allowed:
        raise SessionRefusedError(decision)
    # Checked before the plate is opened and before the session row is written: settings the
    # controller refuses (a DoseLimitError, one sentence) leave nothing behind.
    settings = ExposureSettings(
        target_g=protocol.target_g,
        hold_s=decision.minutes * 60.0 * HOLD_CAP_FACTOR,
        schedule=protocol.schedule,
        measure_exposure=True,
        # A plate that stays below the protocol's own at-dose band trips cannot_reach_dose,
        # so a shortfall is recorded as the plate's, never left to run out as the patient's.
        limits=SafetyLimits(dose_shortfall_fraction=protocol.dose_tolerance),
    )
    notice = on_notice or (lambda text: _log.info("%s", text))
    with DeviceClient.open(device_url) as device:
        info = device.info
        voucher, no_voucher = PlateVoucher.connect(device, log, pins, notice)
        kind = device_kind(info, device_url)
        if not device.can_countersign and kind is SessionKind.THERAPY:
            # Not a passing failure (those are vouched for at the next connection): no record
            # of this plate will ever be vouched for, so the clinic cannot check it. The patient
            # reads it before the session, which runs and is saved all the same (a simulator's
            # sessions never count: nothing to tell).
            (on_warning or notice)(say("start.cannot_vouch"))
        calibration = calibrations.load(info.device_id)
        if calibration is None:
            raise NoCalibrationError(
                f"the plate {info.device_id} has not been calibrated: ask for "
                "'liv calibrate' to be run with nobody on the plate"
            )
        low, high = protocol.schedule.span_hz
        if not info.min_freq_hz <= low <= high <= info.max_freq_hz:
            # No calibration can help: the plate itself refuses these frequencies (its HELLO).
            raise PlateRangeError(
                f"the plate {info.device_id} drives {info.min_freq_hz:g}-"
                f"{info.max_freq_hz:g} Hz; the prescription asks for {low:g}-{high:g} Hz: it "
                "needs another plate or another prescription"
            )
        cal_low, cal_high = calibration.freqs_hz[0], calibration.freqs_hz[-1]
        if not cal_low <= low <= high <= cal_high:
            raise NoCalibrationError(
                f"the calibration of the plate {info.device_id} does not cover this protocol "
                f"({cal_low:g}-{cal_high:g} Hz calibrated, {low:g}-{high:g} Hz prescribed): ask "
                "for 'liv calibrate' to be run with nobody on the plate"
            )
        # A fault latched by an earlier session (a host killed or frozen) is cleared here if
        # the host may (docs/safety.md); otherwise PlateFaultLatchedError refuses before any
        # row is written: no therapy ran, so nothing is recorded as if it had.
        # A plate still running an earlier host's drive (that host died, and this one came
        # before the plate's watchdog fired) is brought softly to rest first: this host's
        # frames feed the watchdog, and the sensor check needs the plate at rest.
        left_running, cleared = bring_plate_to_rest(device)
        if left_running is not None:
            _log.warning("stopped a plate left running (drive %.4f)", left_running.drive)
        if cleared is not None:
            _log.warning("cleared latched fault %s (plate at rest)", cleared.name)
        before = [e.to_event() for e in (left_running, cleared) if e is not None]
        # The accelerometer must read gravity at rest, corrected by the device's sensor
        # calibration, before anything is recorded: SensorCheckError refuses with one sentence
        # and leaves no row (docs/sensor.md). Every reading after is corrected the same way.
        sensor = calibrations.load_sensor(info.device_id) or SensorCalibration.nominal(
            info.device_id, info.counts_per_g
        )
        check_sensor(device, sensor, check_tolerance(protocol.dose_tolerance))
        apply_sensor_calibration(device, sensor)
        # Only now is the patient told to step on: the plate is open, paired, calibrated and
        # its sensor passed its at-rest check (somebody stepping on during it could fail it).
        if on_decision is not None:
            on_decision(decision)
        started = now()
        stops.deferred = True  # a stop while the row is written takes effect right after it
        session_id = log.start_session(
            patient_id=protocol.patient_id,
            device_id=info.device_id,
            firmware_version=info.firmware_version,
            protocol_sha256=protocol.sha256,
            protocol_json=protocol.canonical_json(),
            started_utc=started,
            timezone=protocol.timezone,
            local_date=decision.local_date,
            slot=decision.slot,
            minutes_prescribed=decision.minutes,
            target_g=protocol.target_g,
            override_reason=decision.override_reason,
            resumed_from=decision.resumed_from,
            kind=kind,
        )
        # From here on the row exists: every way out records the session. A signal stays
        # noted only (deferred) to the record: the loop acts on it at a block boundary.
        writer = _CheckpointWriter(log, session_id)
        result: ExposureResult | None = None
        clock = _DoseClock(
            protocol,
            decision.minutes,
            lambda c: writer.submit(_measured(c, None, before), now(), c.last_t_s),
            on_progress,
            wall,
            stops,  # a stop noted meanwhile stops the loop at the next update (a block boundary)
        )

        try:
            stops.check()
            result = run_exposure(device, calibration, settings, on_update=clock.update)
        except KeyboardInterrupt as exc:
            # Before the loop ran: the client's close switches the output off (the firmware
            # ramps it to zero).
            stops.note(exc)
        finally:
            stops.deferred = True
            writer.close()
            # The record is written and countersigned with the plate still connected: make sure
            # it is stopping first (a stop before the loop ran leaves the output to this).
            with contextlib.suppress(BridgeError):
                device.stop_output(wait=False)
        if clock.stop_reason is not None:
            stops.note(StopRequest(clock.stop_reason))
        if result is not None and result.status is ExposureStatus.STOPPED_BY_USER:
            stops.note(KeyboardInterrupt())
        status, reason = _status(result, clock, stops.reason)
        measured = _measured(clock, result, before, writer.failure_event())
        record = log.finish_session(
            session_id, status=status, reason=reason, ended_utc=now(), **measured
        )
        # The record is stored first (never lost); the plate vouches for it after, off the
        # control path. A link lost here leaves it noted as unvouched, for the next connection.
        if voucher is not None:
            voucher.vouch(record.session_id, str(record.record_hash))
        else:
            _note_no_countersign(log, record.session_id, no_voucher)
    trip = result.trip.reason.value if result is not None and result.trip is not None else None
    return SessionOutcome(decision, record, result, _sentence(status, reason, clock, trip))


def _note_no_countersign(log: SessionLog, session_id: str, why: str) -> None:
    try:
        log.note_unvouched(session_id, why)
    except LogError as exc:
        _log.warning("could not note why session %s is not vouched for: %s", session_id, exc)


class PlateVoucher:
    """Has a connected plate vouch for finished records (protocol 2.1; docs/trust.md, "The
    session record").

    Each record's ``record_hash`` is countersigned as the plate's next counter. The counter the
    host expects is the log's last for this plate + 1; a plate ahead of that means records
    missing from this log, which is said and left visible (a gap in the counters).
    """

    def __init__(
        self,
        device: DeviceClient,
        log: SessionLog,
        identity: DeviceIdentity,
        notice: Callable[[str], None],
    ) -> None:
        self.device = device
        self.log = log
        self.identity = identity
        self.notice = notice
        self.plate_counter = identity.counter
        self.broken: str | None = None  # why no more records can be vouched for here

    @classmethod
    def connect(
        cls,
        device: DeviceClient,
        log: SessionLog,
        pins: DevicePins | None,
        notice: Callable[[str], None],
    ) -> tuple[PlateVoucher | None, str]:
        """Pair (or check the pairing of) the plate and vouch for records left unvouched.

        (None, why) for a plate that does not or cannot countersign now: therapy goes on, its
        record is noted as not vouched for. Raises PlateKeyChangedError for a plate whose key
        is not the pinned one.
        """
        if not device.can_countersign:
            return None, (
                f"the plate does not countersign records (protocol {device.info.protocol_version}"
                ", no COUNTERSIGN capability)"
            )
        try:
            identity = device.identity()
        except BridgeError as exc:
            _log.warning("the plate did not tell its identity: %s", exc)
            return None, f"the plate did not tell its identity ({exc})"
        device_id = identity.device_id
        if pins is not None:
            pin = pins.get(device_id)
            if pin is None:
                held = log.first_voucher_counter(identity.public_key)
                first = held if held is not None else identity.counter + 1
                pin = pins.pin(device_id, identity.public_key, first)
                _log.warning("paired this home with plate %s (key %s)", device_id, pin.key_id)
                notice(say("start.paired"))
            elif pin.device_key != identity.public_key.hex():
                raise PlateKeyChangedError(device_id, pin.key_id, identity.public_key)
        voucher = cls(device, log, identity, notice)
        for session_id, digest in log.awaiting_vouchers(device_id):
            if not voucher.vouch(session_id, digest):
                break
        return voucher, ""

    def vouch(self, session_id: str, record_hash: str) -> bool:
        """Have the plate countersign one finished record; False (and a note) if it could not."""
        if self.broken is not None:
            self._note(session_id, self.broken)
            return False
        key = self.identity.public_key
        last = self.log.last_voucher(key)
        expected = (last[0] if last is not None else self.plate_counter) + 1
        digest = bytes.fromhex(record_hash)
        try:
            try:
                signed = self.device.countersign(digest, expected, key)
            except CommandRefusedError as exc:
                if exc.reason_code != NakReason.COUNTER_MISMATCH:
                    raise
                plate = self.device.identity()
                if plate.counter < expected - 1:
                    self.broken = (
                        f"the plate's counter ({plate.counter}) is behind this log's "
                        f"({expected - 1}): the log holds records the plate never vouched for"
                    )
                    self.notice(f"Your session log does not match the plate: {self.broken}.")
                    self._note(session_id, self.broken)
                    return False
                self.notice(
                    f"The plate has vouched for records {expected}-{plate.counter} that this "
                    "session log does not hold; 'liv verify' will show them missing."
                )
                signed = self.device.countersign(digest, plate.counter + 1, key)
        except BridgeError as exc:
            _log.warning("session %s not countersigned: %s", session_id, exc)
            self._note(session_id, f"the plate could not countersign it ({exc})")
            return False
        self.plate_counter = signed.counter
        voucher = Voucher(
            key.hex(),
            signed.counter,
            signed.prev_head.hex(),
            signed.new_head.hex(),
            signed.signature.hex(),
        )
        try:
            self.log.add_voucher(session_id, voucher)
        except LogError as exc:
            _log.warning("countersignature of session %s not stored: %s", session_id, exc)
            self._note(session_id, f"its countersignature could not be stored ({exc})")
            return False
        return True

    def _note(self, session_id: str, reason: str) -> None:
        try:
            self.log.note_unvouched(session_id, reason)
        except LogError as exc:
            _log.warning("could not note why session %s is not vouched for: %s", session_id, exc)


def _trip_event(trip: dict[str, Any]) -> dict[str, Any]:
    """A trip or plate fault (its ``to_dict``) as the record's event: its reason, time, detail
    and values, then the text."""
    return {k: trip[k] for k in ("reason", "t_s", "detail", "values")} | {"text": trip["text"]}


def _measured(
    clock: _DoseClock,
    result: ExposureResult | None,
    before: list[dict[str, Any]],
    log_failure: dict[str, Any] | None = None,
) -> dict[str, Any]:
    events = list(before)  # what the host did to the plate before the session
    if log_failure is not None:
        events.append(log_failure)
    if result is not None and result.trip is not None:
        events.append(_trip_event(result.trip.to_dict()))
    stop_fault = result.stop_fault if result is not None else None
    ended_by = result.trip if result is not None else None
    if stop_fault is not None and ended_by is not None and ended_by.detail == stop_fault.detail:
        stop_fault = None  # the fault that ended the exposure, met again
    if stop_fault is not None:
        # the plate's own fault met while the host brought it down: the record says so too
        events.append(_trip_event(stop_fault.to_dict()))
    if result is not None and result.presence is not None:
        events.append(_presence_event(result.presence, clock.last_t_s))
    return {
        "minutes_at_dose": clock.at_dose_s / 60.0,
        "envelope": list(clock.envelope),
        "freqs_hz": sorted(clock.freqs),
        "safety_events": events,
        "mean_error_pct": result.error_mean_pct if result else None,
        "p95_abs_error_pct": result.error_p95_abs_pct if result else None,
        "error_uncertainty_pct": result.error_uncertainty_pct if result else None,
        "exposure": result.exposure.to_dict() if result and result.exposure else None,
    }


def _figure(value: float | None) -> str:
    """A response ratio as a person reads it: three decimals, '-' when unknown."""
    return "-" if value is None else f"{value:.3f}"


def _presence_event(presence: PresenceSummary, t_s: float) -> dict[str, Any]:
    """The record's ``presence`` event: what presence detection could and could not see."""
    values = {k: v for k, v in presence.to_dict().items() if v is not None}
    if presence.verified:
        text = "presence was judged throughout the hold"
    else:
        text = (
            f"presence not verified: the plate could not tell for "
            f"{presence.undetectable_s:.0f} s of the hold whether somebody was on it"
        )
    return {
        "reason": PRESENCE_EVENT,
        "t_s": t_s,
        "text": text,
        "detail": (
            f"absent {presence.absent_s:.1f} s ({presence.absences} step-offs), cannot tell "
            f"{presence.undetectable_s:.1f} s, reference {_figure(presence.reference)}, "
            f"smallest gap {_figure(presence.smallest_gap)}"
        ),
        "values": values,
    }


def _status(
    result: ExposureResult | None, clock: _DoseClock, stop_reason: str | None
) -> tuple[str, str]:
    if result is None:
        return "stopped_by_patient", stop_reason or STOP_CTRL_C
    # A trip or a stop ends the session as such unless the dose was already delivered: the
    # loop asks for the ramp-down the update the dose clock is done, so a trip or stop after
    # that (a computer that stalled past the plate's watchdog, Ctrl-C while the plate comes
    # down) only ended the ramp-down. The session is complete; the reason says how it ended.
    ended_by: str | None = None
    if result.status is ExposureStatus.TRIPPED and result.trip is not None:
        ended_by = f"{result.trip.text}: {result.trip.detail}"
        if not clock.done:
            return "tripped", ended_by
    elif result.status is ExposureStatus.STOPPED_BY_USER:
        ended_by = stop_reason or STOP_CTRL_C
        if not clock.done:
            return "stopped_by_patient", ended_by
    if clock.stopped_unloaded:
        return "stopped_by_patient", f"{NOBODY_PREFIX} for {UNLOADED_LIMIT_S / 60:.0f} minutes"
    if clock.done:
        reason = "prescribed minutes at dose delivered"
        presence = result.presence
        if presence is not None and not presence.verified:
            reason += f"; presence not verified for {presence.undetectable_s:.0f} s"
        if ended_by is not None:
            reason += f"; the ramp-down was ended by a stop ({ended_by})"
        return "completed", reason
    return "stopped_by_patient", f"{OUT_OF_TIME_PREFIX} before the dose was delivered"


def _sentence(status: str, reason: str, clock: _DoseClock, trip: str | None = None) -> str:
    """The patient's sentence (sessions/wording.py); the record keeps ``reason`` in full."""
    return outcome_sentence(status, reason, clock.at_dose_s / 60.0, trip)
