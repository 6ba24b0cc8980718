"""Bad input at the command line: one clear sentence, a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def liv(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessions.cli", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "code", "expected"),
    [
        (
            [
                "run",
                "--engineer",
                "--device",
                "sim://",
                "--freq",
                "30",
                "--amplitude",
                "0.7",
                "--seconds",
                "5",
            ],
            2,
            "--amplitude '0.7' is not allowed: use a number from 0.1 to 0.4",
        ),
        (
            ["run", "--engineer", "--device", "sim://", "--freq", "120", "--seconds", "5"],
            2,
            "30 to 90",
        ),
        (
            [
                "run",
                "--engineer",
                "--device",
                "sim://",
                "--schedule",
                "sweep:30-95/60",
                "--seconds",
                "5",
            ],
            2,
            "outside the allowed 30-90 Hz",
        ),
        (["report", "--since", "2026-13-01"], 2, "is not a date"),
        (["device", "info", "--device", "sim://?mass=abc"], 1, "is not a finite number"),
        (["device", "info", "--device", "carrier-pigeon://plate"], 1, "unknown scheme"),
        (["device", "info", "--device", "/dev/ttyDOESNOTEXIST"], 1, "no such port"),
        (["protocol", "check", "/nonexistent/protocol.yaml"], 1, "/nonexistent/protocol.yaml"),
        (["status", "--home", "/proc/liv-cannot-be-here"], 1, "No prescription is installed"),
        (["demo", "--home", "/proc/liv-cannot-be-here"], 1, "/proc/liv-cannot-be-here"),
        (["verify", "--db", "/proc/liv-cannot-be-here/liv.db"], 1, "liv"),
    ],
)
def test_bad_input_is_one_sentence(argv: list[str], code: int, expected: str) -> None:
    done = liv(*argv)
    assert done.returncode == code, done.stderr
    assert expected in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_protocol_full_of_mistakes_names_each_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("patient_id: P1\ntarget_g: 0.9\nminutes_per_session: 10:30\nunknown: 1\n")
    done = liv("protocol", "check", str(bad))
    assert done.returncode == 1
    for line in ("line 2", "line 3", "line 4"):
        assert line in done.stderr
    assert "Traceback" not in done.stderr
