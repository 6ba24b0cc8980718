"""Command round trip: how long the plate takes to answer, on its own clock and on the wall's.

Two figures per request, STATUS_REQUEST to STATUS:

- **device clock**: the sample index in the STATUS (the block boundary at which the device
  handled the request, docs/protocol.md 9.2) minus the sample index the host had seen when it
  sent it. Only that field is used, never where the STATUS sits among the SAMPLES frames: the
  protocol leaves open whether a finished block's SAMPLES goes out before or after the replies
  of the boundary where it ends. It counts the
  host's view lagging the device, the way to the device and the wait for the next block
  boundary, in device samples, so it means the same on every transport, including
  ``sim://?speed=max`` where a wall-clock second is hundreds of simulated seconds. Asserted on
  every plate.
- **wall clock**: ``time.perf_counter`` around the request. Meaningful only when the device
  runs in real time; the suite decides that from the run itself (device seconds per wall
  second within 0.8-1.25) and asserts the wall-clock limits only then. Otherwise the figures
  are reported for information.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from firmware_bridge.client import HEARTBEAT_S, DeviceClient
from hil_tests.plate import block_s
from hil_tests.report import QualificationReport

REQUESTS = 50
REAL_TIME_RATIO = (0.8, 1.25)  # device seconds per wall second of a real-time device
# Device clock, from what docs/protocol.md 9.2 allows at a boundary, whichever order a plate
# sends there: the host's view lags the device by up to a block (a block is sent when complete),
# and by one more when the boundary's replies go before the finished block's SAMPLES (the host
# may send right after a reply, before that block arrives); the device answers at the next
# block boundary (up to a block); plus 1 for the link. Samples first: 3 blocks; replies first: 4.
DEVICE_MAX_BLOCKS = 4.0
# The link's share does not shrink with the block: a USB or network hop and the host's
# scheduling take milliseconds whatever the block length. It is one block, at least
# LINK_FLOOR_S: the 20 ms the reference plate's one block already allows (docs/hil.md 4), so a
# plate with 20 ms blocks or longer is judged exactly as before, and a plate with 3.5 ms blocks
# (7 samples at 2000 Hz, which the protocol allows) gets 3 blocks + 20 ms, not 14 ms.
LINK_FLOOR_S = 0.020


def device_max_s(block_s: float) -> float:
    """The device-clock limit of one round trip for a plate whose blocks last ``block_s``."""
    return (DEVICE_MAX_BLOCKS - 1.0) * block_s + max(block_s, LINK_FLOOR_S)


# Wall clock: a typical request waits half a block for the boundary plus a block to come back;
# 2.5 blocks (50 ms on the reference plate) leaves room for a USB or network hop.
WALL_MEDIAN_BLOCKS = 2.5
# No answer may take longer than the heartbeat interval: the host must hear from the device
# faster than it promises to speak, or the watchdog's margin of 5 shrinks.
WALL_MAX_S = HEARTBEAT_S


@pytest.mark.timeout(60)
def test_status_round_trip_latency(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    fs = device.info.sample_rate_hz
    blk = block_s(device)
    index0, t0 = device.sample_index, time.perf_counter()
    device.read_for(0.2)
    pace = (device.sample_index - index0) / fs / (time.perf_counter() - t0)
    # In real time, wait a random fraction of a block before each request so that requests
    # meet the device's block boundary at every phase, not always just after a block arrived.
    jitter = np.random.default_rng(0).uniform(0.0, blk, REQUESTS)
    wall_s: list[float] = []
    device_s: list[float] = []
    first_index = device.sample_index
    started = time.perf_counter()
    for wait_s in jitter:
        if REAL_TIME_RATIO[0] <= pace <= REAL_TIME_RATIO[1]:
            time.sleep(wait_s)
        sent_index = device.sample_index
        sent_at = time.perf_counter()
        status = device.request_status()
        wall_s.append(time.perf_counter() - sent_at)
        device_s.append((status.sample_index - sent_index) / fs)
        device.read_block(timeout_s=1.0)  # let a block pass: requests meet the boundary anywhere
    clock_ratio = (device.sample_index - first_index) / fs / (time.perf_counter() - started)
    real_time = REAL_TIME_RATIO[0] <= clock_ratio <= REAL_TIME_RATIO[1]

    qualification.info(
        "latency.clock_ratio",
        "device seconds per wall second during the requests",
        round(clock_ratio, 3),
        note="real time" if real_time else "not real time: wall-clock latency not judged",
    )
    dev = np.array(device_s)
    wall = np.array(wall_s)
    checks = [
        qualification.info(
            "latency.device_median",
            f"STATUS_REQUEST answered, device clock, median of {REQUESTS}",
            round(float(np.median(dev)) * 1e3, 2),
            "ms",
        ),
        qualification.check(
            "latency.device_max",
            f"STATUS_REQUEST answered, device clock, max of {REQUESTS}",
            round(float(dev.max()) * 1e3, 2),
            round(device_max_s(blk) * 1e3, 2),
            "<=",
            "ms",
            note=(
                f"{DEVICE_MAX_BLOCKS - 1:g} blocks, whichever order the plate sends at a "
                f"boundary, + max(1 block, {LINK_FLOOR_S * 1e3:g} ms) for the link"
            ),
        ),
    ]
    median_ms = round(float(np.median(wall)) * 1e3, 2)
    max_ms = round(float(wall.max()) * 1e3, 2)
    if real_time:
        checks += [
            qualification.check(
                "latency.wall_median",
                f"STATUS_REQUEST round trip, wall clock, median of {REQUESTS}",
                median_ms,
                round(WALL_MEDIAN_BLOCKS * blk * 1e3, 2),
                "<=",
                "ms",
                note=f"{WALL_MEDIAN_BLOCKS:g} blocks",
            ),
            qualification.check(
                "latency.wall_max",
                f"STATUS_REQUEST round trip, wall clock, max of {REQUESTS}",
                max_ms,
                round(WALL_MAX_S * 1e3, 2),
                "<=",
                "ms",
                note="the heartbeat interval",
            ),
        ]
    else:
        qualification.info(
            "latency.wall_median", "STATUS_REQUEST round trip, wall clock, median", median_ms, "ms"
        )
        qualification.info(
            "latency.wall_max", "STATUS_REQUEST round trip, wall clock, max", max_ms, "ms"
        )
    failed = [c.describe() for c in checks if c.passed is False]
    assert not failed, "; ".join(failed)
