"""Every way a session is stopped ends like Ctrl-C: ramp down, the true reason, one sentence.

Real processes and real signals: ``liv start`` on a simulated plate in its own process is sent
SIGHUP (terminal closed) mid-session, has its output pipe closed (``liv start | head -c 10``),
and is sent SIGINT, SIGTERM or SIGHUP during start-up, before the session row exists.
Plate motion is judged from the simulator's truth file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sessions.home import LivHome
from sessions.log import SessionStatus
from sessions.wording import minutes_text
from tests.test_fault_matrix import Truth, assert_one_sentence, assert_still_after, records
from tests.test_resume import DEVICE_ID, home  # noqa: F401  (home is a fixture)
from tests.test_sessions import _wait_for_checkpoint

REPO = Path(__file__).resolve().parents[1]


def plate(truth: Path, params: str = "") -> str:
    return f"sim://?mass=70&seed=4&device_id={DEVICE_ID}&truth={truth}{params}"


def start_command(home: LivHome, device: str) -> list[str]:  # noqa: F811
    return [sys.executable, "-m", "sessions.cli", "start", "--device", device,
            "--home", str(home.root)]  # fmt: skip


def piped_start(
    home: LivHome,  # noqa: F811
    truth_path: Path,
    shell_tail: str,
    timeout_s: float,
    speed: str = "4",
) -> subprocess.CompletedProcess[str]:
    """``liv start`` on the plate at ``speed``, its output redirected by ``shell_tail`` in bash."""
    command = " ".join(
        f"'{part}'" for part in start_command(home, plate(truth_path, f"&speed={speed}"))
    )
    return subprocess.run(
        ["bash", "-c", command + shell_tail],
        capture_output=True, text=True, cwd=REPO, timeout=timeout_s, check=False,
    )  # fmt: skip


def test_closing_the_terminal_stops_the_session_as_ctrl_c_does(
    home: LivHome,  # noqa: F811
    tmp_path: Path,
) -> None:
    truth_path = tmp_path / "truth.npz"
    proc = subprocess.Popen(
        start_command(home, plate(truth_path, "&speed=4")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        _wait_for_checkpoint(home)
        os.kill(proc.pid, signal.SIGHUP)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    sentence = assert_one_sentence(out, err, "The session stopped because its window was closed;")
    (rec,) = records(home)
    assert rec.status is SessionStatus.STOPPED_BY_PATIENT
    assert rec.reason == "the terminal was closed (SIGHUP)"
    assert rec.minutes_at_dose > 0.0
    assert f"; {minutes_text(rec.minutes_at_dose)} counted." in sentence
    truth = Truth.load(truth_path)
    assert not truth.faults_before(truth.zero_drive_s + 1.0), "the host left it to the watchdog"
    assert_still_after(truth, truth.zero_drive_s)  # a ramp, never a step


def test_a_closed_output_pipe_stops_the_session_as_ctrl_c_does(
    home: LivHome,  # noqa: F811
    tmp_path: Path,
) -> None:
    truth_path = tmp_path / "truth.npz"
    proc = piped_start(home, truth_path, ' | head -c 10; echo "liv exit ${PIPESTATUS[0]}" >&2', 60)
    err_lines = proc.stderr.splitlines()
    assert err_lines[-1] == "liv exit 130", proc.stderr
    assert proc.stdout == "Starting s"  # what head let through
    said = "\n".join(err_lines[:-1])
    assert_one_sentence("", said, "The session stopped because its screen output was closed;")
    (rec,) = records(home)
    assert rec.status is SessionStatus.STOPPED_BY_PATIENT
    assert rec.reason == "the output pipe was closed"
    assert rec.minutes_at_dose < 1.0
    # The pipe is found closed at the first write after head left: usually the first progress
    # line, as the ramp begins; if the plate had started moving, it was ramped down.
    truth = Truth.load(truth_path)
    if (abs(truth.drive) > 1e-9).any():
        assert not truth.faults_before(truth.zero_drive_s + 1.0)
        assert_still_after(truth, truth.zero_drive_s)
    else:
        assert rec.minutes_at_dose == 0.0


STARTUP_STOPS = {
    "SIGINT": (signal.SIGINT, "You stopped before the session began"),
    "SIGTERM": (signal.SIGTERM, "The computer stopped the session before it began"),
    "SIGHUP": (signal.SIGHUP, "The window was closed before the session began"),
}


@pytest.mark.parametrize("name", list(STARTUP_STOPS))
def test_a_stop_during_start_up_is_one_sentence_and_records_nothing(
    name: str,
    home: LivHome,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The plate boots slowly (4 s to its hello): the signal comes during the handshake."""
    signum, says = STARTUP_STOPS[name]
    truth_path = tmp_path / "truth.npz"
    proc = subprocess.Popen(
        start_command(home, plate(truth_path, "&speed=1&boot_ms=4000")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20.0
        while not home.db_path().exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.8)  # recovered, decided, waiting for the plate's hello
        os.kill(proc.pid, signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    sentence = assert_one_sentence(out, err, f"liv: {says}, so ")
    assert re.search(
        r"no session was recorded; run liv start again when you are ready\.$", sentence
    )
    assert records(home) == []
    truth = Truth.load(truth_path)
    assert not (abs(truth.drive) > 0.0).any(), "the plate moved"


def test_a_pipe_closed_after_the_first_lines_stops_the_session_at_the_next_update(
    home: LivHome,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Off a terminal a line is written only at a change of state or a minute of dose; the
    display's own thread finds the pipe closed when it writes, and the session stops at the
    next update, not at the next line (a second reader saw a minute at dose run on)."""
    truth_path = tmp_path / "truth.npz"
    proc = piped_start(
        home, truth_path, ' | head -n 2 >/dev/null; echo "liv exit ${PIPESTATUS[0]}" >&2', 90
    )
    assert proc.stderr.splitlines()[-1] == "liv exit 130", proc.stderr
    (rec,) = records(home)
    assert rec.status is SessionStatus.STOPPED_BY_PATIENT
    assert rec.reason == "the output pipe was closed"
    truth = Truth.load(truth_path)
    # found at the next update after the third line's write failed: well within the ramp-up
    assert truth.zero_drive_s < 10.0, truth.zero_drive_s


def test_a_screen_that_cannot_be_written_does_not_end_the_therapy_nor_print_a_traceback(
    home: LivHome,  # noqa: F811
    tmp_path: Path,
) -> None:
    """stdout on a full disk (ENOSPC, not a closed pipe): the display goes quiet, the session
    runs to its end, no traceback from the display's thread (a second reader saw one).

    The plate runs at ``speed=max``: what is judged is the display's write failing and the
    session going on to its whole dose, not the plate's pace, so the minute at dose need not
    take 15 s of wall time."""
    truth_path = tmp_path / "truth.npz"
    proc = piped_start(home, truth_path, " > /dev/full", 90, speed="max")
    assert "Traceback" not in proc.stderr, proc.stderr
    (rec,) = records(home)
    assert rec.status is SessionStatus.COMPLETED, rec.reason
    assert rec.minutes_at_dose == pytest.approx(1.0)
    assert proc.returncode == 0, proc.stderr
    truth = Truth.load(truth_path)
    assert truth.at_dose_s(0.3, truth.output_start_s, truth.zero_drive_s) >= 60.0
