"""The example protocols work the day they are read, and an out-of-date study is warned about.

The examples' study dates are fixed in the files; this test fails as soon as one of them has
ended or has not started yet, so CI catches it before a reader following the README does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sessions.cli import main
from sessions.protocol import load_protocol
from sessions.wording import day_text, say

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_study_is_current(path: Path) -> None:
    protocol = load_protocol(path)
    today = datetime.now(UTC).astimezone(protocol.zone).date()
    assert protocol.study_start <= today, f"{path.name}: its study has not started yet"
    assert today <= protocol.study_end, (
        f"{path.name}: its study ended on {protocol.study_end}; move its dates so that the "
        "README's steps work today"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_installs_without_a_warning(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["protocol", "install", str(path), "--home", str(tmp_path / "home")]) == 0
    captured = capsys.readouterr()
    assert "installed" in captured.out
    assert captured.err == ""


def protocol_file(tmp_path: Path, first_day: int, last_day: int) -> Path:
    today = datetime.now(UTC).date()
    path = tmp_path / "p.yaml"
    path.write_text(
        "patient_id: P-1\ntarget_g: 0.3\nfrequency_hz: 30\nminutes_per_session: 10\n"
        f"study_start: {(today + timedelta(days=first_day)).isoformat()}\n"
        f"study_end: {(today + timedelta(days=last_day)).isoformat()}\ntimezone: UTC\n"
    )
    return path


@pytest.mark.parametrize("command", [["check"], ["install"]])
def test_an_ended_study_is_warned_about_in_one_sentence(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = protocol_file(tmp_path, -400, -30)
    ended = datetime.now(UTC).date() - timedelta(days=30)
    argv = ["protocol", *command, str(path)]
    if command == ["install"]:
        argv += ["--home", str(tmp_path / "home")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err == f"liv: warning: {say('install.study_ended', day=day_text(ended))}\n"


@pytest.mark.parametrize("command", [["check"], ["install"]])
def test_a_study_that_starts_later_is_warned_about_in_one_sentence(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = protocol_file(tmp_path, 10, 300)
    starts = datetime.now(UTC).date() + timedelta(days=10)
    argv = ["protocol", *command, str(path)]
    if command == ["install"]:
        argv += ["--home", str(tmp_path / "home")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err == f"liv: warning: {say('install.study_later', day=day_text(starts))}\n"
