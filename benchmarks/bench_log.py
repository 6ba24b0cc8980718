"""How the log commands scale with years of log: wall time and peak memory of fresh processes.

    python benchmarks/bench_log.py [--repeats 3] [--years 1 5] [--cache DIR] [--json out.json]

Builds one log per length with benchmarks/make_log.py (cached in ``--cache``, default
``$TMPDIR/liv-bench-logs``: building five years takes a few minutes, later runs reuse it), a home
with the generated patient's protocol and a calibrated simulated plate. Then runs each command
``--repeats`` times, each in a fresh ``python -m sessions.cli`` process, and reports the median
(min, max) of its wall time, from spawn to exit, and of its peak resident memory
(``ru_maxrss`` of that child, from ``os.wait4`` in a small runner process: see ``_RUNNER``).

``liv start`` is timed until the plate moves: from spawn until the first progress line, which
the session prints at the first control update after the drive was switched on (the decision,
opening the plate, its handshake, the calibration check and the session row come before it).
The process is then stopped with SIGTERM, as a patient's stop, and its peak memory is read
after it has ramped down and logged the session: it runs on a copy of the log, so the cached
log is never changed. The plate is ``sim://`` in real time.

Prints a table and writes JSON (``--json -`` for stdout).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.make_log import DEVICE_ID, bench_protocol, make_log  # noqa: E402
from benchmarks.output import machine_facts, write_json  # noqa: E402
from benchmarks.signing import signed_by_bench_clinic  # noqa: E402
from controller.calibration import CalibrationStore, identify  # noqa: E402
from firmware_bridge.client import DeviceClient  # noqa: E402
from firmware_bridge.sim.nvstore import DeviceNv  # noqa: E402
from sessions.home import LivHome  # noqa: E402
from sessions.log import PINS_FILE, DevicePins, SessionLog  # noqa: E402
from sessions.log.records import SCHEMA_VERSION  # noqa: E402

PLATE = f"sim://?mass=70&seed=2&device_id={DEVICE_ID}"
START_TIMEOUT_S = 120.0  # the runner's whole run is bounded by five times this


@dataclass
class Run:
    wall_s: float
    peak_mb: float


def _child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("LIV_DB", None)
    env.pop("LIV_HOME", None)
    return env


def _liv(*argv: str) -> list[str]:
    return [sys.executable, "-m", "sessions.cli", *argv]


# Each command is started by this small runner, itself a fresh interpreter without site
# packages: Linux carries a process's peak RSS over fork and exec, so a child started by the
# benchmark itself (numpy, a log in memory) would report the benchmark's peak, not its own.
# The runner's own peak (about 10 MB) is below every command's.
_RUNNER = r"""
import json, os, signal, subprocess, sys, time
mode, argv = sys.argv[1], sys.argv[2:]
begin = time.perf_counter()
out = subprocess.PIPE if mode == "start" else subprocess.DEVNULL
proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE if mode != "start" else
                        subprocess.DEVNULL)
moved = None
if mode == "start":
    while True:
        line = proc.stdout.readline()
        if not line:
            break
        if b"% done)" in line:  # a progress line off a terminal (docs/cli.md)
            moved = time.perf_counter() - begin
            break
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    err = b""
else:
    err = proc.stderr.read()
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - begin
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "wall_s": wall, "moved_s": moved,
                  "peak_kb": usage.ru_maxrss, "err": err.decode(errors="replace")[-400:]}))
"""


def _measured(mode: str, argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-S", "-c", _RUNNER, mode, *argv],
        capture_output=True,
        text=True,
        env=_child_env(),
        cwd=ROOT,
        timeout=START_TIMEOUT_S * 5,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_command(argv: list[str]) -> Run:
    """Wall time from spawn to exit and peak memory of one fresh process."""
    result = _measured("run", argv)
    if result["code"] != 0:
        raise RuntimeError(f"{' '.join(argv[3:])} failed ({result['code']}): {result['err']}")
    return Run(result["wall_s"], result["peak_kb"] / 1024.0)  # Linux: kilobytes


def run_start(home: LivHome) -> Run:
    """``liv start`` until its first progress line (the plate moving); then SIGTERM."""
    plate = f"{PLATE}&nv={home.root / 'nv'}"  # the plate that signed the log (make_log)
    result = _measured("start", _liv("start", "--home", str(home.root), "--device", plate))
    if result["moved_s"] is None:
        raise RuntimeError("liv start never reported the plate moving")
    return Run(result["moved_s"], result["peak_kb"] / 1024.0)


def build(cache: Path, years: float) -> tuple[Path, LivHome, LivHome]:
    """The cached log of ``years`` years, a home reading it and a home for ``liv start``."""
    cache.mkdir(parents=True, exist_ok=True)
    db = cache / f"home-{years}y" / "liv.db"  # where `liv --home` finds it
    db.parent.mkdir(mode=0o700, exist_ok=True)
    stamp = db.parent / "built-by"
    wanted = _builder_stamp()
    if not (db.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted):
        # A log built by another version of the generator (one from before countersigning has
        # no plate memory beside it) would measure another product: build it anew.
        print(f"building {years} year(s) of log in {db} ...", file=sys.stderr)
        stamp.unlink(missing_ok=True)
        db.unlink(missing_ok=True)
        shutil.rmtree(db.parent / "nv", ignore_errors=True)
        partial = cache / f".log-{years}y.{os.getpid()}.db"
        make_log(partial, years=years, nv=cache / f"home-{years}y" / "nv")
        partial.replace(db)
        stamp.write_text(wanted, encoding="utf-8")
    with SessionLog(db) as log:  # brings the schema up to date once; lists the first day
        first = min(s.local_date for s in log.summaries())
    home = _home(db.parent, first, round(years * 365))
    start_home = _home(cache / f"start-{years}y", first, round(years * 365))
    shutil.copyfile(db, start_home.db_path())
    # the plate that countersigned the log (make_log --nv) is paired with both homes; the
    # start home gets a copy of its memory, so that its sessions continue the log's counter
    shutil.copytree(db.parent / "nv", start_home.root / "nv", dirs_exist_ok=True)
    key = DeviceNv(db.parent / "nv", DEVICE_ID).public_key
    for h in (home, start_home):
        DevicePins(h.root / PINS_FILE).pin(DEVICE_ID, key, 1)
    calibration = cache / "calibration"
    if not calibration.exists():
        with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
            CalibrationStore(calibration).save(identify(device))
    for h in (home, start_home):
        shutil.copytree(calibration, h.root / "calibration", dirs_exist_ok=True)
    return db, home, start_home


def _builder_stamp() -> str:
    """What a cached log was built by: the generator's source and the log's schema version."""
    source = (ROOT / "benchmarks" / "make_log.py").read_bytes()
    return f"schema {SCHEMA_VERSION} make_log {hashlib.sha256(source).hexdigest()}\n"


def _home(root: Path, first: Any, days: int) -> LivHome:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    home = LivHome(root)
    home.ensure()
    plan = root.parent / f"{root.name}.yaml"
    plan.write_text(yaml.safe_dump(bench_protocol(first, days)), encoding="utf-8")
    home.install_protocol(signed_by_bench_clinic(root.parent / f"{root.name}-clinic", home, plan))
    return home


def _summary(runs: list[Run]) -> dict[str, float]:
    walls = [r.wall_s for r in runs]
    peaks = [r.peak_mb for r in runs]
    return {
        "wall_s_median": statistics.median(walls),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "peak_mb_median": statistics.median(peaks),
        "peak_mb_min": min(peaks),
        "peak_mb_max": max(peaks),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--years", type=int, nargs="+", default=[1, 5])
    cache = Path(tempfile.gettempdir()) / "liv-bench-logs"
    parser.add_argument("--cache", type=Path, default=cache)
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout)")
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []

    def measure(name: str, years: int | None, once: Any) -> None:
        runs = [once() for _ in range(args.repeats)]
        results.append({"command": name, "years": years, "runs": len(runs), **_summary(runs)})
        row = results[-1]
        print(
            f"{name:<28} {'' if years is None else years:>5} "
            f"{row['wall_s_median']:8.3f} ({row['wall_s_min']:.3f}-{row['wall_s_max']:.3f}) "
            f"{row['peak_mb_median']:7.1f} ({row['peak_mb_min']:.1f}-{row['peak_mb_max']:.1f})",
            file=sys.stderr,
        )

    print(f"{'command':<28} {'years':>5} {'wall s (min-max)':>24} {'peak MB (min-max)':>20}",
          file=sys.stderr)  # fmt: skip
    measure("liv --help", None, lambda: run_command(_liv("--help")))
    for years in args.years:
        db, home, start_home = build(args.cache, years)
        sessions = 2 * round(years * 365)
        h = str(home.root)
        html = ["--format", "html", "--out", str(args.cache / "report.html")]
        measure("liv status", years, lambda h=h: run_command(_liv("status", "--home", h)))
        measure("liv start (plate moves)", years, lambda s=start_home: run_start(s))
        measure(
            "liv report --format html",
            years,
            lambda h=h, html=html: run_command(_liv("report", "--home", h, *html)),
        )  # fmt: skip
        measure("liv verify", years, lambda h=h: run_command(_liv("verify", "--home", h)))
        results[-1]["sessions"] = sessions
        results[-1]["log_mb"] = db.stat().st_size / 1e6
    write_json(args.json, {**machine_facts(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
