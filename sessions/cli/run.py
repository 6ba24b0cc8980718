"""``liv run``: one closed-loop exposure for engineers, logged as engineering, never therapy."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from firmware_bridge.dose_limits import DOSE_LIMITS
from sessions.cli.calibrate import check_sensor_for_run
from sessions.cli.engineering import (
    EngineeringRun,
    EngineerProgress,
    calibration_store,
    clock,
    emit,
)
from sessions.cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, UsageError, require_engineer
from sessions.text import echo, terminal_line


def cmd_run(args: argparse.Namespace) -> int:
    from controller.faults import bring_plate_to_rest
    from controller.loop import ControlUpdate, ExposureSettings, ExposureStatus, run_exposure
    from controller.safety import SafetyLimits
    from controller.schedule import FrequencySchedule, ScheduleError, parse_schedule
    from firmware_bridge.client import DeviceClient

    require_engineer(args)
    try:
        band = (DOSE_LIMITS.frequency_hz.low, DOSE_LIMITS.frequency_hz.high)
        schedule = (
            FrequencySchedule.fixed(args.freq, band)
            if args.freq
            else parse_schedule(args.schedule, band)
        )
        settings = ExposureSettings(
            target_g=args.amplitude, hold_s=args.seconds, schedule=schedule,
            limits=SafetyLimits(),
        )  # fmt: skip
    except (ScheduleError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    store = calibration_store(args)
    with DeviceClient.open(args.device) as device:
        cal = store.load(device.info.device_id)
        if cal is None:
            raise UsageError(
                f"no calibration for {terminal_line(device.info.device_id)} in "
                f"{store.directory}: run "
                f"'liv calibrate --engineer --device {args.device}' with nobody on the plate first"
            )
        if cal.stale:
            echo(
                f"liv: warning: the calibration of {terminal_line(cal.device_id)} no longer "
                f"matches the plate ({terminal_line('; '.join(cal.notes[-1:]))}); run "
                "'liv calibrate' with nobody on the plate",
                file=sys.stderr,
            )
        # a host died mid-run; refuses a fault that needs a person
        left_running, cleared = bring_plate_to_rest(device)
        check_sensor_for_run(store, device)
        spec = {"target_g": args.amplitude, "seconds": args.seconds,
                "schedule": schedule.describe()}  # fmt: skip
        with EngineeringRun(
            args, "liv run", device.info, args.amplitude, args.seconds, spec
        ) as run:
            next_point = [0.0]
            progress = EngineerProgress()
            total_s = settings.total_s

            def envelope(u: ControlUpdate) -> None:
                if u.measured_g is not None and u.t_s >= next_point[0]:
                    run.envelope.append((round(u.t_s, 3), round(u.measured_g, 5)))
                    next_point[0] = u.t_s + 0.1
                if not progress.due(u.t_s):
                    return  # not shown: no line to compose (this runs once per block)
                measured = "measuring" if u.measured_g is None else f"measured {u.measured_g:.3f} g"
                progress.show(
                    u.t_s,
                    [f"run {clock(u.t_s, up=False)} of {clock(total_s)}",
                     f"{clock(total_s - u.t_s)} left",
                     f"{measured}, target {args.amplitude:.3f} g",
                     f"{u.freq_hz:.1f} Hz, {u.phase.value}"],
                    u.t_s / total_s,
                    last=False,
                )  # fmt: skip

            try:
                result = run_exposure(device, cal, settings, on_update=envelope)
            finally:
                progress.finish()
            run.freqs_hz = _schedule_freqs(schedule)
            run.errors = (result.error_mean_pct, result.error_p95_abs_pct)
            run.status, run.reason = _run_outcome(result)
            if result.trip is not None:
                trip = result.trip.to_dict()
                run.events = [
                    {k: trip[k] for k in ("reason", "t_s", "detail", "values")}
                    | {"text": trip["text"]}
                ]
    if result.calibration_stale:
        store.mark_stale(cal, f"response {result.response_ratio:.2f}x calibration in a run")
    data = result.to_dict()
    fmt = "n/a" if result.settling_time_s is None else f"{result.settling_time_s:.2f} s"
    lines = [
        f"device            {result.device_id}",
        f"target            {result.target_g:g} g at {result.schedule}",
        f"outcome           {result.status.value}",
        f"held              {result.held_s:.1f} of {result.hold_s_requested:g} s",
        f"settled           {fmt} after the ramp (estimate within +/-2%)",
    ]
    if result.error_p95_abs_pct is not None:
        lines.append(
            f"amplitude error   mean {result.error_mean_pct:+.2f}%, p95 |error| "
            f"{result.error_p95_abs_pct:.2f}% (1-s windows, controller's estimate)"
        )
    lines.append(
        f"plate response    {result.response_ratio:.2f}x the calibrated empty plate"
        + (f"; nobody on the plate for {result.unloaded_s:.1f} s" if result.unloaded_s else "")
    )
    lines.append(
        f"host compute      median {result.compute_median_us:.0f} us, p99 "
        f"{result.compute_p99_us:.0f} us per update"
    )
    lines.append(
        f"link              {result.frames} frames, {result.crc_errors} CRC errors, "
        f"{result.lost_frames} lost frames"
    )
    if left_running is not None:
        lines.append(
            f"stopped plate     left running by an earlier host (drive {left_running.drive:.4f})"
        )
        data["plate_left_running"] = left_running.to_event()
    if cleared is not None:
        lines.append(f"cleared fault     {cleared.name} latched before the run (plate at rest)")
        data["fault_cleared"] = cleared.to_event()
    if result.trip is not None:
        lines.append(f"SAFETY STOP       {result.trip.text}: {result.trip.detail}")
    emit(data, args.json, lines)
    if result.status is ExposureStatus.STOPPED_BY_USER:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if result.status is ExposureStatus.TRIPPED else 0


def _run_outcome(result: Any) -> tuple[str, str]:
    """The record's status and reason for a ``liv run``: its true end."""
    from controller.loop import ExposureStatus

    held = f"held {result.held_s:.1f} of {result.hold_s_requested:g} s at {result.target_g:g} g"
    if result.status is ExposureStatus.TRIPPED and result.trip is not None:
        return "tripped", f"{result.trip.text}: {result.trip.detail}; {held}"
    if result.status is ExposureStatus.STOPPED_BY_USER:
        return "stopped_by_patient", f"Ctrl-C: stopped by the engineer; {held}"
    return "completed", held


def _schedule_freqs(schedule: Any) -> list[float]:
    """The frequencies a schedule visits (its span's ends and its steps, as far as it says)."""
    low, high = schedule.span_hz
    return sorted({round(float(low), 1), round(float(high), 1)})
