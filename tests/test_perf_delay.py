"""The checkpoint writer must not hold up a control update for long (issue 11, item 4).

The control thread only hands a snapshot to the writer thread; what can still delay it is the
writer's Python work, which holds the GIL (SQLite and the disk run without it). These tests
pin that delay: the writer's Python work per checkpoint at the end of a 10-minute envelope,
measured as the writer thread's CPU time outside SQLite's calls (with a profile hook, which
only adds to it), must stay far below what re-serialising the whole envelope cost (the issue's
2 ms target itself is measured by `benchmarks/bench_speed.py --parts delay`), and the process's
GIL switch interval is left alone (it is process-wide).
"""

from __future__ import annotations

import gc
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from sessions import runner
from sessions.log import SessionLog

REGRESSION_LIMIT_S = 0.006  # a checkpoint's Python work (target 2 ms, benchmarked), room for load
BLOCKS_PER_POINT = 5  # an envelope point every 0.1 s of 20-ms blocks


class _GilWork:
    """The writer thread's CPU time per checkpoint outside SQLite's own calls (GIL released)."""

    def __init__(self) -> None:
        self.per_checkpoint: list[float] = []
        self._in_sqlite = 0.0
        self._entered: float | None = None

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and type(getattr(arg, "__self__", None)) in _SQLITE_TYPES:
            self._entered = time.thread_time()
        elif event in ("c_return", "c_exception") and self._entered is not None:
            self._in_sqlite += time.thread_time() - self._entered
            self._entered = None

    def measure(self, log: SessionLog) -> None:
        checkpoint = log.checkpoint

        def timed(*args: Any, **kwargs: Any) -> None:
            self._in_sqlite = 0.0
            began = time.thread_time()
            try:
                checkpoint(*args, **kwargs)
            finally:
                self.per_checkpoint.append(time.thread_time() - began - self._in_sqlite)

        log.checkpoint = timed  # type: ignore[method-assign]


_SQLITE_TYPES = (sqlite3.Connection, sqlite3.Cursor)


@pytest.fixture
def gil_work() -> Iterator[_GilWork]:
    work = _GilWork()
    threading.setprofile(work.profile)  # threads started from here on
    try:
        yield work
    finally:
        threading.setprofile(None)


def _run_checkpoints(db: Path, checkpoints: int, start_minutes: float, work: _GilWork) -> None:
    """A session's checkpoints through the real writer thread, one every 5 s of envelope."""
    t0 = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
    with SessionLog(db) as log:
        session_id = log.start_session(
            patient_id="P001", device_id="LIV-0001", firmware_version="1.2.0",
            protocol_sha256="0" * 64, protocol_json="{}", started_utc=t0, timezone="UTC",
            local_date=date(2026, 1, 10), slot=1, minutes_prescribed=10.0, target_g=0.3,
        )  # fmt: skip
        envelope: list[tuple[float, float]] = []
        points = round(start_minutes * 600)
        envelope += [(i / 10, 0.3 + 1e-5 * (i % 13)) for i in range(points)]
        for k in range(0, points, 50):  # the session so far, checkpointed as it ran
            log.checkpoint(
                session_id, minutes_at_dose=k / 600, envelope=envelope[: k + 50],
                freqs_hz=[45.0], safety_events=[], mean_error_pct=0.1, p95_abs_error_pct=0.4,
                exposure=None, now_utc=t0 + timedelta(seconds=k / 10),
            )  # fmt: skip
        work.measure(log)
        writer = runner._CheckpointWriter(log, session_id)
        try:
            for k in range(checkpoints):
                envelope += [((points + i) / 10, 0.3) for i in range(50)]
                points += 50
                measured = {
                    "minutes_at_dose": points / 600, "envelope": list(envelope),
                    "freqs_hz": [45.0], "safety_events": [], "mean_error_pct": 0.1,
                    "p95_abs_error_pct": 0.4, "exposure": None, "error_uncertainty_pct": 0.1,
                }  # fmt: skip
                writer.submit(measured, t0 + timedelta(seconds=5 * k), points / 10)
                deadline = time.monotonic() + 5.0
                while writer.written + writer.failures <= k and time.monotonic() < deadline:
                    time.sleep(0.001)  # the next checkpoint comes 5 s of plate time later
        finally:
            writer.close()
        assert writer.failures == 0


def test_a_checkpoint_holds_the_gil_briefly_at_the_end_of_a_session(
    tmp_path: Path, gil_work: _GilWork
) -> None:
    """At the end of a 10-minute session (6000 envelope points), as at its start.

    The garbage collector is held off meanwhile: it runs in whichever thread allocates when it
    is due, whatever the log does, and after a long test run its pauses are the test process's.
    """
    gc.collect()
    gc.disable()
    try:
        _run_checkpoints(tmp_path / "log.db", checkpoints=12, start_minutes=9.0, work=gil_work)
    finally:
        gc.enable()
    assert len(gil_work.per_checkpoint) == 12
    # The 2 ms target itself is a benchmark's (`benchmarks/bench_speed.py --parts delay`,
    # docs/performance.md): CPU time stretches inside a long test process on a shared machine
    # (1.1-1.4 ms alone, about 2 ms late in a full run). This test keeps out what the target was
    # set against: checkpoints that re-serialised the whole envelope, 24-67 ms at this length.
    assert max(gil_work.per_checkpoint) < REGRESSION_LIMIT_S, gil_work.per_checkpoint


def test_the_measure_sees_a_writer_that_holds_the_gil(
    tmp_path: Path, gil_work: _GilWork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The measure above is not blind: Python work of 5 ms in a checkpoint is seen."""
    checkpoint = SessionLog.checkpoint

    def busy(self: SessionLog, *args: Any, **kwargs: Any) -> None:
        began = time.thread_time()
        while time.thread_time() - began < 0.005:
            sum(range(100))
        checkpoint(self, *args, **kwargs)

    monkeypatch.setattr(SessionLog, "checkpoint", busy)
    _run_checkpoints(tmp_path / "log.db", checkpoints=3, start_minutes=1.0, work=gil_work)
    assert min(gil_work.per_checkpoint) >= 0.005


def test_the_writer_leaves_the_switch_interval_alone(tmp_path: Path) -> None:
    """The GIL switch interval is process-wide: the writer does not change it (it once cut it
    to 0.5 ms while it existed, for checkpoints that re-serialised the whole envelope)."""
    before = sys.getswitchinterval()
    with SessionLog(tmp_path / "log.db") as log:
        writer = runner._CheckpointWriter(log, "session")
        try:
            assert sys.getswitchinterval() == before
        finally:
            writer.close()
    assert sys.getswitchinterval() == before
