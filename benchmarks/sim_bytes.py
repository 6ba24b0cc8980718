"""Same seed, same bytes: digests of the simulated plate's wire bytes and truth file (issue 11).

    python benchmarks/sim_bytes.py [--json FILE]

Runs a few short scripted hosts against ``sim://`` ports (open loop, a closed loop that moves
the drive every few blocks, a warm coil, a patient stepping on and off, link and device faults,
the firmware ceiling, an open coil circuit, a pulled cable, a plate that was up before the host
came) and prints, per case, the SHA-256 of every byte the host read, of the truth file's arrays
and events, and of the plate's and anti-alias filter's state at the end (a change below the
counts' rounding shows there first). A change to the simulator's speed must leave every digest
as it was: tests/test_sim_same_bytes.py holds the digests of the code before session 7 and
compares. To check another tree's code, put it first on the path:
``PYTHONPATH=/path/to/tree python benchmarks/sim_bytes.py``.

``--time REPEATS`` times the device alone instead: a 10-minute open loop and a 2-minute closed
loop read five frames at a time, CPU seconds per run.

Each host writes its commands at fixed simulated times and reads in a fixed cycle of sizes
(one byte, one frame, a few frames, many frames), so the device is stepped both block by block
and many blocks per call.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import serial

if __package__ in (None, ""):  # run as a script: the tree on PYTHONPATH, else this one
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import firmware_bridge
from firmware_bridge.protocol import (
    Heartbeat,
    Message,
    SetDrive,
    SetFrequency,
    SetOutput,
    StatusRequest,
    drive_to_q16,
    encode_message,
)
from firmware_bridge.transport import open_port

# Read sizes in frames (negative: bytes), cycled: the device is stepped one block at a time by
# small reads and many blocks per call by large ones.
READ_CYCLE = (16, -1, 3, -7, 40, 1, 100, 2)


@dataclass(frozen=True)
class Case:
    """A host script: URL parameters, commands at simulated times, how long it runs."""

    name: str
    params: str
    seconds: float
    commands: tuple[tuple[float, Message], ...] = ()
    heartbeat_s: float = 0.1  # a heartbeat this often (0: none) from the first command on
    beat_until_s: float | None = None  # the host goes quiet after this (the watchdog trips)
    extra: dict[str, str] = field(default_factory=dict)


def _start(freq_mhz: int = 45_000, drive: float = 0.1, ramp_ms: int = 1000) -> list[Message]:
    return [SetFrequency(freq_mhz), SetOutput(1), SetDrive(drive_to_q16(drive), ramp_ms)]


def _at(t0: float, messages: list[Message], gap_s: float = 0.02) -> list[tuple[float, Message]]:
    return [(t0 + i * gap_s, m) for i, m in enumerate(messages)]


def _closed_loop(t0: float, t1: float, seed: int) -> list[tuple[float, Message]]:
    """A drive moved every 4-14 blocks by small steps, as a control loop moves it."""
    rng = np.random.default_rng(seed)
    out: list[tuple[float, Message]] = []
    t, drive = t0, 0.12
    while t < t1:
        drive = float(np.clip(drive + rng.normal(0.0, 0.004), 0.05, 0.2))
        out.append((t, SetDrive(drive_to_q16(drive), int(rng.integers(0, 60)))))
        t += 0.02 * int(rng.integers(4, 15))
    return out


def cases() -> list[Case]:
    """The scripted hosts (a few seconds of simulated time each)."""
    return [
        Case(
            "open loop",
            "seed=2&mass=70",
            8.0,
            (*_at(0.3, _start(ramp_ms=2000)), (6.5, SetDrive(0, 1000)), (7.6, SetOutput(0))),
        ),
        Case(
            "closed loop",
            "seed=3&mass=70",
            8.0,
            (*_at(0.3, _start(drive=0.12, ramp_ms=500)), *_closed_loop(1.0, 7.5, 11)),
        ),
        Case(
            "a warm coil cooling, sway, standing",
            "seed=4&mass=90&coil_temp_c=119.5&sway=1&posture=standing",
            8.0,
            (*_at(0.3, _start(drive=0.4, ramp_ms=300)), (4.0, StatusRequest())),
        ),
        Case(
            "a patient steps on and off",
            "seed=5&mass=60&step_on_at=1.5&step_off_at=5.5&knee_deg=160&posture=standing",
            7.0,
            (*_at(0.3, _start(drive=0.15, ramp_ms=800)), *_closed_loop(3.0, 6.5, 12)),
        ),
        Case(
            "link faults: latency, drops, corruption",
            "seed=6&mass=70&latency_ms=7&drop_rate=0.03&corrupt_rate=0.0003",
            6.0,
            tuple(_at(0.3, _start(drive=0.1, ramp_ms=400))),
        ),
        Case(
            "device faults: load step, gain loss, index jump, stuck sensor",
            "seed=7&mass=70&load_step_at=2.01&load_step_kg=40&gain_loss_at=3.3&gain_factor=0.7"
            "&index_jump_at=4.1&index_jump_samples=-500&sensor_stuck_at=5.5",
            7.0,
            tuple(_at(0.3, _start(drive=0.1, ramp_ms=400))),
        ),
        Case(
            "reset, then the host starts again; watchdog",
            "seed=8&mass=70&reset_at=2.5",
            7.0,
            (*_at(0.3, _start(drive=0.1, ramp_ms=400)), *_at(3.0, _start(drive=0.08))),
            beat_until_s=5.0,
        ),
        Case(
            "the firmware ceiling on an empty plate",
            "seed=9&mass=0",
            4.0,
            tuple(_at(0.3, _start(drive=0.9, ramp_ms=3000))),
        ),
        Case(
            "a patient steps off a constant drive: the ceiling trips between batches",
            "seed=13&mass=60&step_on_at=0.1&step_off_at=3",
            5.0,
            tuple(_at(0.3, _start(drive=0.25, ramp_ms=1000))),
        ),
        Case(
            "up before the host; sensor saturates, then disconnects",
            "seed=10&mass=80&uptime_s=30&sensor_saturated_at=33&sensor_disconnected_at=35",
            7.0,
            tuple(_at(30.2, _start(freq_mhz=30_000, drive=0.2, ramp_ms=600))),
        ),
        Case(
            "the coil's circuit opens under a steady drive",
            "seed=14&mass=70&open_circuit_at=3",
            6.0,
            tuple(_at(0.3, _start(drive=0.12, ramp_ms=400))),
        ),
        Case(
            "the cable is pulled mid-batch",
            "seed=15&mass=70&disconnect_at=4.33",
            6.0,
            tuple(_at(0.3, _start(drive=0.1, ramp_ms=400))),
        ),
        Case(
            "open loop, 90 Hz and sensor noise",
            "seed=12&mass=110&noise=high",
            6.0,
            tuple(_at(0.2, _start(freq_mhz=90_000, drive=0.3, ramp_ms=1500))),
        ),
    ]


def _digest_truth(path: Path) -> str:
    h = hashlib.sha256()
    with np.load(path) as npz:
        for name in sorted(npz.files):
            arr = np.asarray(npz[name])
            h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode())
            h.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
    return h.hexdigest()


def run_case(
    case: Case,
    workdir: Path,
    truth_file: bool = True,
    read_cycle: tuple[int, ...] = READ_CYCLE,
) -> dict[str, object]:
    """Run one host script; its wire and truth digests, bytes read and simulated seconds
    (without ``truth_file`` the truth digest is empty: for timing the device as hosts run it)."""
    truth = workdir / f"truth-{hashlib.sha256(case.name.encode()).hexdigest()[:12]}.npz"
    url = f"sim://?speed=max&{case.params}&nv={workdir / 'nv'}"
    if truth_file:
        url += f"&truth={truth}"
    port = open_port(url)
    device = port.device  # type: ignore[attr-defined]
    frame = device.samples_frame_bytes
    start_s = device.time_s
    pending = sorted(case.commands, key=lambda c: c[0])
    first = pending[0][0] if pending else start_s
    beats = [
        (t, Heartbeat())
        for t in np.arange(first + case.heartbeat_s / 2, start_s + case.seconds, case.heartbeat_s)
        if case.heartbeat_s and (case.beat_until_s is None or t < case.beat_until_s)
    ]
    script = sorted([*pending, *beats], key=lambda c: c[0])
    wire = hashlib.sha256()
    total = seq = i = 0
    try:
        while device.time_s < start_s + case.seconds and not device.disconnected:
            while script and script[0][0] <= device.time_s:
                port.write(encode_message(script.pop(0)[1], seq))
                seq = (seq + 1) & 0xFFFF
            size = read_cycle[i % len(read_cycle)]
            i += 1
            try:
                data = port.read(-size if size < 0 else size * frame)
            except serial.SerialException:  # the cable was pulled: what came before counts
                break
            wire.update(data)
            total += len(data)
        simulated = device.time_s - start_s
    finally:  # the device lingers, then writes its truth file
        port.close()
    # The plate's and filter's state at the end, to the bit: a change below the counts'
    # rounding shows here before it shows on the wire.
    state = hashlib.sha256()
    for part in (device.physics._x, device.sensor.filter_state):
        state.update(np.ascontiguousarray(part, dtype=np.float64).tobytes())
    state.update(repr((device.physics.coil_temperature_c, device.sensor._noise_pos)).encode())
    return {
        "wire": wire.hexdigest(),
        "state": state.hexdigest(),
        "truth": _digest_truth(truth) if truth_file else "",
        "bytes": total,
        "seconds": round(simulated, 6),
    }


def run_all() -> dict[str, dict[str, object]]:
    with tempfile.TemporaryDirectory(prefix="sim-bytes-") as tmp:
        return {case.name: run_case(case, Path(tmp)) for case in cases()}


def timing_cases() -> list[Case]:
    """Long runs for timing the device alone: a 10-minute open loop and a 2-minute closed loop
    (the drive moved every 4-14 blocks), read five frames at a time as a batched host reads."""
    return [
        Case("open loop, 600 s", "seed=2&mass=70", 600.0, tuple(_at(0.3, _start(ramp_ms=2000)))),
        Case(
            "closed loop, 120 s",
            "seed=3&mass=70",
            120.0,
            (*_at(0.3, _start(drive=0.12, ramp_ms=500)), *_closed_loop(1.0, 119.0, 11)),
        ),
    ]


def time_device(repeats: int) -> dict[str, list[float]]:
    """CPU seconds of each timing case (no truth file, as ``liv`` runs without one)."""
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="sim-bytes-") as tmp:
        for case in timing_cases():
            for _ in range(repeats):
                begin = time.process_time()
                run_case(case, Path(tmp), truth_file=False, read_cycle=(5,))
                out.setdefault(case.name, []).append(time.process_time() - begin)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="write the digests here")
    parser.add_argument(
        "--time", type=int, metavar="REPEATS", help="time the device alone instead (CPU s)"
    )
    args = parser.parse_args(argv)
    print(f"# code under {Path(firmware_bridge.__file__).parent.parent}", file=sys.stderr)
    if args.time:
        for name, seconds in time_device(args.time).items():
            runs = " ".join(f"{s:.3f}" for s in seconds)
            print(f"{name}: CPU s {runs} (min {min(seconds):.3f})")
        return 0
    result = run_all()
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
