"""``liv device info|drive`` and ``liv sim serve``: a plate reached directly; the simulated one."""

from __future__ import annotations

import argparse
import math
import signal
from typing import TYPE_CHECKING

from firmware_bridge.dose_limits import DOSE_LIMITS
from sessions.cli.engineering import EngineeringRun as _EngineeringRun
from sessions.cli.engineering import calibration_store as _store
from sessions.cli.engineering import emit as _emit
from sessions.cli.errors import EXIT_INTERRUPTED, UsageError
from sessions.cli.errors import require_engineer as _require_engineer

if TYPE_CHECKING:
    from controller.calibration import CalibrationStore
    from firmware_bridge.client import DeviceInfo

# cmd_device_drive's helpers keep the names they had before the CLI became a package.


def cmd_device_info(args: argparse.Namespace) -> int:
    from firmware_bridge.client import DeviceClient
    from sessions.jsonshapes import device_shape

    with DeviceClient.open(args.device) as device:
        info = device.info
    if args.json:
        _emit(device_shape(args.device, info.to_dict()), True, [])
        return 0
    data = {"url": args.device, **info.to_dict()}
    width = max(len(k) for k in data)
    _emit(data, args.json, [f"{k:<{width}}  {v}" for k, v in data.items()])
    return 0


def _calibrated_gain(store: CalibrationStore, info: DeviceInfo, freq_hz: float) -> float | None:
    """The empty plate's g per unit drive at ``freq_hz`` by its calibration, if one covers it."""
    cal = store.load(info.device_id)
    if cal is None or not cal.freqs_hz[0] <= freq_hz <= cal.freqs_hz[-1]:
        return None
    gain = cal.gain_at(freq_hz)
    return gain if gain > 0 else None


def cmd_device_drive(args: argparse.Namespace) -> int:
    from controller.openloop import drive_open_loop
    from firmware_bridge.client import DeviceClient

    _require_engineer(args)
    store = _store(args)
    ceiling = DOSE_LIMITS.over_acceleration_ceiling_g
    with DeviceClient.open(args.device) as device:
        info = device.info
        if not info.min_freq_hz <= args.freq <= info.max_freq_hz:
            raise UsageError(
                f"frequency {args.freq:g} Hz is outside the device's {info.min_freq_hz:g}-"
                f"{info.max_freq_hz:g} Hz"
            )
        if args.drive > info.max_drive:
            raise UsageError(
                f"drive {args.drive:g} is outside 0..{info.max_drive:g} (device limit)"
            )
        # The host's own limit: the drive that, by the empty plate's calibration, reaches the
        # supervisor's ceiling. Without a calibration only the firmware's ceiling bounds it.
        gain = _calibrated_gain(store, info, args.freq)
        if gain is not None and args.drive * gain > ceiling:
            raise UsageError(
                f"--drive {args.drive:g} at {args.freq:g} Hz is not allowed: by this plate's "
                f"calibration it would reach {args.drive * gain:.2f} g; use at most "
                f"{math.floor(ceiling / gain * 1000) / 1000:g} (the host's {ceiling:g} g ceiling)"
            )
        # the peak the run is expected to reach: by the calibration, else the firmware's ceiling
        expected_g = args.drive * gain if gain is not None else info.ceiling_g
        settings = {"freq_hz": args.freq, "drive": args.drive, "seconds": args.seconds,
                    "calibrated": gain is not None}  # fmt: skip
        with _EngineeringRun(
            args, "liv device drive", info, max(expected_g, 0.001), args.seconds, settings
        ) as run:
            result = drive_open_loop(device, args.freq, args.drive, args.seconds)
            run.freqs_hz = [args.freq]
            run.status = "stopped_by_patient" if result.interrupted else "completed"
            run.reason = (
                f"held drive {args.drive:g} at {args.freq:g} Hz for {args.seconds:g} s; peak "
                f"{result.peak_g:.4f} g at the drive frequency"
                + ("; Ctrl-C: stopped early by the engineer" if result.interrupted else "")
            )
    data = result.to_dict()
    lines = [
        f"device            {result.device_id}",
        f"drive             {result.drive:.3f} of full scale at {result.freq_hz:g} Hz",
        f"held for          {result.seconds:g} s (after a soft ramp up; ramped down after)",
        f"peak at drive f   {result.peak_g:.4f} g (sine-equivalent, least-squares fit)",
        f"total peak        {result.total_peak_g:.4f} g (harmonics and noise included)",
        f"DC (gravity)      {result.dc_g:.4f} g",
        f"link              {result.frames} frames, {result.crc_errors} CRC errors, "
        f"{result.lost_frames} lost frames, {result.samples_missing} samples missing",
    ]
    if result.interrupted:
        lines.append("interrupted       Ctrl-C: ramped down and stopped early")
    _emit(data, args.json, lines)
    return EXIT_INTERRUPTED if result.interrupted else 0


def cmd_sim_serve(args: argparse.Namespace) -> int:
    from firmware_bridge.sim.config import parse_sim_url
    from firmware_bridge.sim.serve import serve_pty, serve_tcp

    config = parse_sim_url(args.sim)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def ready(where: str) -> None:
        print(where, flush=True)

    if args.pty:
        serve_pty(config, ready, lambda: stopping)
    else:
        host, port = args.tcp
        serve_tcp(config, host, port, ready, lambda: stopping)
    return 0
