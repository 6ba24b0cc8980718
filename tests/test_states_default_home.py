"""The default data directory: a user who never sets ``--home``, ``LIV_HOME`` or any ``LIV_*``.

The whole first week of a real installation runs through the public command line in a
subprocess, with ``HOME`` a fresh directory and ``XDG_DATA_HOME`` / ``XDG_STATE_HOME`` unset or
set: the clinic makes its key and signs the prescription, the home is enrolled, the
prescription installed, the plate configured and calibrated, a session run on it (judged from
the simulator's truth file), then status, sessions, verify and report. Every file lands in the
one default directory of each role (docs/cli.md, "Where the data lives"), nothing else in the
user's home directory, and every later command finds what the earlier ones wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sessions.log import SessionKind, SessionLog, SessionStatus
from tests.simhelpers import load_truth, protocol_yaml, truth_amplitude
from tests.test_fault_matrix import REPO

DEVICE_ID = "SIM-HOME"
TARGET_G = 0.3
# Nothing of the test suite's own: the user's environment has none of these.
OURS = (
    "LIV_HOME", "LIV_DB", "LIV_CALIBRATION_DIR", "LIV_CLINIC_HOME", "LIV_CLINIC_DB",
    "LIV_SIM_STATE_DIR", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CONFIG_HOME",
)  # fmt: skip


@dataclass
class User:
    home: Path  # $HOME
    env: dict[str, str]

    def liv(self, *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "sessions.cli", *argv],
            env=self.env, cwd=self.home, capture_output=True, text=True, timeout=110,
            check=False,
        )  # fmt: skip
        assert "Traceback" not in done.stdout + done.stderr, done.stderr
        if ok:
            assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("xdg", [False, True], ids=["no-xdg", "xdg"])
def test_a_first_week_with_nothing_set_keeps_everything_in_the_default_directories(
    tmp_path: Path, xdg: bool
) -> None:
    user_home = tmp_path / "user"
    user_home.mkdir(mode=0o700)
    scratch = tmp_path / "tmp"
    scratch.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in OURS}
    env.update(HOME=str(user_home), TMPDIR=str(scratch), PYTHONPATH=str(REPO))
    if xdg:
        data, state = tmp_path / "xdg-data", tmp_path / "xdg-state"
        env.update(XDG_DATA_HOME=str(data), XDG_STATE_HOME=str(state))
    else:
        data, state = user_home / ".local" / "share", user_home / ".local" / "state"
    user = User(user_home, env)
    liv_dir, clinic_dir = data / "liv", data / "liv-clinic"
    downloads = user_home / "Downloads"  # where the user keeps the files the clinic sends
    downloads.mkdir()

    # the clinic (here on the same machine, in its own default directory)
    init = user.liv("clinic", "init")
    public_key = next(
        Path(word.rstrip(".,:;"))
        for word in init.stdout.split()
        if "public" in word and ".pem" in word
    )  # the file to give to each home, named in the output
    assert public_key.is_file()
    assert public_key.is_relative_to(clinic_dir), init.stdout
    plan = downloads / "protocol.yaml"
    plan.write_text(protocol_yaml(target_g=TARGET_G, frequency_hz=45), encoding="utf-8")
    signed = downloads / "protocol.signed.yaml"
    user.liv("protocol", "sign", str(plan), "--out", str(signed))

    # the home, set up once
    user.liv("enroll", str(public_key))
    user.liv("protocol", "install", str(signed))
    truth_path = scratch / "truth.npz"
    plate = f"sim://?speed=max&mass=70&seed=2&device_id={DEVICE_ID}&truth={truth_path}"
    empty = f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}"
    user.liv("calibrate", "--engineer", "--device", empty)
    user.liv("device", "set", plate)

    # a session, as the patient starts it: no option at all
    start = user.liv("start")
    assert "Session complete" in start.stdout, start.stdout + start.stderr
    truth = load_truth(truth_path)
    hold = (truth["t_s"] > 4.0) & (truth["t_s"] < 60.0)
    assert truth_amplitude(truth, hold) == pytest.approx(TARGET_G, rel=0.05)

    # every later command finds it there
    sessions = user.liv("sessions")
    assert "completed" in sessions.stdout, sessions.stdout
    user.liv("status")
    verify = user.liv("verify")
    assert "every chain intact" in verify.stdout, verify.stdout
    report = user.liv("report", "--format", "html", "--out", str(downloads / "report.html"))
    assert (downloads / "report.html").stat().st_size > 0, report.stderr

    # where it all is: the home's log, calibration, prescription and key in one directory
    # (mode 700), the clinic's in its own, the simulated plate's memory in the state directory
    with SessionLog(liv_dir / "liv.db", read_only=True) as log:
        records = log.sessions()
    (record,) = [r for r in records if r.kind is SessionKind.SIMULATED]
    assert {r.kind for r in records} == {SessionKind.SIMULATED, SessionKind.ENGINEERING}
    assert record.status is SessionStatus.COMPLETED
    assert record.minutes_at_dose == pytest.approx(1.0)
    assert record.minutes_at_dose * 60.0 <= float(truth["t_s"][-1])
    assert f"calibration/{DEVICE_ID}.json" in files_under(liv_dir)
    assert (liv_dir.stat().st_mode & 0o777) == 0o700
    assert (clinic_dir.stat().st_mode & 0o777) == 0o700
    assert files_under(state / "liv" / "sim"), "the plate's memory is not in the state dir"
    expected_roots = {liv_dir, clinic_dir, state / "liv", downloads}
    for path in user_home.rglob("*"):
        if path.is_file():
            assert any(path.is_relative_to(root) for root in expected_roots), path
    assert not (user_home / "liv.db").exists()
