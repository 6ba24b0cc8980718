"""The benchmark's cached years of log are rebuilt when the generator that made them changed."""

from __future__ import annotations

from pathlib import Path

from benchmarks import bench_log
from benchmarks.make_log import DEVICE_ID, make_log
from firmware_bridge.sim.nvstore import DeviceNv

YEARS = 0.02  # a week: the cache's rules, not its size


def test_a_log_cached_by_an_older_generator_is_built_anew(tmp_path: Path) -> None:
    # A cache left by a generator from before countersigning: a log, no plate memory, no stamp.
    stale = tmp_path / f"home-{YEARS}y" / "liv.db"
    stale.parent.mkdir(parents=True)
    make_log(stale, years=YEARS)
    db, home, start_home = bench_log.build(tmp_path, YEARS)
    assert db == stale
    assert DeviceNv(db.parent / "nv", DEVICE_ID).state.counter > 0  # countersigned anew
    assert (start_home.root / "nv").is_dir()
    built = (db.parent / "built-by").read_text(encoding="utf-8")
    mtime = db.stat().st_mtime_ns
    bench_log.build(tmp_path, YEARS)  # the same generator: the cache is kept
    assert db.stat().st_mtime_ns == mtime
    assert (db.parent / "built-by").read_text(encoding="utf-8") == built
    assert home.root == db.parent
