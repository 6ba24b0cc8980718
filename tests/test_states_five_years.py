"""A five-year log: the patient's commands on the log a home holds at the end of a long study.

Five years of twice-daily sessions (3650 records, ending yesterday) are written as the runner
writes them, countersigned by the plate whose memory the test keeps (benchmarks/make_log.py,
the benchmark's generator, with a thin envelope so that the test stays fast; the envelope is
never read on these paths, tests/test_log_scale.py). Then, through the public command line in
subprocesses: ``liv status`` sees the streak and today's sessions; ``liv start`` runs today's
first session on that plate (its dose judged from the truth file) and chains it after the five
years; ``liv status``, ``liv report`` and ``liv verify`` (which checks every countersignature)
see it.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from benchmarks.make_log import DEVICE_ID, ZONE, bench_protocol, make_log
from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from firmware_bridge.sim.nvstore import DeviceNv
from sessions.home import LivHome
from sessions.log import PINS_FILE, DevicePins, SessionLog, SessionStatus
from tests.simhelpers import install_signed, load_truth, truth_amplitude
from tests.test_fault_matrix import REPO

YEARS = 5


def liv(home: LivHome, *argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "sessions.cli", *argv, "--home", str(home.root)],
        capture_output=True, text=True, cwd=REPO, timeout=110, check=False,
    )  # fmt: skip
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


@pytest.mark.slow
def test_the_patients_commands_on_a_five_year_log(tmp_path: Path) -> None:
    home = LivHome(tmp_path / "home")
    home.ensure()
    nv = tmp_path / "plate-memory"
    count = make_log(home.db_path(), years=YEARS, points_per_s=0.05, nv=nv)
    assert count >= 2 * 5 * 365
    (home.root / "DEMO").write_text("demo\n")  # today's simulated session counts with them
    with SessionLog(home.db_path()) as log:
        first = min(s.local_date for s in log.summaries())
    days = count // 2
    prescription = bench_protocol(first, days) | {"minutes_per_session": 1}
    install_signed(home, yaml.safe_dump(prescription))
    DevicePins(home.root / PINS_FILE).pin(DEVICE_ID, DeviceNv(nv, DEVICE_ID).public_key, 1)
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
        home.calibrations().save(identify(device))

    before = liv(home, "status")
    assert before.returncode == 0, before.stderr
    assert f"Every session done {days} days in a row." in before.stdout, before.stdout
    assert "Session 1: not done yet." in before.stdout

    truth_path = tmp_path / "truth.npz"
    plate = f"sim://?speed=max&mass=70&seed=2&device_id={DEVICE_ID}&nv={nv}&truth={truth_path}"
    start = liv(home, "start", "--device", plate)
    assert start.returncode == 0, start.stdout + start.stderr
    assert "Session complete" in start.stdout
    truth = load_truth(truth_path)
    hold = (truth["t_s"] > 4.0) & (truth["t_s"] < 60.0)
    assert truth_amplitude(truth, hold) == pytest.approx(0.3, rel=0.05)

    with SessionLog(home.db_path(), read_only=True) as log:
        records = log.summaries()
    today = datetime.now(UTC).astimezone(ZoneInfo(ZONE)).date()
    (new,) = [s for s in records if s.local_date == today]
    assert new.status is SessionStatus.COMPLETED
    assert (new.slot, new.minutes_at_dose) == (1, pytest.approx(1.0))
    assert len(records) == count + 1
    assert max(s.local_date for s in records if s is not new) == today - timedelta(days=1)

    after = liv(home, "status")
    assert "Session 1: done." in after.stdout, after.stdout
    assert "Session 2: not done yet." in after.stdout
    report = liv(home, "report", "--format", "json")
    assert report.returncode == 0, report.stderr
    verify = liv(home, "verify", "--device", plate.replace(f"&truth={truth_path}", ""))
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "every chain intact" in verify.stdout
    assert f"{count + 1} vouched for by the plate" in verify.stdout
