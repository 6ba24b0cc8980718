"""Link and simulator speed: decoder throughput and simulated seconds per wall second.

    python benchmarks/bench_link.py [--repeats 5] [--json out.json]

Prints a table of medians (and min/max) over repeats measured in one run, and writes JSON for
machines. Targets (issue 2): simulator >= 1000x real time for open-loop streaming at the
default sample rate.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from controller.estimation import block_phases, fit_sine
from firmware_bridge.client import DeviceClient
from firmware_bridge.codec import FrameDecoder
from firmware_bridge.protocol import (
    Heartbeat,
    Samples,
    SetDrive,
    SetFrequency,
    SetOutput,
    Status,
    decode_message,
    encode_message,
)
from firmware_bridge.realtime import single_threaded_numerics
from firmware_bridge.sim.config import SimConfig
from firmware_bridge.sim.device import SimulatedDevice

TARGET_SIM_SPEEDUP = 1000.0


def make_stream(n_blocks: int) -> bytes:
    rng = np.random.default_rng(0)
    parts = []
    for i in range(n_blocks):
        counts = rng.integers(-2000, 2000, size=32).astype(np.int16)
        parts.append(encode_message(Samples(i * 32, i * 7919, 45000, 20000, counts), i))
        if i % 50 == 0:
            parts.append(
                encode_message(Status(1, 1, 45000, 20000, 20000, 0, i * 32, 0, 0, 2500), i)
            )
    return b"".join(parts)


def bench_decoder(stream: bytes, decode_messages: bool) -> float:
    """MB/s through FrameDecoder (and decode_message) fed 4 KiB reads."""
    decoder = FrameDecoder()
    start = time.perf_counter()
    for off in range(0, len(stream), 4096):
        frames = decoder.feed(stream[off : off + 4096])
        if decode_messages:
            for frame in frames:
                decode_message(frame)
    elapsed = time.perf_counter() - start
    return len(stream) / elapsed / 1e6


def bench_device_alone(sim_seconds: float) -> float:
    """Simulated seconds per wall second for SimulatedDevice.step() under a constant drive."""
    device = SimulatedDevice(SimConfig(boot_ms=0.0))
    start_cmds = [
        encode_message(m, i)
        for i, m in enumerate([SetFrequency(45000), SetOutput(1), SetDrive(20000, 100)])
    ]
    device.step()
    device.receive(b"".join(start_cmds))
    heartbeat = encode_message(Heartbeat(), 9)
    blocks = round(sim_seconds / device.block_s)
    start = time.perf_counter()
    for i in range(blocks):
        if i % 5 == 0:
            device.receive(heartbeat)
        device.step()
        device.take_output()
    elapsed = time.perf_counter() - start
    return blocks * device.block_s / elapsed


def bench_full_stack(sim_seconds: float) -> float:
    """Simulated seconds per wall second for sim:// + DeviceClient streaming (open loop)."""
    with DeviceClient.open("sim://?speed=max&boot_ms=0") as dev:
        dev.set_frequency(45.0)
        dev.start_output()
        dev.set_drive(0.3, 0.1)
        fs = dev.info.sample_rate_hz
        end = dev.sample_index + round(sim_seconds * fs)
        begin_index = dev.sample_index
        start = time.perf_counter()
        while dev.sample_index < end:
            block = dev.read_block()
            assert block is not None
        elapsed = time.perf_counter() - start
        simulated = (dev.sample_index - begin_index) / fs
    return simulated / elapsed


def bench_fit() -> float:
    """Microseconds for one least-squares fit over a 20 ms block (32 samples)."""
    rng = np.random.default_rng(1)
    phase = block_phases(0.3, 45.0, 32, 1600.0)
    x = 1.0 + 0.3 * np.cos(phase) + 0.01 * rng.standard_normal(32)
    reps = 2000
    start = time.perf_counter()
    for _ in range(reps):
        fit_sine(x, phase)
    return (time.perf_counter() - start) / reps * 1e6


def measure(fn: Callable[[], float], repeats: int) -> dict[str, float]:
    values = [fn() for _ in range(repeats)]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sim-seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    stream = make_stream(5000)
    results: dict[str, Any] = {
        "decoder_framing_mb_s": measure(lambda: bench_decoder(stream, False), args.repeats),
        "decoder_with_messages_mb_s": measure(lambda: bench_decoder(stream, True), args.repeats),
        "sim_device_alone_speedup": measure(
            lambda: bench_device_alone(args.sim_seconds), args.repeats
        ),
        "sim_full_stack_speedup": measure(lambda: bench_full_stack(args.sim_seconds), args.repeats),
        "sine_fit_us": measure(bench_fit, args.repeats),
    }
    full = results["sim_full_stack_speedup"]["median"]
    alone = results["sim_device_alone_speedup"]["median"]
    report = {
        "benchmark": "bench_link",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "repeats": args.repeats,
        "sim_seconds": args.sim_seconds,
        "results": results,
        "targets": {
            "sim_speedup_min": TARGET_SIM_SPEEDUP,
            "device_alone_met": alone >= TARGET_SIM_SPEEDUP,
            "full_stack_met": full >= TARGET_SIM_SPEEDUP,
        },
    }
    print(f"{'measure':<30} {'median':>12} {'min':>12} {'max':>12}")
    for name, row in results.items():
        print(f"{name:<30} {row['median']:>12.1f} {row['min']:>12.1f} {row['max']:>12.1f}")
    print(
        f"target: simulator >= {TARGET_SIM_SPEEDUP:.0f}x real time -> device alone "
        f"{'met' if alone >= TARGET_SIM_SPEEDUP else 'MISSED'}, full stack "
        f"{'met' if full >= TARGET_SIM_SPEEDUP else 'MISSED'}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    with single_threaded_numerics():
        sys.exit(main())
