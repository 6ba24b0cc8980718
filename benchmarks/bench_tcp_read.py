"""The host's cost of reading a plate over TCP (``socket://``, as ser2net serves one).

    python benchmarks/bench_tcp_read.py [--seconds 5] [--repeats 3] [--json FILE]

A simulated plate is served in real time by ``liv sim serve --tcp`` in its own process; the
host (this process) opens it with ``DeviceClient`` and reads blocks for ``--seconds`` of wall
time. Measured: blocks read, read calls on the port per block, and the reading thread's CPU time
per block (``time.thread_time``). Over ``socket://`` pyserial's ``in_waiting`` says at most 1
byte, so a client that sizes its reads by it reads a byte per call; the client sizes them by the
socket's own count (FIONREAD). Prints a table; medians (min-max) of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.output import machine_facts, write_json  # noqa: E402
from firmware_bridge.client import DeviceClient  # noqa: E402


def measure(seconds: float) -> dict[str, float]:
    """One run: a plate served over TCP, read for ``seconds`` of wall time."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessions.cli", "sim", "serve", "--tcp", "127.0.0.1:0",
         "--sim", "sim://?seed=8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        if not address:
            raise RuntimeError("the served plate printed no address")
        with DeviceClient.open(address) as dev:
            for _ in range(10):  # past the handshake's own reads
                dev.read_block(1.0)
            port = dev._port
            read = port.read
            calls = 0

            def counted(size: int = 1) -> bytes:
                nonlocal calls
                calls += 1
                return read(size)

            port.read = counted  # type: ignore[method-assign]
            blocks = 0
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            while time.perf_counter() - wall0 < seconds:
                if dev.read_block(1.0) is not None:
                    blocks += 1
            cpu = time.thread_time() - cpu0
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    return {
        "blocks": blocks,
        "reads_per_block": calls / blocks,
        "cpu_us_per_block": cpu / blocks * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    runs = [measure(args.seconds) for _ in range(args.repeats)]
    rows: dict[str, Any] = {}
    print(f"{'measure':<40} {'median':>10} {'min':>10} {'max':>10}")
    for key in ("blocks", "reads_per_block", "cpu_us_per_block"):
        values = [r[key] for r in runs]
        rows[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        print(f"{key:<40} {rows[key]['median']:>10.1f} {min(values):>10.1f} {max(values):>10.1f}")
    write_json(args.json, {"machine": machine_facts(), "seconds": args.seconds, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
