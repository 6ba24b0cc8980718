"""A paused terminal: the patient presses Ctrl-S (XOFF) in the terminal running ``liv start``.

A terminal whose output is stopped blocks every program that writes to it until Ctrl-Q
(XON). ``liv start`` writes its progress line from the control loop, so the loop stops with the
display, the plate stops hearing its host and its watchdog ends the session: the patient, who
only paused the screen, reads that the plate stopped itself for safety and is told to check the
cable. The therapy must not depend on the screen: the session goes on while the display is
paused, and the dose is judged from the simulator's truth file.

``liv start`` runs in a pseudo-terminal, as in the patient's terminal window; the plate is
paced at 5x real time in process (it catches up with the wall clock when the host reads, so
a host blocked for 2 s meets a plate 10 s further on, as a plate on a wire would be), except
where its pace is not what is judged (the Ctrl-C after the end).
"""

from __future__ import annotations

import os
import pty
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from tests.simhelpers import install_signed
from tests.test_fault_matrix import REPO, Truth

SPEED = 5.0
DEVICE_ID = "SIM-TTY"
XOFF, XON = b"\x13", b"\x11"
PAUSE_S = 2.0  # wall seconds the screen stays paused: 10 s of plate time


def in_terminal(
    argv: list[str], act: Callable[[int, bytes], bool], timeout_s: float
) -> tuple[int, str]:
    """Run ``liv argv`` on a pseudo-terminal; ``act(terminal, shown so far)`` is called at every
    poll and says (True) when it has done all it was for. The exit status and all shown."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: liv on the terminal
        os.chdir(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "sessions.cli", *argv])
    shown = b""
    done_acting = False
    end = time.monotonic() + timeout_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # EIO: the child has closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            done_acting = done_acting or act(fd, shown)
    finally:
        os.close(fd)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, 9)
            _, status = os.waitpid(pid, 0)
    text = shown.decode(errors="replace")
    assert done_acting, text[-400:]
    return os.waitstatus_to_exitcode(status), text


def run_in_terminal(argv: list[str], pause_after: bytes, timeout_s: float) -> tuple[int, str]:
    """Once ``pause_after`` has been shown, pause the screen for PAUSE_S, then resume it."""
    paused_at: float | None = None

    def pause_then_resume(fd: int, shown: bytes) -> bool:
        nonlocal paused_at
        if paused_at is None and pause_after in shown:
            os.write(fd, XOFF)
            paused_at = time.monotonic()
        elif paused_at is not None and time.monotonic() - paused_at > PAUSE_S:
            os.write(fd, XON)
            return True
        return False

    return in_terminal(argv, pause_then_resume, timeout_s)


@pytest.mark.slow
def test_a_paused_terminal_does_not_stop_the_therapy(tmp_path: Path) -> None:
    home = LivHome(tmp_path / "home")
    home.ensure()
    (home.root / "DEMO").write_text("demo\n")
    install_signed(home)
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
        home.calibrations().save(identify(device))
    truth_path = tmp_path / "truth.npz"
    plate = f"sim://?speed={SPEED:g}&mass=70&seed=2&device_id={DEVICE_ID}&truth={truth_path}"
    code, shown = run_in_terminal(
        ["start", "--home", str(home.root), "--device", plate], b"left", timeout_s=90.0
    )
    assert "Traceback" not in shown
    truth = Truth.load(truth_path)
    with SessionLog(home.db_path(), read_only=True) as log:
        (record,) = log.sessions()
    # the plate ran the whole session: no watchdog, the full minute at dose by the truth
    assert "fault:HOST_WATCHDOG" not in truth.events, record.reason
    assert record.status is SessionStatus.COMPLETED, record.reason
    assert record.minutes_at_dose * 60.0 <= truth.at_dose_s(
        0.3, truth.output_start_s, float(truth.t_s[-1])
    )
    assert code == 0, shown[-400:]
    assert "Session complete" in shown


@pytest.mark.slow
def test_ctrl_c_on_a_screen_paused_until_the_end_still_shows_the_outcome(tmp_path: Path) -> None:
    """The screen is paused (Ctrl-S) through the rest of the session; once the record says
    completed, the patient presses Ctrl-C (which also resumes the terminal). The session is
    over and recorded: the Ctrl-C only ends the wait for the screen, and the outcome sentence
    is still shown with the outcome's exit status (a second reader saw 'liv: interrupted').

    The plate here runs at ``speed=max``: what is judged is the Ctrl-C that ends the wait for
    the paused screen after the session is over, not the plate's pace (the previous test holds
    the loop to the paced plate while the screen is paused). A loop that waited for the paused
    screen would still never complete the session here."""
    home = LivHome(tmp_path / "home")
    home.ensure()
    (home.root / "DEMO").write_text("demo\n")
    install_signed(home)
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as device:
        home.calibrations().save(identify(device))
    plate = f"sim://?speed=max&mass=70&seed=2&device_id={DEVICE_ID}"
    paused = False

    def pause_then_interrupt(fd: int, shown: bytes) -> bool:
        nonlocal paused
        if not paused and b"left" in shown:
            os.write(fd, XOFF)
            paused = True
        elif paused and _completed(home):
            time.sleep(0.5)  # the display thread is now waiting on the paused screen
            os.write(fd, b"\x03")  # Ctrl-C
            return True
        return False

    code, text = in_terminal(
        ["start", "--home", str(home.root), "--device", plate], pause_then_interrupt, 90.0
    )
    assert "Session complete" in text, text[-400:]
    assert "Traceback" not in text
    assert code == 0, text[-400:]


def _completed(home: LivHome) -> bool:
    if not home.db_path().exists():
        return False
    try:
        with SessionLog(home.db_path(), read_only=True) as log:
            return any(r.status is SessionStatus.COMPLETED for r in log.sessions())
    except Exception:  # the log mid-write: ask again at the next poll
        return False
