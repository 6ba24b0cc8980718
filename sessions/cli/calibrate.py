"""``liv calibrate``: the empty plate's response, or the accelerometer's sensitivity and offset."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from controller.sensor_limits import (
    SOURCE_BENCH,
    SOURCE_NOMINAL,
)
from firmware_bridge.errors import LivError
from sessions.cli.engineering import (
    EngineeringRun,
    EngineerProgress,
    calibration_lines,
    calibration_store,
    clock,
    emit,
)
from sessions.cli.errors import UsageError, require_engineer
from sessions.text import echo, terminal_line

if TYPE_CHECKING:
    from controller.calibration import Calibration, CalibrationStore, LoadCheck
    from firmware_bridge.client import DeviceClient, DeviceInfo


def cmd_calibrate(args: argparse.Namespace) -> int:
    from controller.calibration import MEASURE_S, SETTLE_S, check_for_load, identify
    from controller.sensor import apply_sensor_calibration
    from firmware_bridge.client import DeviceClient

    require_engineer(args)
    bench = args.sensitivity is not None or args.offset_g is not None
    if bench and not args.sensor:
        raise UsageError("--sensitivity and --offset-g are only allowed with --sensor")
    store = calibration_store(args)
    with DeviceClient.open(args.device) as device:
        if args.sensor:  # the plate stays at rest: nothing moves, nothing to record
            return _calibrate_sensor(args, store, device, bench)
        sensor = store.load_sensor(device.info.device_id)
        if sensor is not None:  # the empty plate's gains in true g, as sessions will read them
            apply_sensor_calibration(device, sensor)
        earlier = _earlier_calibration(store, device.info.device_id)
        freqs_hz = _cal_freqs(device.info)  # the band inside the plate's HELLO range
        with EngineeringRun(
            args, "liv calibrate", device.info, _calibration_peak_g(device.info),
            _calibration_s(freqs_hz), {"freqs_hz": list(freqs_hz), "drive": _cal_drive()},
        ) as run:  # fmt: skip
            progress = EngineerProgress()
            step_s = MEASURE_S + SETTLE_S

            def step(k: int, n: int, freq_hz: float) -> None:
                progress.show(
                    (k - 1) * step_s,
                    [f"calibrating: frequency {k} of {n}", f"{freq_hz:g} Hz",
                     f"{clock((n - k + 1) * step_s)} left"],
                    (k - 1) / n,
                    last=k == n,
                )  # fmt: skip

            try:
                cal = identify(device, freqs_hz, on_step=step)
            finally:
                progress.finish()
            run.freqs_hz = list(cal.freqs_hz)
            run.reason = (
                f"calibrated {cal.freqs_hz[0]:g}-{cal.freqs_hz[-1]:g} Hz at drive {cal.drive:g}; "
                f"highest response {max(cal.g_per_drive) * cal.drive:.3f} g"
            )
    load = check_for_load(cal, earlier)
    where = store.save(cal)
    data = {"path": str(where), **cal.to_dict(), "load_check": load.to_dict()}
    emit(data, args.json, calibration_lines(cal, where))
    _warn_about_load(load)
    return 0


def _earlier_calibration(store: CalibrationStore, device_id: str) -> Calibration | None:
    """The plate's stored calibration, the reference a load is judged against (None: none)."""
    from controller.calibration import CalibrationError

    try:
        return store.load(device_id)
    except CalibrationError:  # a damaged file is replaced by this calibration
        return None


def _warn_about_load(load: LoadCheck) -> None:
    """One sentence on stderr when something seemed to be on the plate, or when it cannot tell."""
    if load.loaded:
        echo(
            f"liv: warning: something seems to be on the plate: it responded "
            f"{100 * (1 - (load.low_ratio or 0)):.0f}% less than at its calibration of "
            f"{load.reference_utc} at the low end of the band (a load lowers it most there); "
            "take everything off the plate and run 'liv calibrate' again",
            file=sys.stderr,
        )
    elif load.verdict == "cannot_tell":
        echo(
            "liv: note: this plate has no earlier calibration to compare with, so a load on it "
            "cannot be detected: make sure nobody and nothing is on the plate",
            file=sys.stderr,
        )


def _cal_freqs(info: DeviceInfo) -> tuple[float, ...]:
    from controller.calibration import calibration_freqs

    return calibration_freqs(info)


def _cal_drive() -> float:
    from controller.calibration import IDENT_DRIVE

    return float(IDENT_DRIVE)


def _calibration_peak_g(info: DeviceInfo) -> float:
    """The target an engineering record gives a calibration: the plate's own ceiling (the
    sweep's drive is fixed; its g is what the calibration measures)."""
    return float(info.ceiling_g)


def _calibration_s(freqs_hz: tuple[float, ...]) -> float:
    """How long the sweep holds the drive (the record's planned duration)."""
    from controller.calibration import MEASURE_S, SETTLE_S

    return len(freqs_hz) * (SETTLE_S + MEASURE_S)


def _calibrate_sensor(
    args: argparse.Namespace, store: CalibrationStore, device: DeviceClient, bench: bool
) -> int:
    """``liv calibrate --sensor``: store the bench values with the resting reading measured now."""
    from controller.sensor import SensorCheckError, record_sensor

    try:
        record = record_sensor(
            device,
            sensitivity=1.0 if args.sensitivity is None else args.sensitivity,
            offset_g=0.0 if args.offset_g is None else args.offset_g,
            source=SOURCE_BENCH if bench else SOURCE_NOMINAL,
        )
    except SensorCheckError as exc:
        raise LivError(
            f"sensor calibration not saved: {exc.detail}; check that the plate is level, at "
            "rest and empty, and that the values are this part's"
        ) from None
    where = store.save_sensor(record)
    lines = [
        f"sensor calibration of {terminal_line(record.device_id)} saved to {where}",
        f"  sensitivity     {record.sensitivity:.4f} ({record.source})",
        f"  offset          {record.offset_g:+.4f} g",
        f"  resting reading {record.resting_g:.4f} g uncorrected, "
        f"{record.correct(record.resting_g or 0.0):.4f} g corrected",
    ]
    emit({"path": str(where), **record.to_dict()}, args.json, lines)
    return 0


def check_sensor_for_run(store: CalibrationStore, device: DeviceClient) -> None:
    """The pre-session sensor check for ``liv run``; the engineer sees the numbers."""
    from controller.sensor import (
        SensorCalibration,
        SensorCheckError,
        apply_sensor_calibration,
        check_sensor,
        check_tolerance,
    )

    info = device.info
    sensor = store.load_sensor(info.device_id) or SensorCalibration.nominal(
        info.device_id, info.counts_per_g
    )
    try:
        check_sensor(device, sensor, check_tolerance(None))
    except SensorCheckError as exc:
        raise LivError(
            f"{exc.detail}; nothing was run: check the plate is level and at rest, and its "
            "sensor calibration ('liv calibrate --sensor')"
        ) from None
    apply_sensor_calibration(device, sensor)
