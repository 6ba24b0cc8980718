"""Durability of the session log under SIGKILL at random moments.

    python benchmarks/durability.py [--trials 100] [--seed 1] [--speed 20] [--json out.json]

Each trial starts ``liv start`` as its own process against a simulated plate running at
``--speed`` x real time (``sim://?speed=20``: a 1-minute session takes about 3 s), in one home
and one log shared by every trial, sleeps a random time and SIGKILLs it. The next trial's
``liv start`` recovers the killed session; the last one is recovered at the end with the same
call (``SessionLog.recover_interrupted``). After every trial the log is opened with SessionLog
and must verify (hash chains) and pass SQLite's own integrity check.

Dose time lost. The process's stdout is a pseudo-terminal, so the progress line the patient
watches is rewritten on every control update (each 20 ms of plate time) with the minutes still
due, rounded to the second. The last line it wrote before the kill is the session's own dose
clock at that moment: ``displayed = due - remaining``. The session's row, read right after
the kill, holds the dose of its last checkpoint: ``recorded``. Recovery keeps exactly that.
So ``lost = displayed - recorded``, in plate seconds at dose, to +/-0.5 s (display rounding).
A cross-check that needs no display: ``speed x (kill - last checkpoint)`` of wall time, capped
at the dose still due, assumes the plate was at dose since the checkpoint (an upper estimate
in the hold; it ignores a host running behind the plate). Checkpoints come every 5 s of plate
time (sessions/runner.py CHECKPOINT_S, wall or device clock, whichever first): at speed 20 the
device clock sets the cadence, so the expected worst case is about 5 s. The control loop hands
each checkpoint to a writer thread; a kill while a write is under way loses that snapshot too,
so the bound is the cadence plus the time of one write.

Prints a table and writes JSON (``--json -`` for stdout).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import pty
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.output import write_json  # noqa: E402
from controller.calibration import identify  # noqa: E402
from firmware_bridge.client import DeviceClient  # noqa: E402
from firmware_bridge.errors import LivError  # noqa: E402
from sessions.clinic.keys import init_clinic_key, load_signing_key, sign_protocol_file  # noqa: E402
from sessions.home import LivHome  # noqa: E402
from sessions.log import SessionLog, SessionStatus  # noqa: E402
from sessions.runner import CHECKPOINT_S  # noqa: E402

DEVICE_ID = "SIM-DUR"
MINUTES = 1.0
RAMP_UP_S = 2.0  # ExposureSettings default: not at dose yet
PROGRESS = re.compile(r"(\d+):(\d\d) left")  # the progress line (docs/cli.md)


def protocol_text() -> str:
    today = datetime.now(UTC).date()
    return f"""\
patient_id: P-DURABILITY
target_g: 0.3
frequency_hz: 45
minutes_per_session: {MINUTES:g}
sessions_per_day: 4
min_gap_hours: 0
study_start: {(today - timedelta(days=1)).isoformat()}
study_end: {(today + timedelta(days=30)).isoformat()}
timezone: UTC
"""


def make_home(root: Path) -> LivHome:
    home = LivHome(root / "home")
    home.ensure()
    source = root / "protocol.yaml"
    source.write_text(protocol_text())
    # the benchmark plays the clinic: its own key signs the protocol (docs/trust.md)
    clinic = init_clinic_key(root / "clinic")
    home.enrol(clinic.public_key)
    signed = root / "protocol.signed.yaml"
    signed.write_bytes(sign_protocol_file(source, load_signing_key(clinic.private_key)).data)
    home.install_protocol(signed)
    with DeviceClient.open(f"sim://?mass=0&seed=1&device_id={DEVICE_ID}") as device:
        home.calibrations().save(identify(device))
    return home


class Display:
    """Reads the session's terminal in a thread and keeps the last progress line."""

    def __init__(self, master_fd: int) -> None:
        self.fd = master_fd
        self.text = ""
        self.remaining_s: int | None = None
        self.lines = 0
        self._tail = ""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        chunks: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: every holder of the terminal has closed it
                break
            if not data:
                break
            text = data.decode("utf-8", "replace")
            chunks.append(text)
            matches = list(PROGRESS.finditer(self._tail + text))
            if matches:
                minutes, seconds = matches[-1].groups()
                self.remaining_s = int(minutes) * 60 + int(seconds)
                self.lines += len(matches)
            self._tail = (self._tail + text)[-80:]
        self.text = "".join(chunks)

    def join(self) -> None:
        self._thread.join(timeout=10)


@dataclass
class Trial:
    trial: int
    kill_after_s: float
    outcome: str  # no_row, killed_running, finished_before_kill
    session_id: str | None = None
    status_after_kill: str | None = None
    due_s: float | None = None  # minutes at dose the session was asked for, in seconds
    displayed_at_dose_s: float | None = None
    recorded_at_dose_s: float | None = None
    lost_s: float | None = None
    wall_estimate_lost_s: float | None = None
    opened: bool = False
    verified: bool = False
    integrity_ok: bool = False
    error: str | None = None
    recovered_with_same_dose: bool | None = None


@dataclass
class Summary:
    trials: int
    speed: float
    seed: int
    opened_every_time: bool
    verified_every_time: bool
    integrity_ok_every_time: bool
    killed_while_running: int
    killed_before_any_row: int
    finished_before_kill: int
    recovered_as_interrupted: int
    recovered_with_same_dose: int
    max_lost_s: float
    max_wall_estimate_lost_s: float
    mean_lost_s: float
    sessions_in_log: int
    wall_s: float
    python: str = field(default_factory=platform.python_version)
    machine: str = field(default_factory=platform.machine)


def check_log(db: Path, trial: Trial) -> dict[str, Any] | None:
    """Open and verify the log; return the running row (the killed session), if any."""
    try:
        with SessionLog(db) as log:
            trial.opened = True
            trial.verified = log.verify().ok
            running = [r for r in log.sessions() if r.status is SessionStatus.RUNNING]
    except LivError as exc:
        trial.error = str(exc)
        return None
    with contextlib.closing(sqlite3.connect(db)) as conn:
        trial.integrity_ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    if not running:
        return None
    assert len(running) == 1, "more than one session left running"
    (rec,) = running
    return {
        "session_id": rec.session_id,
        "minutes_at_dose": rec.minutes_at_dose,
        "minutes_prescribed": rec.minutes_prescribed,
        "last_checkpoint_utc": rec.last_checkpoint_utc,
        "started_utc": rec.started_utc,
    }


def known_sessions(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    with SessionLog(db) as log:
        return {r.session_id: r.status.value for r in log.sessions()}


def run_trial(
    index: int, home: LivHome, speed: float, kill_after_s: float, seed: int
) -> tuple[Trial, dict[str, Any] | None]:
    db = home.db_path()
    before = known_sessions(db)
    url = f"sim://?mass=70&seed={seed}&speed={speed:g}&device_id={DEVICE_ID}"
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessions.cli", "start", "--device", url,
             "--home", str(home.root), "--override", "durability benchmark"],
            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        os.close(slave)
    display = Display(master)
    try:
        try:
            proc.wait(timeout=kill_after_s)
            ended_by_itself = True
        except subprocess.TimeoutExpired:
            ended_by_itself = False
        killed_utc = datetime.now(UTC)
        if not ended_by_itself:
            os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        display.join()
    finally:
        os.close(master)
    if "Traceback" in err or "Traceback" in display.text:
        raise RuntimeError(f"trial {index}: a traceback reached the patient:\n{err}")
    trial = Trial(index, round(kill_after_s, 3), "no_row")
    running = check_log(db, trial)
    after = known_sessions(db) if trial.opened else {}
    new = [sid for sid in after if sid not in before]
    if ended_by_itself:
        trial.outcome = "finished_before_kill"
    if new:
        trial.session_id = new[-1]
        trial.status_after_kill = after[new[-1]]
    if running is not None and running["session_id"] in new:
        trial.outcome = "killed_running"
        due_s = running["minutes_prescribed"] * 60.0
        recorded_s = running["minutes_at_dose"] * 60.0
        trial.due_s = round(due_s, 3)
        trial.recorded_at_dose_s = round(recorded_s, 3)
        if display.remaining_s is not None:
            trial.displayed_at_dose_s = round(max(0.0, due_s - display.remaining_s), 3)
            trial.lost_s = round(trial.displayed_at_dose_s - recorded_s, 3)
        since = running["last_checkpoint_utc"] or running["started_utc"]
        plate_s = speed * (killed_utc - since).total_seconds()
        if running["last_checkpoint_utc"] is None:
            plate_s -= RAMP_UP_S
        trial.wall_estimate_lost_s = round(min(max(0.0, plate_s), due_s - recorded_s), 3)
    elif new and not ended_by_itself:
        trial.outcome = "killed_after_finish"
    return trial, running


def summarise(
    trials: list[Trial], log_path: Path, speed: float, seed: int, wall_s: float
) -> Summary:
    with SessionLog(log_path) as log:
        records = log.sessions()
    by_id = {r.session_id: r for r in records}
    for t in trials:
        if t.outcome == "killed_running" and t.session_id in by_id:
            rec = by_id[t.session_id]
            t.recovered_with_same_dose = (
                rec.status is SessionStatus.INTERRUPTED
                and abs(rec.minutes_at_dose * 60.0 - (t.recorded_at_dose_s or 0.0)) < 1e-3
            )
    killed = [t for t in trials if t.outcome == "killed_running"]
    lost = [t.lost_s for t in killed if t.lost_s is not None]
    estimates = [t.wall_estimate_lost_s for t in killed if t.wall_estimate_lost_s is not None]
    return Summary(
        trials=len(trials),
        speed=speed,
        seed=seed,
        opened_every_time=all(t.opened for t in trials),
        verified_every_time=all(t.verified for t in trials),
        integrity_ok_every_time=all(t.integrity_ok for t in trials),
        killed_while_running=len(killed),
        killed_before_any_row=sum(t.outcome == "no_row" for t in trials),
        finished_before_kill=sum(
            t.outcome in ("finished_before_kill", "killed_after_finish") for t in trials
        ),
        recovered_as_interrupted=sum(r.status is SessionStatus.INTERRUPTED for r in records),
        recovered_with_same_dose=sum(bool(t.recovered_with_same_dose) for t in killed),
        max_lost_s=max(lost, default=0.0),
        max_wall_estimate_lost_s=max(estimates, default=0.0),
        mean_lost_s=round(sum(lost) / len(lost), 3) if lost else 0.0,
        sessions_in_log=len(records),
        wall_s=round(wall_s, 1),
    )


def print_table(summary: Summary, trials: list[Trial]) -> None:
    rows = [
        ("trials (SIGKILL at a random moment)", f"{summary.trials}"),
        ("log opened after every trial", f"{summary.opened_every_time}"),
        ("log verified after every trial", f"{summary.verified_every_time}"),
        ("SQLite integrity_check ok every time", f"{summary.integrity_ok_every_time}"),
        ("killed while a session was running", f"{summary.killed_while_running}"),
        ("killed before the session row existed", f"{summary.killed_before_any_row}"),
        ("session finished before the kill", f"{summary.finished_before_kill}"),
        ("sessions recovered as interrupted", f"{summary.recovered_as_interrupted}"),
        ("  ... keeping the dose read after the kill", f"{summary.recovered_with_same_dose}"),
        ("most dose time lost (display - log)", f"{summary.max_lost_s:.2f} s at dose (+/-0.5)"),
        ("mean dose time lost", f"{summary.mean_lost_s:.2f} s at dose"),
        ("most lost, wall-clock estimate", f"{summary.max_wall_estimate_lost_s:.2f} s at dose"),
        ("checkpoint cadence", f"{CHECKPOINT_S:g} s of plate time"),
        ("sessions in the log", f"{summary.sessions_in_log}"),
        ("plate speed", f"{summary.speed:g} x real time"),
        ("wall time", f"{summary.wall_s:g} s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    killed = sorted(
        (t for t in trials if t.lost_s is not None), key=lambda t: t.lost_s or 0.0, reverse=True
    )
    if killed:
        print("\nlargest losses: trial, kill after (s), due, shown at dose, logged, lost (s)")
        for t in killed[:5]:
            print(
                f"  {t.trial:4d} {t.kill_after_s:7.2f} {t.due_s:7.2f} "
                f"{t.displayed_at_dose_s:7.2f} {t.recorded_at_dose_s:7.2f} {t.lost_s:6.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--speed", type=float, default=20.0, help="plate speed x real time")
    parser.add_argument(
        "--max-kill-s", type=float, default=None,
        help="kill within this many wall seconds of the start (default: one full session + 1 s)",
    )  # fmt: skip
    parser.add_argument("--home", type=Path, help="keep the shared home here (default: temp)")
    parser.add_argument("--json", metavar="OUT", help="write JSON here ('-' for stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the table is the output, not log records
    if args.trials < 1 or args.speed <= 0:
        parser.error("--trials must be at least 1 and --speed positive")
    rng = random.Random(args.seed)
    # a whole session: Python start-up and handshake (~1 s), the ramps and the minute at dose
    full_s = 1.0 + (RAMP_UP_S + MINUTES * 60.0 + 1.0) / args.speed
    max_kill_s = args.max_kill_s if args.max_kill_s is not None else full_s + 1.0
    with contextlib.ExitStack() as stack:
        root = args.home or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root.mkdir(parents=True, exist_ok=True)
        home = make_home(root)
        trials: list[Trial] = []
        started = time.monotonic()
        for index in range(args.trials):
            kill_after_s = rng.uniform(0.0, max_kill_s)
            trial, _ = run_trial(index, home, args.speed, kill_after_s, seed=index)
            trials.append(trial)
            print(
                f"trial {index:3d}: kill after {kill_after_s:5.2f} s  {trial.outcome:<22} "
                f"lost {'-' if trial.lost_s is None else f'{trial.lost_s:5.2f} s'}",
                file=sys.stderr,
            )
        with SessionLog(home.db_path()) as log:  # the last kill, recovered as liv start would
            log.recover_interrupted(datetime.now(UTC))
        final = Trial(args.trials, 0.0, "final check")
        check_log(home.db_path(), final)
        summary = summarise(
            trials, home.db_path(), args.speed, args.seed, time.monotonic() - started
        )
        summary.opened_every_time &= final.opened
        summary.verified_every_time &= final.verified
        summary.integrity_ok_every_time &= final.integrity_ok
    print_table(summary, trials)
    data = {
        "command": " ".join(["python", "benchmarks/durability.py", *(argv or sys.argv[1:])]),
        "max_kill_s": round(max_kill_s, 3),
        "summary": asdict(summary),
        "trials": [asdict(t) for t in trials],
    }
    write_json(args.json, data)
    ok = summary.opened_every_time and summary.verified_every_time
    return 0 if ok and summary.integrity_ok_every_time else 1


if __name__ == "__main__":
    sys.exit(main())
