"""``liv demo``: two weeks of clearly labelled simulated history, then its report."""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from controller.privatefiles import write_private_file
from firmware_bridge.sim.nvstore import ENV_STATE_DIR
from sessions.commands.common import open_log, pins_of
from sessions.commands.protocols import plain_protocol
from sessions.commands.reporting import report_text
from sessions.commands.start import start_session
from sessions.commands.status import _status_of_log, status_lines
from sessions.home import LivHome, SetupError
from sessions.log import (
    DevicePins,
    SessionLog,
    running_locks_folder,
)
from sessions.prescription import (
    sign_protocol_bytes,
)
from sessions.protocol import (
    PatientProtocol,
    protocol_from_dict,
)
from sessions.stops import STOP_CTRL_C
from sessions.text import echo
from sessions.wording import (
    say,
)

if TYPE_CHECKING:
    from controller.calibration import CalibrationStore
    from sessions.runner import Progress, SessionOutcome

DEMO_DEVICE = "SIM-DEMO"
# Sessions of one minute, so that two weeks of history run in seconds on the simulated plate; a
# real prescription is about ten (docs/cli.md).
DEMO_MINUTES = 1.0
DEMO_MARKER = "This directory holds a demo: simulated sessions of a made-up patient, not therapy.\n"


def demo_protocol(
    today: date, zone: str, minutes_per_session: float = DEMO_MINUTES
) -> PatientProtocol:
    """The made-up patient's prescription, its study starting on ``today``."""
    return protocol_from_dict(
        {
            "patient_id": "DEMO-001",
            "target_g": 0.3,
            "frequency_hz": 30.0,
            "minutes_per_session": minutes_per_session,
            "sessions_per_day": 2,
            "min_gap_hours": 3.0,
            "daily_windows": [],
            "study_start": today.isoformat(),
            "study_end": (today + timedelta(days=358)).isoformat(),
            "timezone": zone,
            "dose_tolerance": 0.1,
        }
    )


def _demo_root(args: argparse.Namespace) -> Path:
    """A directory of the demo's own: a new temporary one, or ``--home`` if new or empty."""
    if not args.home:
        return Path(tempfile.mkdtemp(prefix="liv-demo-"))
    root = Path(args.home).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise SetupError(
            f"{root} is not empty: the demo writes only into a new or empty directory so that "
            "it never touches real data; give another --home or leave it out"
        )
    return root


@dataclass(frozen=True)
class DemoSession:
    """One session of the demo's history: when it starts, and what happens to it."""

    day: int  # days before today
    slot_time: time  # local start time
    plate: str = ""  # extra sim:// settings (a fault to inject)
    stop_after_s: float | None = None  # the patient presses Ctrl-C after this much dose


# Two weeks before today: every day two sessions, except a missed day (9 days ago), a day with
# only the morning session (5 days ago), a morning cut short by the patient and resumed (11
# days ago) and an evening the plate stopped itself for safety, resumed (3 days ago).
DEMO_DAYS = 14
DEMO_MISSED_DAY = 9
DEMO_MORNING_ONLY_DAY = 5


def demo_history(days: int = DEMO_DAYS) -> list[DemoSession]:
    plan: list[DemoSession] = []
    for day in range(days, 0, -1):
        if day == DEMO_MISSED_DAY:
            continue
        if day == 11:
            plan.append(DemoSession(day, time(7, 40), stop_after_s=25.0))
            plan.append(DemoSession(day, time(8, 10)))
        else:
            plan.append(DemoSession(day, time(7, 45) if day % 2 else time(8, 20)))
        if day == DEMO_MORNING_ONLY_DAY:
            continue
        if day == 3:
            plan.append(DemoSession(day, time(18, 30), plate="&sensor_stuck_at=16"))
            plan.append(DemoSession(day, time(19, 5)))
        else:
            plan.append(DemoSession(day, time(18, 15) if day % 3 else time(20, 0)))
    return plan


class _DemoClock:
    """The simulated clock of a history session: its start, advanced by the plate's own time."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.elapsed_s = 0.0

    def now(self) -> datetime:
        return self.start + timedelta(seconds=self.elapsed_s)


def run_demo_history(
    log: SessionLog,
    protocol: PatientProtocol,
    calibrations: CalibrationStore,
    today: date,
    plan: Sequence[DemoSession],
    pins: DevicePins | None = None,
    plate: str = f"device_id={DEMO_DEVICE}",
) -> list[SessionOutcome]:
    """Run ``plan`` on the simulated plate (fast, deterministic) under a simulated clock, as in
    a demo home: its simulated sessions count (and resume) like therapy; ``pins``: the home's
    paired plates, so that the demo's plate vouches for its records as a real one would;
    ``plate``: the sim:// keys naming the plate (its id and where its memory is)."""
    from sessions.runner import StopRequest, run_session

    outcomes = []
    for n, item in enumerate(plan):
        local = datetime.combine(today - timedelta(days=item.day), item.slot_time, protocol.zone)
        clock = _DemoClock(local.astimezone(UTC))

        def progress(p: Progress, clock: _DemoClock = clock, item: DemoSession = item) -> None:
            clock.elapsed_s = p.elapsed_s
            if item.stop_after_s is not None and p.at_dose_s >= item.stop_after_s:
                raise StopRequest(STOP_CTRL_C)  # as the patient's Ctrl-C

        outcome = run_session(
            protocol=protocol,
            log=log,
            device_url=f"sim://?mass=70&seed={10 + n}&{plate}{item.plate}",
            calibrations=calibrations,
            on_progress=progress,
            now=clock.now,
            demo=True,
            pins=pins,
        )
        outcomes.append(outcome)
    return outcomes


def cmd_demo(args: argparse.Namespace) -> int:
    import yaml

    from controller.calibration import identify
    from firmware_bridge.client import DeviceClient

    # The demo never uses the user's installation: no --home/$LIV_HOME resolution, no $LIV_DB,
    # no $LIV_CALIBRATION_DIR. Everything it writes is inside its own directory.
    root = _demo_root(args)
    home = LivHome(root)
    home.ensure()
    # The demo's simulated plate keeps its key and counter inside the demo's directory too
    # (docs/simulator.md), unless the caller chose a place for simulated plates' memory. The
    # place is written into the plate's URL, so that the commands the demo suggests afterwards
    # talk to the same plate, with the key this home was paired with.
    memory = os.environ.get(ENV_STATE_DIR) or str(root / "plate-memory")
    Path(memory).mkdir(mode=0o700, parents=True, exist_ok=True)  # private, like the rest
    plate = f"device_id={DEMO_DEVICE}&nv={quote(memory, safe='/')}"
    # Marks every session here as simulated: never counted as therapy (docs/sessions.md).
    write_private_file(root / "DEMO", DEMO_MARKER.encode("utf-8"))
    args.home, args.db, args.calibration_dir = str(root), None, None
    echo(say("demo.banner"))
    echo(f"Demo data is kept in {root}")
    zone = "UTC"
    today = datetime.now(UTC).date()
    protocol = demo_protocol(today - timedelta(days=DEMO_DAYS), zone)
    # The demo plays the clinic too: a DEMO clinic key of its own, kept inside the demo's
    # directory, enrols the demo home and signs the demo protocol, which is then installed
    # the way a clinic's prescription is (docs/trust.md). No real home ever trusts this key.
    from sessions.clinic.keys import init_clinic_key, load_signing_key

    demo_clinic = init_clinic_key(root / "demo-clinic")
    home.enrol(demo_clinic.public_key)
    echo(f"DEMO clinic key {demo_clinic.fingerprint} (made for this demo only, in {root})")
    protocol_file = root / "demo-protocol.signed.yaml"
    text = "# DEMO prescription, signed by the DEMO clinic key: not a real patient's\n"
    text += yaml.safe_dump(protocol.to_dict(), sort_keys=False)
    signed = sign_protocol_bytes(text.encode("utf-8"), load_signing_key(demo_clinic.private_key))
    write_private_file(protocol_file, signed)
    home.install_protocol(protocol_file)
    echo(plain_protocol(protocol))
    echo("Setting up the empty simulated plate ...")
    with DeviceClient.open(f"sim://?mass=0&seed=1&{plate}") as device:
        home.calibrations().save(identify(device))
    plan = demo_history()
    echo(
        f"Running {len(plan)} simulated sessions of the last {DEMO_DAYS} days, with a missed "
        "day, a session cut short and a safety stop ..."
    )
    with open_log(args, home) as log:
        run_demo_history(
            log, protocol, home.calibrations(), today, plan, pins_of(home), plate=plate
        )
    sim_url = f"sim://?mass=70&seed=2&{plate}"
    home.set_device(sim_url)
    echo("\nToday's first session, as the patient sees it:")
    args.device = None
    args.override = None
    start_session(args, home, sim_url, sys.stdout)
    echo()
    now = datetime.now(UTC)
    with open_log(args, home) as log:
        recent, minutes = _status_of_log(log, protocol, now, home.is_demo)
        logged = len(log.summaries(patient_id=protocol.patient_id))
        verified = log.verify()
    # today's session just ended with the sentence that opens a demo home's status
    lines = status_lines(protocol, recent, now, minutes, demo=home.is_demo, heading=False)
    echo("\n".join(lines))
    echo(
        f"\nThe log holds {logged} sessions; its record checks {'pass' if verified.ok else 'FAIL'}."
    )
    args.patient = args.since = args.until = None
    report = root / "report.html"
    with open_log(args, home) as log:
        write_private_file(report, report_text(args, home, log, "html").encode("utf-8"))
    echo(f"The clinician's report: {report}")
    drop_running_locks_folder(home.db_path())
    liv, where = invoked_as(), shlex.quote(str(root))
    echo("To look again:")
    echo(f"  {liv} status --home {where}")
    echo(f"  {liv} report --home {where}")
    echo(f"  {liv} report --home {where} --format html --out report.html")
    return 0


def drop_running_locks_folder(db_path: Path) -> None:
    """No session runs any more: the empty folder of running sessions' locks beside the log at
    ``db_path`` goes (named by the log: :func:`~sessions.log.running_locks_folder`). A folder
    that still holds a lock file (or a note for recovery) stays."""
    with contextlib.suppress(OSError):
        running_locks_folder(db_path).rmdir()


def invoked_as(argv0: str | None = None) -> str:
    """How to type ``liv`` again, as this run was started: ``liv`` when that is what the shell
    finds, else the program's own path (e.g. a venv's ``.venv/bin/liv``, not on PATH), or
    ``PYTHON -m liv`` for ``python -m liv``."""
    program = sys.argv[0] if argv0 is None else argv0
    if Path(program).name == "__main__.py":
        return f"{shlex.quote(sys.executable)} -m liv"
    if Path(program).name != "liv":
        return "liv"  # started some other way (a test, an embedding program)
    found = shutil.which("liv")
    if found and os.path.samefile(found, program):
        return "liv"
    return shlex.quote(os.path.abspath(program))
