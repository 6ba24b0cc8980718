"""What the checkpoint writer costs while the control thread is busy (session 10).

    python benchmarks/bench_checkpoint.py [--checkpoints 120] [--repeats 5] [--json FILE]

Runs the checkpoints of a growing 10-minute session (``--checkpoints`` of them, 50 envelope
points each, as ``liv start`` hands them over every 5 s) through the runner's own writer thread
(``sessions.runner._CheckpointWriter``, on a fresh log in a temporary folder), one after
another, in two modes:

- **idle**: the main thread waits for each checkpoint to be written;
- **busy**: the main thread runs pure Python iterations meanwhile (as the control loop does)
  and records the longest gap between two of its iterations (``busy_gap_max_ms``); the same
  loop without a writer gives ``busy_gap_alone_ms``, the gaps the machine makes by itself.

Per checkpoint: the writer's wall time and its CPU (``time.thread_time`` in the writer thread,
around ``SessionLog.checkpoint``), medians (and maxima) over the checkpoints of one run; the
table gives medians over ``--repeats`` runs (min-max), modes alternating. The SQL statements one
checkpoint runs (``sqlite_statements``: the connection's execute, executemany, commit and
rollback calls on the writer thread, ``with conn:`` and PRAGMA included; each releases the
interpreter lock at least once) are counted in a separate run of 20 checkpoints, so a one-off
statement shows as a fraction. ``--json FILE`` (``-``: stdout) writes the figures.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.output import machine_facts, write_json  # noqa: E402
from sessions.log import SessionLog  # noqa: E402
from sessions.runner import _CheckpointWriter  # noqa: E402

POINTS_PER_CHECKPOINT = 50  # 10 envelope points a second, a checkpoint every 5 s
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def _envelope(checkpoints: int) -> list[tuple[float, float]]:
    n = checkpoints * POINTS_PER_CHECKPOINT
    return [(i * 0.1, 0.3 + 0.0123456 * ((i * 7919) % 13 - 6) / 6) for i in range(n)]


def _measured(envelope: list[tuple[float, float]], i: int) -> dict[str, Any]:
    """The snapshot of checkpoint ``i`` (0-based), as ``runner._measured`` builds it."""
    return {
        "minutes_at_dose": (i + 1) * 5.0 / 60.0,
        "envelope": envelope[: (i + 1) * POINTS_PER_CHECKPOINT],
        "freqs_hz": [45.0],
        "safety_events": [],
        "mean_error_pct": -0.42,
        "p95_abs_error_pct": 1.37,
        "error_uncertainty_pct": 0.2,
        "exposure": {"a_w_m_s2": 0.886, "a8_m_s2": 0.181, "vdv_m_s1_75": 5.8},
    }


def _start(log: SessionLog) -> str:
    return log.start_session(
        patient_id="P001",
        device_id="LIV-0001",
        firmware_version="1.2.0",
        protocol_sha256="9f" * 32,
        protocol_json='{"target_g":0.3}',
        started_utc=START,
        timezone="Europe/Berlin",
        local_date=date(2026, 1, 5),
        slot=1,
        minutes_prescribed=10.0,
        target_g=0.3,
    )


class _Timed:
    """Wraps ``log.checkpoint``: wall and thread CPU of each call, an event when it is done."""

    def __init__(self, call: Callable[..., None]) -> None:
        self._call = call
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.done = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            self._call(*args, **kwargs)
        finally:
            self.cpu.append(time.thread_time() - cpu)
            self.wall.append(time.perf_counter() - wall)
            self.done.set()


def _busy_until(done: threading.Event) -> float:
    """Pure Python iterations until ``done``; the longest gap between two of them (s)."""
    longest = 0.0
    last = time.perf_counter()
    while not done.is_set():
        total = 0
        for k in range(200):  # about 10 us of bytecode, like a slice of a control update
            total += k * k
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    return longest


def _busy_for(seconds: float) -> float:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        return _busy_until(stop)
    finally:
        timer.cancel()


class _Counted(sqlite3.Connection):
    """A connection that counts its calls into SQLite (each hands the interpreter lock over)."""

    counts: ClassVar[dict[int, int]] = {}

    def _count(self) -> None:
        ident = threading.get_ident()
        self.counts[ident] = self.counts.get(ident, 0) + 1

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        self._count()
        return super().execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        self._count()
        return super().executemany(*args, **kwargs)

    def commit(self) -> None:
        self._count()
        super().commit()

    def rollback(self) -> None:
        self._count()
        super().rollback()

    def __exit__(self, *exc: Any) -> Any:  # ``with conn:`` commits (or rolls back) in C
        self._count()
        return super().__exit__(*exc)


@contextmanager
def _counting() -> Iterator[dict[int, int]]:
    """Counts, per thread, the statements run on every connection opened meanwhile."""
    _Counted.counts = {}
    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        return real(*args, factory=_Counted, **kwargs)  # type: ignore[misc]

    sqlite3.connect = connect  # type: ignore[assignment]
    try:
        yield _Counted.counts
    finally:
        sqlite3.connect = real  # type: ignore[assignment]


def _session(checkpoints: int, busy: bool) -> tuple[_Timed, list[float], int]:
    """One session's checkpoints through the writer thread: their timings, the busy thread's
    longest gap during each (busy), and the writer thread's id."""
    envelope = _envelope(checkpoints)
    with (
        tempfile.TemporaryDirectory(prefix="bench-checkpoint-") as folder,
        SessionLog(Path(folder) / "liv.db") as log,
    ):
        session_id = _start(log)
        timed = _Timed(log.checkpoint)
        log.checkpoint = timed  # type: ignore[method-assign]
        writer = _CheckpointWriter(log, session_id)
        ident = writer._thread.ident or 0
        gaps: list[float] = []
        try:
            for i in range(checkpoints):
                timed.done.clear()
                writer.submit(_measured(envelope, i), START + timedelta(seconds=5 * i), i * 5)
                if busy:
                    gaps.append(_busy_until(timed.done))
                else:
                    timed.done.wait()
        finally:
            writer.close()
        if writer.failures or writer.written != checkpoints:
            raise RuntimeError(f"{writer.failures} checkpoint(s) failed")
    return timed, gaps, ident


def run(checkpoints: int, busy: bool) -> dict[str, Any]:
    """Per-checkpoint figures of one session, the main thread idle or busy."""
    timed, gaps, _ = _session(checkpoints, busy)
    result = {
        "wall_ms": statistics.median(timed.wall) * 1e3,
        "wall_max_ms": max(timed.wall) * 1e3,
        "cpu_ms": statistics.median(timed.cpu) * 1e3,
        "cpu_max_ms": max(timed.cpu) * 1e3,
    }
    if busy:
        result["busy_gap_max_ms"] = max(gaps) * 1e3
        result["busy_gap_alone_ms"] = _busy_for(sum(timed.wall)) * 1e3
    return result


def count_statements(checkpoints: int) -> float:
    """SQL statements per checkpoint on the writer thread (a separate, untimed run)."""
    with _counting() as counts:
        _, _, ident = _session(checkpoints, busy=False)
    return counts.get(ident, 0) / checkpoints


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):8.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=120, help="10 minutes: 120")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the figures as JSON ('-': stdout)")
    args = parser.parse_args(argv)
    if args.checkpoints < 1 or args.repeats < 1:
        parser.error("--checkpoints and --repeats must be at least 1")
    runs: dict[str, list[dict[str, Any]]] = {"idle": [], "busy": []}
    for _ in range(args.repeats):
        for mode, results in runs.items():  # alternating, so a noisy minute spreads over both
            results.append(run(args.checkpoints, busy=mode == "busy"))
    statements = {"sqlite_statements": count_statements(20)}
    rows: list[dict[str, Any]] = []
    print(f"checkpoint writer, {args.checkpoints} checkpoints, median of {args.repeats} (min-max)")
    print(f"sqlite statements per checkpoint: {statements['sqlite_statements']:g}")
    for mode, results in runs.items():
        row: dict[str, Any] = {"mode": mode, **statements}
        for key in results[0]:
            values = [r[key] for r in results]
            row[key] = statistics.median(values)
            row[f"{key}_runs"] = values
            print(f"  {mode:4s} {key:18s} {_cell(values)}")
        rows.append(row)
    write_json(
        args.json,
        {
            **machine_facts(),
            "utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sqlite": sqlite3.sqlite_version,
            "switch_interval_s": sys.getswitchinterval(),
            "checkpoints": args.checkpoints,
            "repeats": args.repeats,
            "results": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
