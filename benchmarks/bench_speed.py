"""Simulator and loop speed, start-to-move time, memory and the log's delay of the loop (issue 11).

    python benchmarks/bench_speed.py [--repeats 3] [--parts moves speed drive delay scaling]
        [--minutes 1 10 30] [--run-minutes 1 10 60] [--log-years 1 5] [--cache DIR] [--json FILE]

Every figure comes from fresh ``python -m sessions.cli`` processes on ``sim://?speed=max``,
each started by a small runner (``_RUNNER``, as in bench_log.py) that reads the child's peak
resident memory (``ru_maxrss`` from ``os.wait4``; Linux carries a parent's peak over fork and
exec, so the benchmark itself never spawns the measured command).

- **open loop**: ``liv device drive --seconds 600`` (45 Hz, drive 0.1, 2 s ramp up, 1 s down);
  speed = simulated seconds (ramps included) / wall seconds from spawn to exit.
- **closed loop**: ``liv run --seconds 600`` (45 Hz, 0.3 g, 70 kg), the same ratio.
- **patient session**: ``liv start`` of a 10-minute protocol session to its end, the same ratio
  (simulated seconds from the truth file when ``--minutes`` includes the run, else nominal).
- **start until the plate moves**: spawn until the first ``SET_DRIVE`` with a non-zero drive is
  written to the plate (the child wraps ``DeviceClient.set_drive`` and writes a line on stderr
  when it has written one, with its CPU time so far; ``_MOVES``): wall and CPU seconds. The
  session is then stopped with SIGTERM; its peak memory includes the soft stop and the record.
  Homes are fresh (empty log) unless ``--log-years`` asks for the cached bench_log.py logs (building
  five years takes a few minutes once).
- **session length scaling**: ``liv start`` sessions of ``--minutes`` (a protocol allows 1-30)
  and ``liv run`` holds of ``--run-minutes``, each with a truth file, and a one-hour
  ``liv device drive`` with a truth file: wall time, CPU time and peak memory.
- **control delay by the log**: a 10-minute ``liv start`` whose child times every control update
  callback (``_DoseClock.update``: envelope, checkpoint hand-over, progress line) and every loop
  iteration (wall time between successive updates), once as is and once with checkpoints turned
  off (``CHECKPOINT_S`` set to infinity): the log's share is the difference of the maxima, and
  the writer thread's own CPU per checkpoint (``time.thread_time``) is reported too.

The project's bytecode is compiled once first (``compileall``) and children may write their
caches, as an installed program runs. Prints a table and writes JSON with ``--json FILE``
(``-``: stdout). The machine is shared and noisy: figures are medians (min-max) of
``--repeats`` runs made in one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_log  # noqa: E402
from benchmarks.make_log import DEVICE_ID, bench_protocol  # noqa: E402
from benchmarks.output import machine_facts, write_json  # noqa: E402
from benchmarks.signing import signed_by_bench_clinic  # noqa: E402
from controller.calibration import CalibrationStore, identify  # noqa: E402
from firmware_bridge.client import DeviceClient  # noqa: E402
from sessions.home import LivHome  # noqa: E402

PLATE = f"sim://?speed=max&mass=70&seed=2&device_id={DEVICE_ID}"
FREQ_HZ = 45.0
RAMP_UP_S, RAMP_DOWN_S = 2.0, 1.0  # liv device drive, liv run and liv start alike
TIMEOUT_S = 900.0

_RUNNER = r"""
import json, os, signal, subprocess, sys, time
mode, argv = sys.argv[1], sys.argv[2:]
begin = time.perf_counter()
proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
moved = moved_cpu = None
tail = []
if mode == "moves":
    for line in proc.stderr:
        if line.startswith(b"PLATE-MOVES"):
            moved = time.perf_counter() - begin
            moved_cpu = float(line.split()[1])
            proc.send_signal(signal.SIGTERM)
            break
        tail.append(line)
tail.extend(proc.stderr.readlines())
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - begin
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "wall_s": wall, "moved_s": moved,
                  "moved_cpu_s": moved_cpu,
                  "peak_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "err": b"".join(tail).decode(errors="replace")[-1500:]}))
"""

# The child for "until the plate moves": liv itself, with the first non-zero drive announced.
# sessions.cli is imported first, as the liv script does (its start-up settings come first).
_MOVES = r"""
import sys, time
import sessions.cli
from firmware_bridge.client import DeviceClient
from firmware_bridge.protocol import drive_to_q16
_set_drive = DeviceClient.set_drive
_told = []
def _set_drive_and_tell(self, drive, ramp_s, wait=True):
    _set_drive(self, drive, ramp_s, wait)  # written to the plate when this returns
    if not _told and drive_to_q16(drive) > 0:
        _told.append(True)
        sys.stderr.write(f"PLATE-MOVES {time.process_time():.6f}\n")
        sys.stderr.flush()
DeviceClient.set_drive = _set_drive_and_tell
from sessions.cli import main
sys.exit(main(sys.argv[1:]))
"""

# The child for the control delay: liv start with every update and checkpoint timed.
_DELAY = r"""
import json, math, sys, time
import sessions.runner as runner
from sessions.log import SessionLog
out, checkpoints = sys.argv[1], sys.argv[2]
if checkpoints == "off":
    runner.CHECKPOINT_S = math.inf
calls, gaps, writes = [], [], []
last = [None]
update = runner._DoseClock.update
def timed_update(self, u):
    began = time.perf_counter()
    if last[0] is not None:
        gaps.append(began - last[0])
    try:
        return update(self, u)
    finally:
        end = time.perf_counter()
        calls.append(end - began)
        last[0] = end
runner._DoseClock.update = timed_update
checkpoint = SessionLog.checkpoint
def timed_checkpoint(self, *args, **kwargs):
    began = time.thread_time()
    try:
        return checkpoint(self, *args, **kwargs)
    finally:
        writes.append(time.thread_time() - began)
SessionLog.checkpoint = timed_checkpoint
from sessions.cli import main
code = main(sys.argv[3:])
with open(out, "w") as fh:
    json.dump({"code": code, "calls": calls, "gaps": gaps, "writes": writes}, fh)
sys.exit(code)
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    env.pop("LIV_DB", None)
    env.pop("LIV_HOME", None)
    # An installed program runs from cached bytecode: compiling the project's sources again in
    # every process (PYTHONDONTWRITEBYTECODE, set on some development machines) costs 0.3-0.7 s.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_sources() -> None:
    """Write the project's bytecode caches once, as an installation would have them."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "firmware_bridge", "controller", "sessions"],
        cwd=ROOT,
        env=_child_env(),
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _measured(mode: str, argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-S", "-c", _RUNNER, mode, *argv],
        capture_output=True,
        text=True,
        env=_child_env(),
        cwd=ROOT,
        timeout=TIMEOUT_S,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    if result["code"] not in (0, 130) and mode != "moves":
        raise RuntimeError(f"{' '.join(argv[2:])} failed ({result['code']}): {result['err']}")
    return result


def _liv(*argv: str) -> list[str]:
    return [sys.executable, "-m", "sessions.cli", *argv]


class Homes:
    """Fresh homes with a protocol due now and a calibrated plate (calibrated once, cached)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calibration = root / "calibration"
        if not self.calibration.exists():
            with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as d:
                CalibrationStore(self.calibration).save(identify(d))
        self._count = 0

    def fresh(self, minutes: float) -> LivHome:
        self._count += 1
        root = self.root / f"home-{os.getpid()}-{self._count}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, mode=0o700)
        home = LivHome(root)
        home.ensure()
        plan = dict(bench_protocol(date.today(), 1), minutes_per_session=minutes)
        plan_path = root.parent / f"{root.name}.yaml"
        plan_path.write_text(yaml.safe_dump(plan), encoding="utf-8")
        home.install_protocol(signed_by_bench_clinic(self.root / "clinic", home, plan_path))
        shutil.copytree(self.calibration, root / "calibration", dirs_exist_ok=True)
        return home


def _speeds(simulated_s: float, result: dict[str, Any]) -> dict[str, Any]:
    """Simulated seconds per wall second and per CPU second of the child, wall, CPU, peak."""
    return {
        "x_real_time": simulated_s / result["wall_s"],
        "x_per_cpu_s": simulated_s / result["cpu_s"],
        "wall_s": result["wall_s"],
        "cpu_s": result["cpu_s"],
        "peak_mb": result["peak_kb"] / 1024.0,
    }


def _truth_seconds(path: Path) -> float:
    with np.load(path) as data:
        return float(data["t_s"].size / data["sample_rate_hz"])


def _row(name: str, runs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"measure": name, "runs": len(runs), **extra}
    for key in runs[0]:
        values = [r[key] for r in runs]
        row[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    return row


def _print_row(row: dict[str, Any]) -> None:
    cells = []
    for key, value in row.items():
        if isinstance(value, dict):
            cells.append(f"{key} {value['median']:.4g} ({value['min']:.4g}-{value['max']:.4g})")
    print(f"{row['measure']:<44} " + "  ".join(cells), file=sys.stderr, flush=True)


def measure_open_loop(seconds: float) -> dict[str, Any]:
    argv = [
        "device",
        "drive",
        "--engineer",
        "--device",
        PLATE,
        "--freq",
        f"{FREQ_HZ:g}",
        "--drive",
        "0.1",
    ]
    result = _measured("exit", _liv(*argv, "--seconds", f"{seconds:g}"))
    simulated = RAMP_UP_S + seconds + RAMP_DOWN_S
    return _speeds(simulated, result)


def measure_run(homes: Homes, seconds: float, truth: Path | None = None) -> dict[str, Any]:
    home = homes.fresh(10.0)
    plate = PLATE + (f"&truth={truth}" if truth else "")
    argv = ["run", "--engineer", "--device", plate, "--freq", f"{FREQ_HZ:g}", "--amplitude", "0.3"]
    result = _measured("exit", _liv(*argv, "--seconds", f"{seconds:g}", "--home", str(home.root)))
    simulated = _truth_seconds(truth) if truth else RAMP_UP_S + seconds + RAMP_DOWN_S
    return _speeds(simulated, result)


def measure_session(homes: Homes, minutes: float, truth: Path | None = None) -> dict[str, Any]:
    home = homes.fresh(minutes)
    plate = PLATE + (f"&truth={truth}" if truth else "")
    result = _measured("exit", _liv("start", "--home", str(home.root), "--device", plate))
    if result["code"] != 0:
        raise RuntimeError(f"liv start failed ({result['code']}): {result['err']}")
    simulated = _truth_seconds(truth) if truth else RAMP_UP_S + minutes * 60.0 + RAMP_DOWN_S
    return _speeds(simulated, result)


def measure_moves(home_root: Path, plate: str = PLATE) -> dict[str, Any]:
    argv = [sys.executable, "-c", _MOVES, "start", "--home", str(home_root), "--device", plate]
    result = _measured("moves", argv)
    if result["moved_s"] is None:
        raise RuntimeError(f"liv start never moved the plate: {result['err']}")
    return {
        "moved_s": result["moved_s"],
        "moved_cpu_s": result["moved_cpu_s"],
        "peak_mb": result["peak_kb"] / 1024.0,
    }


def measure_delay(homes: Homes, checkpoints: str, workdir: Path) -> dict[str, Any]:
    home = homes.fresh(10.0)
    out = workdir / f"delay-{checkpoints}.json"
    argv = [sys.executable, "-c", _DELAY, str(out), checkpoints]
    _measured("exit", [*argv, "start", "--home", str(home.root), "--device", PLATE])
    data = json.loads(out.read_text(encoding="utf-8"))
    calls = np.array(data["calls"]) * 1e3
    gaps = np.array(data["gaps"]) * 1e3
    writes = np.array(data["writes"] or [0.0]) * 1e3
    return {
        "update_max_ms": float(calls.max()),
        "update_p999_ms": float(np.percentile(calls, 99.9)),
        "iteration_max_ms": float(gaps.max()),
        "iteration_p999_ms": float(np.percentile(gaps, 99.9)),
        "iteration_median_ms": float(np.median(gaps)),
        "checkpoints": float(len(data["writes"])),
        "checkpoint_cpu_max_ms": float(writes.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--minutes", type=float, nargs="*", default=[1.0, 10.0, 30.0], help="liv start sessions"
    )
    parser.add_argument(
        "--run-minutes", type=float, nargs="*", default=[1.0, 10.0, 60.0], help="liv run holds"
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["moves", "speed", "drive", "delay", "scaling"],
        default=["moves", "speed", "delay", "scaling"],
        help="drive: the open-loop row of speed alone",
    )
    parser.add_argument("--log-years", type=int, nargs="*", default=[])
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "liv-bench")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON ('-': stdout)")
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    compile_sources()
    homes = Homes(args.cache)
    workdir = Path(tempfile.mkdtemp(prefix="bench-speed-", dir=args.cache))
    rows: list[dict[str, Any]] = []

    def measure(name: str, once: Callable[[], dict[str, Any]], **extra: Any) -> None:
        rows.append(_row(name, [once() for _ in range(args.repeats)], **extra))
        _print_row(rows[-1])

    parts = set(args.parts)
    if "moves" in parts:
        measure(
            "liv start until the plate moves (empty log)",
            lambda: measure_moves(homes.fresh(10.0).root),
        )
        for years in args.log_years:
            logs = Path(tempfile.gettempdir()) / "liv-bench-logs"
            _, _, start_home = bench_log.build(logs, years)
            # the plate that countersigned the log, paired with the home (bench_log.run_start)
            plate = f"{PLATE}&nv={start_home.root / 'nv'}"
            measure(
                f"liv start until the plate moves ({years} y log)",
                lambda h=start_home.root, p=plate: measure_moves(h, p),  # type: ignore[misc]
                years=years,
            )
    if parts & {"speed", "drive"}:
        measure("open loop: liv device drive, 10 min", lambda: measure_open_loop(600.0))
    if "speed" in parts:
        measure("closed loop: liv run, 10 min", lambda: measure_run(homes, 600.0))
        measure("patient session: liv start, 10 min", lambda: measure_session(homes, 10.0))
    if "delay" in parts:
        for checkpoints in ("on", "off"):
            measure(
                f"control delay, 10-min session, checkpoints {checkpoints}",
                lambda c=checkpoints: measure_delay(homes, c, workdir),  # type: ignore[misc]
            )
    if "scaling" in parts:
        for minutes in args.minutes:
            truth = workdir / f"start-{minutes:g}.npz"
            measure(
                f"liv start, {minutes:g} min, truth file",
                lambda m=minutes, t=truth: measure_session(homes, m, t),  # type: ignore[misc]
                minutes=minutes,
            )
        for minutes in args.run_minutes:
            truth = workdir / f"run-{minutes:g}.npz"
            measure(
                f"liv run, {minutes:g} min, truth file",
                lambda m=minutes, t=truth: measure_run(homes, m * 60.0, t),  # type: ignore[misc]
                minutes=minutes,
            )
        truth = workdir / "drive-60.npz"
        measure(
            "liv device drive, 60 min, truth file",
            lambda: measure_open_loop_truth(3600.0, truth),
            minutes=60.0,
        )
    return _finish(args, rows, workdir)


def _finish(args: argparse.Namespace, rows: list[dict[str, Any]], workdir: Path) -> int:
    shutil.rmtree(workdir, ignore_errors=True)
    write_json(args.json, {**machine_facts(), "numpy": np.__version__, "results": rows})
    return 0


def measure_open_loop_truth(seconds: float, truth: Path) -> dict[str, Any]:
    argv = [
        "device",
        "drive",
        "--engineer",
        "--device",
        f"{PLATE}&truth={truth}",
        "--freq",
        f"{FREQ_HZ:g}",
    ]
    result = _measured("exit", _liv(*argv, "--drive", "0.1", "--seconds", f"{seconds:g}"))
    return _speeds(_truth_seconds(truth), result)


if __name__ == "__main__":
    sys.exit(main())
