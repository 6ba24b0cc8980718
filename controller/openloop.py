"""Open-loop drive of a plate: fixed drive, soft ramps, measured amplitude and link health.

An engineer's tool (``liv device drive``) and the baseline the closed loop is compared with.
The steady window is measured as it streams (running sums of the sine fit's normal equations),
so an hour's drive holds a few hundred samples, not every block.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from controller.estimation import FloatArray, block_phases, whole_cycle_length
from controller.safety import READ_WAIT_S, samples_wait_s
from firmware_bridge.client import DeviceClient, SampleBatch, SampleBlock
from firmware_bridge.errors import BridgeError

RAMP_UP_S = 2.0
RAMP_DOWN_S = 1.0
PENDING_BLOCKS = 64  # SteadyFit adds blocks to its sums this many at a time
READ_BLOCKS = 64  # blocks asked for per read (the client stops earlier when a heartbeat is due)


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
    steady = SteadyFit(freq_hz, fs)
    interrupted = False
    wait_s = samples_wait_s(READ_WAIT_S, info.watchdog_s, info.block_samples / fs)
    device.set_frequency(freq_hz)
    device.start_output()
    try:
        device.set_drive(drive, ramp_up_s)
        device.read_for(ramp_up_s, wait_s)
        _read_into(device, seconds, steady, wait_s)
    except KeyboardInterrupt:
        interrupted = True
    except BridgeError:
        # The link or device has failed: no host ramp; the firmware watchdog takes the drive
        # to zero on its own.
        raise
    except BaseException:
        # A fault of the host's own (a bug, an unexpected reply): still the soft stop, then
        # the error; a link that fails during the ramp leaves it to the watchdog.
        with contextlib.suppress(BridgeError):
            _ramp_down(device, ramp_down_s, wait_s)
        raise
    _ramp_down(device, ramp_down_s, wait_s)
    nan = float("nan")
    fit_peak, total, dc, harm = (nan,) * 4 if interrupted else steady.result()
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


def _ramp_down(device: DeviceClient, ramp_down_s: float, timeout_s: float) -> None:
    """Soft stop: ramp to zero, keep the link alive while it ramps, then switch off."""
    device.set_drive(0.0, ramp_down_s)
    device.read_for(ramp_down_s, timeout_s)
    device.stop_output()


def _read_into(
    device: DeviceClient, seconds: float, steady: SteadyFit, timeout_s: float = READ_WAIT_S
) -> None:
    """Stream the next ``seconds`` of the device's sample clock into ``steady``."""
    n = device.info.block_samples
    end = device.sample_index + round(seconds * device.info.sample_rate_hz)
    setbacks = device.index_setbacks
    while device.sample_index < end:
        # Never past ``end`` by more than read_block would have gone (one block's overshoot).
        wanted = max(1, min(READ_BLOCKS, -(-(end - device.sample_index) // n)))
        batch = device.read_blocks(wanted, timeout_s)
        if batch is None:
            # LinkLostError, or LinkUnreadableError if the device kept sending unusable frames
            raise device.no_samples_error(timeout_s)
        device.check_clock(setbacks)  # SampleIndexError: an index went back or repeated
        steady.push_batch(batch)


class SteadyFit:
    """The sine fit of :func:`controller.estimation.fit_sine` over a stream, in constant memory.

    The fit spans the stream's last whole number of drive cycles (as ``fit_sine`` over
    ``whole_cycle_length`` samples did over the kept blocks): running sums of the normal
    equations over every sample, less the few samples at the start (under one cycle) that the
    whole-cycle window leaves out, which are kept. Sums are taken about the first sample (the
    fit is the same; the residual keeps its precision over an hour of gravity-sized samples).
    Blocks join the sums PENDING_BLOCKS at a time (a few products instead of many per block).
    """

    # running sums: 1, c, s, cc, cs, ss, x, xc, xs, xx (x about the first sample)
    def __init__(self, freq_hz: float, sample_rate_hz: float) -> None:
        self.freq_hz = freq_hz
        self.sample_rate_hz = sample_rate_hz
        self._head_n = math.ceil(sample_rate_hz / freq_hz) + 2
        self._head_x: list[float] = []
        self._head_phase: list[float] = []
        self._sums = np.zeros(10)
        self._tail_max = -math.inf  # over samples after the kept head
        self._tail_min = math.inf
        self._x0: float | None = None
        self._pending: list[SampleBatch] = []  # blocks not yet in the sums (see _flush)
        self._pending_blocks = 0
        self._pending_tail: list[FloatArray] = []
        self.samples = 0

    def push_batch(self, batch: SampleBatch) -> None:
        """Add the blocks of ``batch`` (in order), as :meth:`push` of each would."""
        if len(self._head_x) < self._head_n:  # the first cycle: kept sample by sample
            for block in batch.blocks():
                self.push(block)
            return
        x = batch.accel_g
        self._pending_tail.append(x.ravel())
        self._pending.append(batch)
        self._pending_blocks += len(batch)
        self.samples += x.size
        if self._pending_blocks >= PENDING_BLOCKS:
            self._flush()

    def push(self, block: SampleBlock) -> None:
        x = block.accel_g
        if self._x0 is None and x.size:
            self._x0 = float(x[0])
        room = self._head_n - len(self._head_x)
        if room > 0:
            phase = block_phases(block.phase_rad, block.freq_hz, x.size, self.sample_rate_hz)
            self._head_x.extend(x[:room].tolist())
            self._head_phase.extend(phase[:room].tolist())
        tail = x[max(room, 0) :]
        if tail.size:
            self._pending_tail.append(tail)
        self._pending.append(SampleBatch.of_block(block))
        self._pending_blocks += 1
        self.samples += x.size
        if self._pending_blocks >= PENDING_BLOCKS:
            self._flush()

    def _flush(self) -> None:
        """Add the pending blocks to the sums, all at once (one product per batch)."""
        batches, self._pending = self._pending, []
        self._pending_blocks = 0
        tails, self._pending_tail = self._pending_tail, []
        if tails:
            joined = np.concatenate(tails)
            self._tail_max = max(self._tail_max, float(joined.max()))
            self._tail_min = min(self._tail_min, float(joined.min()))
        if not batches:
            return
        if len({b.counts.shape[1] for b in batches}) > 1:  # blocks of other lengths
            x = np.concatenate([b.accel_g.ravel() for b in batches])
            phase = np.concatenate([self._phases(b) for b in batches])
        else:
            pending = SampleBatch.join(batches)
            x = pending.accel_g.ravel()
            phase = self._phases(pending)
        self._sums += self._terms(x, phase)

    def _phases(self, batch: SampleBatch) -> FloatArray:
        """The drive phase of every sample of ``batch``, flattened."""
        n = batch.counts.shape[1]
        freq = float(batch.freq_hz[0])
        if bool((batch.freq_hz == freq).all()):
            step = block_phases(0.0, freq, n, self.sample_rate_hz)
            return (batch.phase_rad[:, None] + step).ravel()
        return np.concatenate(  # blocks at other frequencies: one at a time
            [
                block_phases(float(p), float(f), n, self.sample_rate_hz)
                for p, f in zip(batch.phase_rad, batch.freq_hz, strict=True)
            ]
        )

    def _terms(self, x: FloatArray, phase: FloatArray) -> FloatArray:
        assert self._x0 is not None
        c, s = np.cos(phase), np.sin(phase)
        d = x - self._x0
        return np.array(
            [d.size, c.sum(), s.sum(), c @ c, c @ s, s @ s, d.sum(), d @ c, d @ s, d @ d],
            dtype=np.float64,
        )

    def result(self) -> tuple[float, float, float, float]:
        """(peak, total peak about DC, DC, residual rms), all g; NaN when nothing streamed."""
        self._flush()
        if self._x0 is None:
            return (float("nan"),) * 4
        n = whole_cycle_length(self.samples, self.freq_hz, self.sample_rate_hz)
        if n < 3:
            raise ValueError(f"a sine fit needs at least 3 samples, got {n}")
        skip = self.samples - n  # samples before the whole-cycle window: all in the head
        head_x = np.array(self._head_x)
        head_phase = np.array(self._head_phase)
        sums = self._sums - self._terms(head_x[:skip], head_phase[:skip])
        k, sc, ss, scc, scs, sss, sx, sxc, sxs, sxx = sums.tolist()
        normal = np.array([[k, sc, ss], [sc, scc, scs], [ss, scs, sss]])
        rhs = np.array([sx, sxc, sxs])
        try:
            coef = np.linalg.solve(normal, rhs)
        except np.linalg.LinAlgError:
            raise ValueError("samples do not span enough of a drive cycle to fit a sine") from None
        dc_shifted, a, b = (float(v) for v in coef)
        residual_ss = max(0.0, sxx - float(coef @ rhs))
        dc = dc_shifted + self._x0
        window_head = head_x[skip:]
        high = max(self._tail_max, float(window_head.max()) if window_head.size else -math.inf)
        low = min(self._tail_min, float(window_head.min()) if window_head.size else math.inf)
        return (
            float(np.hypot(a, b)),
            max(high - dc, dc - low),
            dc,
            math.sqrt(residual_ss / n),
        )
