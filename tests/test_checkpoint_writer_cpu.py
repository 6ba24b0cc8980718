"""What benchmarks/bench_checkpoint.py measures: the statements of one checkpoint, counted on the
writer thread, and the writer's figures with the main thread idle or busy (docs/performance.md,
"Session 10: the checkpoint writer")."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from benchmarks import bench_checkpoint
from sessions.log import SessionLog


def test_one_checkpoint_runs_seven_statements() -> None:
    # PRAGMA busy_timeout (the writer's wait), BEGIN IMMEDIATE, UPDATE, SELECT of the last
    # chunk, INSERT of the new one, COMMIT (by ``with conn:``, in C), PRAGMA busy_timeout back
    assert bench_checkpoint.count_statements(4) == 7


def test_the_count_is_the_writer_threads_alone(tmp_path: Path) -> None:
    """Statements of another thread on the same log are not the checkpoint's."""
    envelope = bench_checkpoint._envelope(2)
    with bench_checkpoint._counting() as counts, SessionLog(tmp_path / "liv.db") as log:
        session_id = bench_checkpoint._start(log)
        before = dict(counts)

        def write() -> None:
            snapshot = bench_checkpoint._measured(envelope, 0)
            log.checkpoint(session_id, **snapshot, now_utc=bench_checkpoint.START, wait_s=2.0)

        thread = threading.Thread(target=write)
        thread.start()
        thread.join()
        log.checkpoint(
            session_id,
            **bench_checkpoint._measured(envelope, 1),
            now_utc=bench_checkpoint.START + timedelta(seconds=5),
        )
    assert thread.ident is not None
    assert counts[thread.ident] == 7
    main = threading.get_ident()
    assert counts[main] - before[main] == 5  # no wait given: the busy timeout stays as it is


def test_busy_run_reports_the_writer_and_the_busy_threads_figures() -> None:
    figures = bench_checkpoint.run(3, busy=True)
    assert set(figures) == {
        "wall_ms",
        "wall_max_ms",
        "cpu_ms",
        "cpu_max_ms",
        "busy_gap_max_ms",
        "busy_gap_alone_ms",
    }
    assert 0 < figures["cpu_ms"] <= figures["cpu_max_ms"]
    assert 0 < figures["wall_ms"] <= figures["wall_max_ms"]
    assert figures["busy_gap_max_ms"] > 0
    assert "busy_gap_max_ms" not in bench_checkpoint.run(2, busy=False)
