"""The shape of the ``liv`` command: exit codes, --version, ``python -m liv``, completion, help
text for every command and option, the order of the commands, and finding a plate by its USB
identity (``liv device list``, ``hwgrep://``)."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from pytest_mock import MockerFixture
from serial.tools.list_ports_common import ListPortInfo

from firmware_bridge.errors import DeviceBusyError, DeviceNotFoundError
from firmware_bridge.transport import close_port, open_port
from sessions.cli import build_parser, completion_script, main, subcommands
from sessions.commands.start import start_exit_status
from sessions.home import LivHome
from sessions.log import SessionStatus
from sessions.stops import STOP_CTRL_C, STOP_PIPE, STOP_SIGHUP, STOP_SIGTERM
from tests.test_resume import DEVICE_ID, home, liv_start, records  # noqa: F401
from tests.test_transports import served_pty  # noqa: F401

# ---- exit codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "code"),
    [
        (SessionStatus.COMPLETED, "prescribed minutes at dose delivered", 0),
        (SessionStatus.TRIPPED, "amplitude too high: 0.5 g", 1),
        (SessionStatus.STOPPED_BY_PATIENT, "nobody on the plate for 2 minutes", 1),
        (
            SessionStatus.STOPPED_BY_PATIENT,
            "the session ran out of time before the dose was delivered",
            1,
        ),
        (SessionStatus.STOPPED_BY_PATIENT, STOP_CTRL_C, 130),
        (SessionStatus.STOPPED_BY_PATIENT, STOP_SIGTERM, 130),
        (SessionStatus.STOPPED_BY_PATIENT, STOP_SIGHUP, 130),
        (SessionStatus.STOPPED_BY_PATIENT, STOP_PIPE, 130),
    ],
)
def test_start_exit_status_follows_the_records_reason(
    status: SessionStatus, reason: str, code: int
) -> None:
    assert start_exit_status(status, reason) == code


def test_nobody_on_the_plate_exits_1_not_130(home: LivHome) -> None:  # noqa: F811
    empty_plate = f"sim://?mass=0&seed=4&speed=max&device_id={DEVICE_ID}"
    assert liv_start(home, empty_plate) == 1
    (record,) = records(home)
    assert record.status is SessionStatus.STOPPED_BY_PATIENT
    assert "nobody on the plate" in (record.reason or "")


def test_a_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["status", "--no-such-option"])
    assert stop.value.code == 2
    assert "liv status has no option --no-such-option" in capsys.readouterr().err


def test_the_exit_codes_are_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    for row in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert row in doc
    assert "nobody on the plate" in doc


# ---- version, python -m liv ------------------------------------------------------------------


def test_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"liv {importlib.metadata.version('liv-platform')}\n"


def test_python_m_liv_runs_the_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "liv", "device", "info", "--device", "sim://?device_id=SIM-M"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # the installed package, not the working directory
    )
    assert done.returncode == 0, done.stderr
    assert "SIM-M" in done.stdout


# ---- help text -------------------------------------------------------------------------------


def every_command(
    parser: argparse.ArgumentParser, path: str = "liv"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for name, sub in subcommands(parser).items():
        found.append((f"{path} {name}", sub))
        found += every_command(sub, f"{path} {name}")
    return found


def test_every_command_has_a_description_and_an_example() -> None:
    commands = every_command(build_parser())
    assert len(commands) >= 20
    for name, sub in commands:
        assert sub.description, f"{name} has no description"
        assert sub.epilog, f"{name} has no example"
        assert sub.epilog.startswith("example:\n  liv ") or "liv completion" in sub.epilog, name
        assert "example:" in sub.format_help(), name


def test_every_option_and_argument_has_help() -> None:
    parser = build_parser()
    for name, sub in [("liv", parser), *every_command(parser)]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            what = "/".join(action.option_strings) or action.dest
            assert action.help, f"{name} {what} has no help"
            assert action.help != argparse.SUPPRESS, f"{name} {what} is hidden"


def test_patient_commands_are_listed_before_engineer_commands() -> None:
    names = list(subcommands(build_parser()))
    for patient in ("start", "status"):
        for engineer in ("device", "calibrate", "run", "sim"):
            assert names.index(patient) < names.index(engineer), names
    assert names[:2] == ["start", "status"]


# ---- completion ------------------------------------------------------------------------------


def complete(script: str, *words: str) -> list[str]:
    """What bash offers after typing ``words`` (the last one is being completed)."""
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _liv_complete; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completion_is_generated_from_the_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert complete(script, "liv", "dev") == ["device"]
    assert complete(script, "liv", "s") == ["start", "status", "sessions", "show", "sim"]
    assert complete(script, "liv", "device", "l") == ["list"]
    assert complete(script, "liv", "device", "list", "--") == ["--help", "--json"]
    assert complete(script, "liv", "report", "--format", "") == ["table", "csv", "json", "html"]
    offered = complete(script, "liv", "-v", "completion", "")
    assert [w for w in offered if not w.startswith("-")] == ["bash", "zsh"]
    assert "--sim" in complete(script, "liv", "sim", "serve", "--")


def test_zsh_completion_uses_bashcompinit() -> None:
    script = completion_script(build_parser(), "zsh")
    assert script.startswith("autoload -U +X bashcompinit && bashcompinit\n")
    assert "complete -o default -F _liv_complete liv" in script


# ---- the plate by USB identity ---------------------------------------------------------------


def fake_port(
    device: str, vid: int | None, pid: int | None, serial_number: str | None, description: str
) -> ListPortInfo:
    port = ListPortInfo(device, skip_link_detection=True)
    port.vid, port.pid, port.serial_number = vid, pid, serial_number
    port.description = description
    if vid is not None:
        port.hwid = port.usb_info()
    return port


PORTS = [
    fake_port("/dev/ttyACM0", 0x2341, 0x0043, "A1B2C3", "LIV plate"),
    fake_port("/dev/ttyUSB1", 0x0403, 0x6001, None, "FT232R USB UART"),
    fake_port("/dev/ttyS0", None, None, None, "ttyS0"),
]


def test_device_list_shows_the_usb_identity(
    mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    mocker.patch("serial.tools.list_ports.comports", return_value=list(PORTS))
    assert main(["device", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["port", "VID:PID", "serial", "number", "description", "use", "as",
                                "--device"]  # fmt: skip
    assert lines[1].split() == [
        "/dev/ttyACM0", "2341:0043", "A1B2C3", "LIV", "plate", "hwgrep://SER=A1B2C3",
    ]  # fmt: skip
    assert lines[3].split() == [
        "/dev/ttyUSB1", "0403:6001", "-", "FT232R", "USB", "UART", "hwgrep://0403:6001",
    ]  # fmt: skip
    assert lines[2].split() == ["/dev/ttyS0", "-", "-", "ttyS0", "/dev/ttyS0"]


def test_device_list_json(mocker: MockerFixture, capsys: pytest.CaptureFixture[str]) -> None:
    mocker.patch("serial.tools.list_ports.comports", return_value=list(PORTS))
    assert main(["device", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0] == {
        "schema": "liv.port/1",  # docs/json.md
        "device": "/dev/ttyACM0",
        "description": "LIV plate",
        "vid_pid": "2341:0043",
        "serial_number": "A1B2C3",
        "manufacturer": None,
        "url": "hwgrep://SER=A1B2C3",
    }


def test_device_list_with_no_ports_says_so(
    mocker: MockerFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    mocker.patch("serial.tools.list_ports.comports", return_value=[])
    assert main(["device", "list"]) == 0
    assert "No serial ports found" in capsys.readouterr().out


def test_hwgrep_finds_the_plate_and_opens_it_exclusively(
    served_pty: str,  # noqa: F811
    mocker: MockerFixture,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plate = fake_port(served_pty, 0x2341, 0x0043, "A1B2C3", "LIV plate")
    mocker.patch("serial.tools.list_ports.comports", return_value=[PORTS[1], plate])
    url = "hwgrep://SER=A1B2C3"
    root = tmp_path / "home"
    assert main(["device", "set", url, "--home", str(root)]) == 0
    assert LivHome(root).device(None) == url
    port = open_port(url)
    try:
        assert port.port == served_pty
        with pytest.raises(DeviceBusyError):
            open_port(url)
    finally:
        close_port(port)


def test_hwgrep_matching_no_port_says_where_to_look(mocker: MockerFixture) -> None:
    mocker.patch("serial.tools.list_ports.comports", return_value=list(PORTS))
    with pytest.raises(DeviceNotFoundError, match="liv device list"):
        open_port("hwgrep://SER=NOSUCH")
