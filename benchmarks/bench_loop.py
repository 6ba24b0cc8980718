"""The controller's own work per block, apart from the simulated device (issue 11).

    python benchmarks/bench_loop.py [--seconds 600] [--repeats 5] [--json out.json]

Three figures, CPU microseconds per control update (medians of ``--repeats``, min-max):

- **replayed, run**: the blocks of one ``--seconds`` hold at 45 Hz and 0.3 g (70 kg,
  ``sim://?speed=max``), recorded once, replayed through ``run_exposure`` by a stand-in device
  that hands them back at once (no simulator, no link); the callback keeps ``liv run``'s
  envelope. The same blocks give the same updates, so this is the controller alone.
- **replayed, start**: the same with the ISO 2631 meter and a session's ``_DoseClock.update``
  as the callback, as ``liv start`` runs them (no display, no checkpoints).
- **live, run / start**: ``run_exposure`` on the simulator itself, everything but
  ``DeviceClient.read_block`` (the controller, its commands to the device, its bookkeeping):
  the simulated plate runs between two updates and leaves the caches cold, so the same work
  costs more here.

Compare figures only with figures measured minutes apart on the same machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.calibration import Calibration, identify  # noqa: E402
from controller.loop import ControlUpdate, ExposureSettings, ExposureStatus, run_exposure  # noqa: E402
from controller.schedule import FrequencySchedule  # noqa: E402
from firmware_bridge.client import DeviceClient, SampleBlock  # noqa: E402
from firmware_bridge.codec import LinkStats  # noqa: E402
from sessions import runner  # noqa: E402
from sessions.protocol.model import PatientProtocol  # noqa: E402

PLATE = "sim://?speed=max&mass=70&seed=2"
EMPTY_PLATE = "sim://?speed=max&mass=0&seed=1"
FREQ_HZ = 45.0
TARGET_G = 0.3


class Replay:
    """A device that hands back recorded blocks at once (the commands go nowhere)."""

    def __init__(self, recorded: dict[str, Any]) -> None:
        self.info = recorded["info"]
        self.link_stats: LinkStats = recorded["link_stats"]
        self.samples_missing = 0
        self.blocks_waiting = 0  # never behind: the blocks are replayed as they are asked for
        self.blocks_behind = 0
        self.sample_index: int = recorded["start_index"]
        self.output_start_index: int = recorded["output_start_index"]
        self._blocks: list[SampleBlock] = recorded["blocks"]
        self._next = 0

    def discard_backlog(self) -> None: ...
    def set_frequency(self, freq_hz: float, wait: bool = True) -> None: ...
    def start_output(self) -> None: ...
    def stop_output(self, wait: bool = True) -> None: ...
    def set_drive(self, drive: float, ramp_s: float, wait: bool = True) -> None: ...
    def send_status_request(self) -> None: ...

    def take_status(self) -> None:
        return None

    def read_block(self, timeout_s: float = 0.0) -> SampleBlock | None:
        if self._next >= len(self._blocks):
            return None
        block = self._blocks[self._next]
        self._next += 1
        self.sample_index = block.first_index + block.counts.size
        return block


def settings(seconds: float, meter: bool) -> ExposureSettings:
    return ExposureSettings(
        target_g=TARGET_G,
        hold_s=seconds,
        schedule=FrequencySchedule.fixed(FREQ_HZ),
        measure_exposure=meter,
    )


def record(calibration: Calibration, seconds: float) -> dict[str, Any]:
    """The blocks one hold reads from the simulator, and what a replay needs to serve them."""
    with DeviceClient.open(PLATE) as device:
        blocks: list[SampleBlock] = []
        read = device.read_block
        start_index = device.sample_index

        def keep(timeout_s: float = 0.0) -> SampleBlock | None:
            block = read(timeout_s=timeout_s)
            if block is not None:
                blocks.append(block)
            return block

        device.read_block = keep  # type: ignore[method-assign]
        result = run_exposure(device, calibration, settings(seconds, False))
        if result.status is not ExposureStatus.COMPLETED:
            raise RuntimeError(f"the recorded hold did not complete: {result.trip}")
        return {
            "info": device.info,
            "link_stats": device.link_stats,
            "start_index": start_index,
            "output_start_index": device.output_start_index,
            "blocks": blocks,
            "history": result.history,  # what the replay must reproduce
        }


def engineer_envelope() -> Callable[[ControlUpdate], None]:
    """``liv run``'s callback without its display: an envelope point every 0.1 s."""
    envelope: list[tuple[float, float]] = []
    next_point = [0.0]

    def update(u: ControlUpdate) -> None:
        if u.measured_g is not None and u.t_s >= next_point[0]:
            envelope.append((round(u.t_s, 3), round(u.measured_g, 5)))
            next_point[0] = u.t_s + 0.1

    return update


def dose_clock(seconds: float) -> Callable[[ControlUpdate], bool]:
    """A session's bookkeeping per update (time at dose, envelope, progress), as ``liv start``."""
    today = datetime.date.today()
    protocol = PatientProtocol(
        patient_id="BENCH",
        target_g=TARGET_G,
        schedule=FrequencySchedule.fixed(FREQ_HZ),
        minutes_per_session=10.0,
        sessions_per_day=2,
        min_gap_hours=3.0,
        daily_windows=(),
        study_start=today,
        study_end=today + datetime.timedelta(days=365),
        timezone="UTC",
        dose_tolerance=0.1,
    )
    shown: list[runner.Progress] = []
    # a goal past the hold: the clock never ends it early, so both modes make the same updates
    minutes = seconds / 60.0 + 1.0
    clock = runner._DoseClock(protocol, minutes, lambda c: None, shown.append, time.monotonic)
    return clock.update


def per_update_us(spent_s: float, updates: int) -> float:
    return 1e6 * spent_s / max(updates, 1)


def replayed(
    recorded: dict[str, Any], calibration: Calibration, seconds: float, start: bool
) -> float:
    """CPU us per update of ``run_exposure`` on the recorded blocks."""
    device = Replay(recorded)
    callback: Callable[[ControlUpdate], Any] = dose_clock(seconds) if start else engineer_envelope()
    began = time.process_time()
    result = run_exposure(device, calibration, settings(seconds, start), on_update=callback)  # type: ignore[arg-type]
    spent = time.process_time() - began
    return per_update_us(spent, len(result.history["t_s"]))


@contextmanager
def reading_timed(spent: list[float]) -> Iterator[None]:
    """Adds the CPU time spent in ``DeviceClient.read_block`` to ``spent[0]``."""
    read = DeviceClient.read_block

    def timed(self: DeviceClient, timeout_s: float = 0.3) -> SampleBlock | None:
        began = time.process_time()
        try:
            return read(self, timeout_s=timeout_s)
        finally:
            spent[0] += time.process_time() - began

    DeviceClient.read_block = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        DeviceClient.read_block = read  # type: ignore[method-assign]


def live(calibration: Calibration, seconds: float, start: bool) -> float:
    """CPU us per update of ``run_exposure`` on the simulator, reading blocks not counted."""
    reading = [0.0]
    callback: Callable[[ControlUpdate], Any] = dose_clock(seconds) if start else engineer_envelope()
    with reading_timed(reading), DeviceClient.open(PLATE) as device:
        began = time.process_time()
        result = run_exposure(device, calibration, settings(seconds, start), on_update=callback)
        spent = time.process_time() - began
    return per_update_us(spent - reading[0], len(result.history["t_s"]))


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="hold length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with DeviceClient.open(EMPTY_PLATE) as device:
        calibration = identify(device)
    recorded = record(calibration, args.seconds)
    figures: dict[str, Callable[[], float]] = {
        "replayed_run_us": lambda: replayed(recorded, calibration, args.seconds, False),
        "replayed_start_us": lambda: replayed(recorded, calibration, args.seconds, True),
        "live_run_us": lambda: live(calibration, args.seconds, False),
        "live_start_us": lambda: live(calibration, args.seconds, True),
    }
    results = {
        name: summary([measure() for _ in range(args.repeats)]) for name, measure in figures.items()
    }
    for name, row in results.items():
        print(f"{name:20s} {row['median']:7.1f} us per update ({row['min']:.1f}-{row['max']:.1f})")
    report = {
        "benchmark": "bench_loop",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "seconds": args.seconds,
        "repeats": args.repeats,
        "blocks": len(recorded["blocks"]),
        "results": results,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
