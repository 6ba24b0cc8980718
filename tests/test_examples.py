"""The example protocols work the day they are read, and an out-of-date study is warned about.

The examples' study dates are fixed in the files; this test fails as soon as one of them has
ended or has not started yet, so CI catches it before a reader following the README does. The
examples are unsigned templates: `liv protocol check` validates them as they are, and each one
installs once a clinic has signed it (the README's steps, docs/trust.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sessions.cli import main
from sessions.protocol import load_protocol
from sessions.wording import day_text, say
from tests.simhelpers import enrol_home, write_signed

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
def test_every_example_checks_as_an_unsigned_template(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["protocol", "check", str(path)]) == 0
    captured = capsys.readouterr()
    assert "signature         not signed" in captured.out
    assert captured.err == ""


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_installs_without_a_warning_once_a_clinic_signed_it(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's steps: the clinic makes its key and signs, the home enrols and installs."""
    clinic, home = tmp_path / "clinic", ["--home", str(tmp_path / "home")]
    signed = tmp_path / "rx.signed.yaml"
    assert main(["clinic", "init", "--dir", str(clinic)]) == 0
    sign = ["protocol", "sign", str(path), "--clinic-dir", str(clinic), "--out", str(signed)]
    assert main(sign) == 0
    assert main(["enroll", str(clinic / "clinic-public.pem"), *home]) == 0
    capsys.readouterr()
    assert main(["protocol", "install", str(signed), *home]) == 0
    captured = capsys.readouterr()
    assert "installed" in captured.out
    assert captured.err == ""
    assert main(["protocol", "install", str(path), *home]) == 1  # the template itself: refused


def protocol_file(tmp_path: Path, first_day: int, last_day: int) -> Path:
    today = datetime.now(UTC).date()
    enrol_home(tmp_path / "home")
    return write_signed(
        tmp_path / "p.yaml",
        "patient_id: P-1\ntarget_g: 0.3\nfrequency_hz: 30\nminutes_per_session: 10\n"
        f"study_start: {(today + timedelta(days=first_day)).isoformat()}\n"
        f"study_end: {(today + timedelta(days=last_day)).isoformat()}\ntimezone: UTC\n",
    )


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
