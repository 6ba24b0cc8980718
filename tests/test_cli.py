"""The liv command: JSON output, and one clear sentence with a non-zero exit for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR
from sessions.cli import main
from tests.simhelpers import measured_g_per_drive


def test_device_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["device", "info", "--device", "sim://?speed=max&device_id=X1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["device_id"] == "X1"
    assert data["protocol_version"] == f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"


def test_device_drive_reports_amplitude_and_link(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The drive comes from the plate's measured response, within the dose limits: a fixed 0.4
    # passed the firmware's 0.6 g ceiling on the standing-patient plant (1.6 g/unit at 30 Hz).
    g_per_drive = measured_g_per_drive("speed=max", 30.0, tmp_path / "probe.npz")
    drive = DOSE_LIMITS.highest_target_g(DOSE_LIMITS.over_acceleration_ceiling_g) / g_per_drive
    argv = ["device", "drive", "--engineer", "--device", "sim://?speed=max", "--freq", "30",
            "--drive", f"{drive:.3f}"]  # fmt: skip
    assert main([*argv, "--seconds", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["peak_g"] == pytest.approx(drive * g_per_drive, rel=0.1)
    assert data["crc_errors"] == 0
    assert data["frames"] > 100


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            [
                "device",
                "drive",
                "--engineer",
                "--device",
                "sim://",
                "--freq",
                "30",
                "--drive",
                "2",
                "--seconds",
                "1",
            ],
            "use a number from 0 to 1",
        ),
        (
            [
                "device",
                "drive",
                "--engineer",
                "--device",
                "sim://",
                "--freq",
                "x",
                "--drive",
                "0.1",
                "--seconds",
                "1",
            ],
            "--freq 'x' is not allowed",
        ),
        (["sim", "serve", "--tcp", "nowhere"], "is not HOST:PORT"),
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/dev/ttyNOPE0", "no such port"),
        ("bogus://x", "unknown scheme 'bogus'"),
        ("sim://?mass=-5", "mass is out of range"),
        ("socket://127.0.0.1:1", "connection refused"),
    ],
)
def test_unusable_devices_fail_with_one_sentence(
    url: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["device", "info", "--device", url]) == 1
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err


def test_drive_beyond_device_limit_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "device",
        "drive",
        "--engineer",
        "--device",
        "sim://?speed=max",
        "--freq",
        "30",
        "--drive",
        "0.95",
    ]
    assert main([*argv, "--seconds", "1"]) == 2
    assert "outside 0..0.9" in capsys.readouterr().err


def test_console_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sessions.cli", "device", "info", "--device", "sim://?speed=max"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "SIM-0001" in done.stdout
