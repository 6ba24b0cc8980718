"""Run the session that is due: decide, drive the plate closed loop, log it durably.

The session clock counts only time at dose: in the hold, somebody on the plate, and the
measured amplitude within the protocol's tolerance of the target. The row is written when the
session starts and checkpointed every CHECKPOINT_S (wall clock or device time, whichever comes
first), so a crash or a kill loses at most those seconds; Ctrl-C and SIGTERM ramp the plate
down and record the session as stopped by the patient.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from controller.calibration import CalibrationStore
from controller.faults import ClearedFault, clear_latched_fault
from controller.loop import (
    ControlUpdate,
    ExposureResult,
    ExposureSettings,
    ExposureStatus,
    LoadState,
    Phase,
    run_exposure,
)
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import LivError
from sessions.log import LogError, SessionLog, SessionRecord
from sessions.protocol import PatientProtocol
from sessions.scheduling import Decision, decide

_log = logging.getLogger(__name__)

CHECKPOINT_S = 5.0
# A checkpoint runs inside the control loop: it may wait this long for a locked database, a
# fraction of the plate's 0.5 s watchdog, and is otherwise retried at the next checkpoint.
CHECKPOINT_WAIT_S = 0.1
ENVELOPE_EVERY_S = 0.1  # about 10 points a second for plots
UNLOADED_LIMIT_S = 120.0  # nobody on the plate this long ends the session
HOLD_CAP_FACTOR = 3.0  # the hold never exceeds 3x the minutes still due (pauses included)


class SessionRefusedError(LivError):
    """No session may start now; the message says why and when one may."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        super().__init__(decision.message)


class NoCalibrationError(LivError):
    pass


@dataclass(frozen=True)
class Progress:
    """What the patient sees, once per control update."""

    remaining_s: float
    at_dose_s: float
    measured_g: float | None
    target_g: float
    state: str  # ramping up, at dose, below dose, paused: nobody on the plate, stopping


@dataclass(frozen=True)
class SessionOutcome:
    decision: Decision
    record: SessionRecord
    result: ExposureResult
    message: str  # one sentence for the patient


def utc_now() -> datetime:
    return datetime.now(UTC)


class _DoseClock:
    """Time at dose, pauses, envelope and checkpoints for one session."""

    def __init__(
        self,
        protocol: PatientProtocol,
        minutes: float,
        checkpoint: Callable[[_DoseClock], None],
        on_progress: Callable[[Progress], None] | None,
        wall: Callable[[], float],
    ) -> None:
        self.protocol = protocol
        self.goal_s = minutes * 60.0
        self.at_dose_s = 0.0
        self.unloaded_run_s = 0.0
        self.envelope: list[tuple[float, float]] = []
        self.freqs: set[float] = set()
        self.stopped_unloaded = False
        self._checkpoint = checkpoint
        self._on_progress = on_progress
        self._wall = wall
        self._last_wall = wall()
        self._last_device = 0.0
        self._last_t = 0.0
        self._next_envelope = 0.0

    @property
    def done(self) -> bool:
        return self.at_dose_s >= self.goal_s - 1e-9

    def update(self, u: ControlUpdate) -> bool:
        dt = max(0.0, u.t_s - self._last_t)
        self._last_t = u.t_s
        tol = self.protocol.dose_tolerance
        target = self.protocol.target_g
        unloaded = u.load is LoadState.UNLOADED
        in_band = u.measured_g is not None and abs(u.measured_g / target - 1.0) <= tol
        state = "stopping" if u.phase is Phase.RAMP_DOWN else "ramping up"
        if u.phase is Phase.HOLD:
            if unloaded:
                state = "paused: nobody on the plate"
                self.unloaded_run_s += dt
            else:
                self.unloaded_run_s = 0.0
                state = "at dose" if in_band else "below dose"
                if in_band:
                    self.at_dose_s = min(self.goal_s, self.at_dose_s + dt)
        if u.setpoint_g > 0.05 * target:  # frequencies delivered, not the device's idle default
            self.freqs.add(round(u.freq_hz, 1))
        if u.t_s >= self._next_envelope and u.measured_g is not None:
            self.envelope.append((round(u.t_s, 3), round(u.measured_g, 5)))
            self._next_envelope = u.t_s + ENVELOPE_EVERY_S
        now = self._wall()
        if now - self._last_wall >= CHECKPOINT_S or u.t_s - self._last_device >= CHECKPOINT_S:
            self._checkpoint(self)
            self._last_wall, self._last_device = now, u.t_s
        if self._on_progress is not None:
            self._on_progress(
                Progress(
                    max(0.0, self.goal_s - self.at_dose_s), self.at_dose_s, u.measured_g,
                    target, state,
                )
            )  # fmt: skip
        if self.unloaded_run_s >= UNLOADED_LIMIT_S:
            self.stopped_unloaded = True
        return self.done or self.stopped_unloaded


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a shutdown, a service manager) stops the session as Ctrl-C does."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
) -> SessionOutcome:
    """Run the session due now. Raises SessionRefusedError (with the reason) if none is."""
    log.recover_interrupted(now())
    history = log.sessions(patient_id=protocol.patient_id)
    decision = decide(protocol, history, now(), override_reason)
    if not decision.allowed:
        raise SessionRefusedError(decision)
    if on_decision is not None:
        on_decision(decision)
    with DeviceClient.open(device_url) as device:
        info = device.info
        calibration = calibrations.load(info.device_id)
        if calibration is None:
            raise NoCalibrationError(
                f"the plate {info.device_id} has not been calibrated: ask for "
                "'liv calibrate' to be run with nobody on the plate"
            )
        low, high = protocol.schedule.span_hz
        calibration.gain_at(low)  # refuses a protocol outside the calibrated range
        calibration.gain_at(high)
        # A fault latched by an earlier session (a host killed or frozen) is cleared here if
        # the host may (docs/safety.md); otherwise PlateFaultLatchedError refuses before any
        # row is written: no therapy ran, so nothing is recorded as if it had.
        cleared = clear_latched_fault(device)
        if cleared is not None:
            _log.warning("cleared latched fault %s (plate at rest)", cleared.name)
        started = now()
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
        )

        def checkpoint(clock: _DoseClock) -> None:
            try:
                log.checkpoint(
                    session_id,
                    **_measured(clock, None, cleared),
                    now_utc=now(),
                    wait_s=CHECKPOINT_WAIT_S,
                )
            except LogError as exc:
                # The plate keeps running: the next checkpoint rewrites everything, and the
                # final write reports a log that stays unwritable.
                _log.warning("checkpoint not written (%s); retrying at the next one", exc)

        clock = _DoseClock(protocol, decision.minutes, checkpoint, on_progress, wall)
        settings = ExposureSettings(
            target_g=protocol.target_g,
            hold_s=decision.minutes * 60.0 * HOLD_CAP_FACTOR,
            schedule=protocol.schedule,
            measure_exposure=True,
        )
        with _sigterm_as_interrupt():
            result = run_exposure(device, calibration, settings, on_update=clock.update)
    status, reason = _status(result, clock)
    measured = _measured(clock, result, cleared)
    record = log.finish_session(
        session_id, status=status, reason=reason, ended_utc=now(), **measured
    )
    return SessionOutcome(decision, record, result, _sentence(status, reason, clock))


def _measured(
    clock: _DoseClock, result: ExposureResult | None, cleared: ClearedFault | None
) -> dict[str, Any]:
    events: list[dict[str, Any]] = [] if cleared is None else [cleared.to_event()]
    if result is not None and result.trip is not None:
        trip = result.trip.to_dict()
        events.append(
            {k: trip[k] for k in ("reason", "t_s", "detail", "values")} | {"text": trip["text"]}
        )
    return {
        "minutes_at_dose": clock.at_dose_s / 60.0,
        "envelope": list(clock.envelope),
        "freqs_hz": sorted(clock.freqs),
        "safety_events": events,
        "mean_error_pct": result.error_mean_pct if result else None,
        "p95_abs_error_pct": result.error_p95_abs_pct if result else None,
        "exposure": result.exposure.to_dict() if result and result.exposure else None,
    }


def _status(result: ExposureResult, clock: _DoseClock) -> tuple[str, str]:
    if result.status is ExposureStatus.TRIPPED and result.trip is not None:
        return "tripped", f"{result.trip.text}: {result.trip.detail}"
    if result.status is ExposureStatus.STOPPED_BY_USER:
        return "stopped_by_patient", "stopped by the patient (Ctrl-C or a stop signal)"
    if clock.stopped_unloaded:
        return "stopped_by_patient", (
            f"nobody on the plate for {UNLOADED_LIMIT_S / 60:.0f} minutes"
        )
    if clock.done:
        return "completed", "prescribed minutes at dose delivered"
    return "stopped_by_patient", "the session ran out of time before the dose was delivered"


def _sentence(status: str, reason: str, clock: _DoseClock) -> str:
    minutes = clock.at_dose_s / 60.0
    if status == "completed":
        return f"Session complete: {minutes:.1f} minutes at dose. Well done."
    if status == "tripped":
        return (
            f"The plate stopped itself for safety ({reason}); {minutes:.1f} minutes at dose were "
            "recorded. You may try again; if it happens again, contact your clinic."
        )
    return f"Session stopped ({reason}); {minutes:.1f} minutes at dose were recorded."
