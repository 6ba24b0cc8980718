"""Open-loop drive of a plate: fixed drive, soft ramps, measured amplitude and link health.

An engineer's tool (``liv device drive``) and the baseline the closed loop is compared with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from controller.estimation import FloatArray, block_phases, fit_sine, whole_cycle_length
from firmware_bridge.client import DeviceClient, SampleBlock

RAMP_UP_S = 2.0
RAMP_DOWN_S = 1.0


@dataclass(frozen=True)
class OpenLoopResult:
    device_id: str
    freq_hz: float
    drive: float
    seconds: float
    peak_g: float  # sine-equivalent peak at the drive frequency over the steady window
    total_peak_g: float
    dc_g: float
    harmonic_rms_g: float
    frames: int
    crc_errors: int
    lost_frames: int
    samples_missing: int
    interrupted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drive_open_loop(
    device: DeviceClient,
    freq_hz: float,
    drive: float,
    seconds: float,
    ramp_up_s: float = RAMP_UP_S,
    ramp_down_s: float = RAMP_DOWN_S,
) -> OpenLoopResult:
    """Ramp up to ``drive`` at ``freq_hz``, hold for ``seconds``, ramp down, stop.

    Always ramps down and stops, also on Ctrl-C (reported as ``interrupted``).
    """
    info = device.info
    if not info.min_freq_hz <= freq_hz <= info.max_freq_hz:
        raise ValueError(
            f"frequency {freq_hz:g} Hz is outside the device's {info.min_freq_hz:g}-"
            f"{info.max_freq_hz:g} Hz"
        )
    if not 0.0 <= drive <= info.max_drive:
        raise ValueError(f"drive {drive:g} is outside 0..{info.max_drive:g} (device limit)")
    fs = float(info.sample_rate_hz)
    steady: list[SampleBlock] = []
    interrupted = False
    device.set_frequency(freq_hz)
    device.start_output()
    try:
        device.set_drive(drive, ramp_up_s)
        device.read_for(ramp_up_s)
        steady = device.read_for(seconds)
    except KeyboardInterrupt:
        interrupted = True
    # A BridgeError propagates without a host ramp: the link or device has failed, and the
    # firmware watchdog takes the drive to zero on its own.
    _ramp_down(device, ramp_down_s)
    fit_peak, total, dc, harm = _measure(steady, freq_hz, fs)
    stats = device.link_stats
    return OpenLoopResult(
        device_id=info.device_id,
        freq_hz=freq_hz,
        drive=drive,
        seconds=seconds,
        peak_g=fit_peak,
        total_peak_g=total,
        dc_g=dc,
        harmonic_rms_g=harm,
        frames=stats.frames,
        crc_errors=stats.crc_errors + stats.cobs_errors,
        lost_frames=stats.lost_frames,
        samples_missing=device.samples_missing,
        interrupted=interrupted,
    )


def _ramp_down(device: DeviceClient, ramp_down_s: float) -> None:
    """Soft stop: ramp to zero, keep the link alive while it ramps, then switch off."""
    device.set_drive(0.0, ramp_down_s)
    device.read_for(ramp_down_s)
    device.stop_output()


def _measure(blocks: list[SampleBlock], freq_hz: float, fs: float) -> tuple[float, ...]:
    if not blocks:
        return (float("nan"),) * 4
    accel: FloatArray = np.concatenate([b.accel_g for b in blocks])
    phase: FloatArray = np.concatenate(
        [block_phases(b.phase_rad, b.freq_hz, b.counts.size, fs) for b in blocks]
    )
    n = whole_cycle_length(accel.size, freq_hz, fs)
    fit = fit_sine(accel[-n:], phase[-n:])
    return fit.peak_g, fit.total_peak_g, fit.dc_g, fit.residual_rms_g
