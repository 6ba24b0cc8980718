"""The host's client layer alone: CPU per block of DeviceClient on recorded plate bytes (issue 11).

    python benchmarks/bench_client.py [--blocks 6000] [--repeats 7]

A seeded ``sim://?speed=max`` plate is run once per loop shape while every read of its port is
recorded (and every write); the client is then fed those bytes again from memory, several
times, and timed (``time.process_time``). The simulated device does no work in the timed part,
so the figure is the client's: decoding frames, queueing blocks, the commands it encodes and
writes. Each replay checks that the client wrote what it wrote against the plate.

- **closed loop**: ``read_block`` each block, ``set_drive`` (without waiting) on 4 of 5, as
  ``controller.loop`` does on a steady hold.
- **open loop**: ``read_blocks(5)`` (a heartbeat is due every 5 blocks), as
  ``controller.openloop`` reads.

Prints the median and the minimum over ``--repeats`` in microseconds per block.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_bridge.client import DeviceClient
from firmware_bridge.urlhandler import protocol_sim

PLATE = "sim://?speed=max&mass=70&seed=2"


def closed_loop(dev: DeviceClient, blocks: int) -> None:
    dev.set_frequency(45.0)
    dev.start_output()
    for i in range(blocks):
        if dev.read_block(timeout_s=1.0) is None:
            raise RuntimeError("no block")
        if i % 5 != 4:
            dev.set_drive(0.1 + 0.0002 * ((i % 7) - 3), 0.02, wait=False)


def open_loop(dev: DeviceClient, blocks: int) -> None:
    dev.set_frequency(45.0)
    dev.start_output()
    dev.set_drive(0.1, 0.5)
    got = 0
    while got < blocks:
        batch = dev.read_blocks(5, timeout_s=1.0)
        if batch is None:
            raise RuntimeError("no block")
        got += len(batch)


class ReplayPort:
    """Answers each read (and read_buffered) with the next one recorded; paced like sim://."""

    paced_by_reads = True

    def __init__(self, reads: list[bytes]) -> None:
        self._reads = reads
        self._next = 0
        self.is_open = True
        self.timeout = 0.05
        self.writes: list[bytes] = []

    @property
    def in_waiting(self) -> int:
        return len(self._reads[self._next]) if self._next < len(self._reads) else 0

    def read(self, size: int = 1) -> bytes:
        data = self._reads[self._next]
        self._next += 1
        return data

    def read_buffered(self) -> bytes:
        return self.read()

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        return len(data)

    def close(self) -> None:
        self.is_open = False


Shape = Callable[[DeviceClient, int], None]


def record(shape: Shape, blocks: int) -> tuple[list[bytes], list[bytes]]:
    """The bytes each read of the simulated port returned, and what the client wrote."""
    reads: list[bytes] = []
    writes: list[bytes] = []
    cls = protocol_sim.Serial
    originals = {name: getattr(cls, name) for name in ("read", "read_buffered", "write")}

    def recorded_read(port: protocol_sim.Serial, size: int = 1) -> bytes:
        reads.append(originals["read"](port, size))
        return reads[-1]

    def recorded_read_buffered(port: protocol_sim.Serial) -> bytes:
        reads.append(originals["read_buffered"](port))
        return reads[-1]

    def recorded_write(port: protocol_sim.Serial, data: bytes) -> int:
        writes.append(bytes(data))
        written: int = originals["write"](port, data)
        return written

    patches = {
        "read": recorded_read,
        "read_buffered": recorded_read_buffered,
        "write": recorded_write,
    }
    for name, function in patches.items():
        setattr(cls, name, function)
    try:
        with DeviceClient.open(PLATE) as dev:
            shape(dev, blocks)
    finally:
        for name, function in originals.items():
            setattr(cls, name, function)
    return reads, writes


def replay_us_per_block(
    shape: Shape, blocks: int, reads: list[bytes], writes: list[bytes]
) -> float:
    port = ReplayPort(reads)
    dev = DeviceClient(port, "replay")  # type: ignore[arg-type]
    dev.handshake()
    start = time.process_time()
    shape(dev, blocks)
    cpu = time.process_time() - start
    dev.close()
    if port.writes != writes:
        raise RuntimeError("the replay wrote other bytes than the recorded run")
    return cpu / blocks * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    for name, shape in (("closed loop", closed_loop), ("open loop", open_loop)):
        reads, writes = record(shape, args.blocks)
        figures = [
            replay_us_per_block(shape, args.blocks, reads, writes) for _ in range(args.repeats)
        ]
        print(
            f"{name:<12} client CPU {statistics.median(figures):6.2f} us/block "
            f"(min {min(figures):.2f}, {args.repeats} replays of {args.blocks} blocks)"
        )


if __name__ == "__main__":
    main()
