"""A newcomer's path: the README's demo in a fresh home, then the command line's mistakes.

The demo runs once, as a newcomer runs it: the installed ``liv`` script by its path, with the
venv not on PATH, a fresh HOME and no LIV_* settings; what it prints must work as printed.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sessions.cli import build_parser, main, subcommands
from sessions.commands.demo import invoked_as
from sessions.wording import say

LIV = Path(sys.executable).parent / "liv"  # the console script pip installed beside python


def newcomer_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIV_", "XDG_", "PYTEST_"))}
    env.update(HOME=str(home), PATH="/usr/bin:/bin")
    return env


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """``.venv/bin/liv demo --home DIR`` as a newcomer runs it: (its home, the env, stdout)."""
    assert LIV.is_file(), f"the console script {LIV} is not installed"
    env = newcomer_env(tmp_path_factory.mktemp("newcomer-home"))
    root = tmp_path_factory.mktemp("newcomer") / "demo"
    done = subprocess.run(
        [str(LIV), "demo", "--home", str(root)], env=env, capture_output=True, text=True,
        timeout=100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root, env, done.stdout


def test_the_commands_the_demo_prints_run_as_printed(
    demo_run: tuple[Path, dict[str, str], str], tmp_path: Path
) -> None:
    _root, env, out = demo_run
    again = out.split("To look again:\n", 1)[1].splitlines()
    assert len(again) == 3
    for line in again:
        words = shlex.split(line)
        assert words[0] == str(LIV)  # its own path: 'liv' is not on this PATH
        done = subprocess.run(
            words, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, (line, done.stderr)
    assert (tmp_path / "report.html").is_file()


def test_the_demo_says_once_that_it_is_a_demo_after_the_session(
    demo_run: tuple[Path, dict[str, str], str],
) -> None:
    _, _, out = demo_run
    assert out.count(say("status.demo")) == 1, out


def test_the_demo_home_is_private_and_tidy(demo_run: tuple[Path, dict[str, str], str]) -> None:
    root, _, _ = demo_run
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    assert root / "plate-memory" in folders
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert not (root / "liv.db.running").exists()


def test_the_demo_home_runs_a_session_afterwards_on_its_paired_plate(
    demo_run: tuple[Path, dict[str, str], str],
) -> None:
    root, env, _ = demo_run
    done = subprocess.run(
        [str(LIV), "start", "--home", str(root), "--override", "trying the demo again"],
        env=env, capture_output=True, text=True, timeout=100, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Session complete" in done.stdout


def test_liv_is_named_as_the_shell_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "bin" / "liv"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert invoked_as(str(script)) == str(script)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert invoked_as(str(script)) == "liv"
    assert invoked_as("/somewhere/liv/__main__.py").endswith(" -m liv")


# ---- mistakes on the command line ------------------------------------------------------------


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main(list(argv))
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err: str = captured.err
    assert err.count("\n") == 1, err  # one sentence, no usage block
    assert "usage:" not in err
    assert "invalid choice" not in err
    return err


def test_a_mistyped_command_names_the_closest_one(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "strat")
    assert "'strat' is not a command of liv: did you mean 'start'?" in err
    assert "status" in err
    assert "calibrate" in err
    err = usage_error(capsys, "device", "sett")
    assert "did you mean 'set'?" in err
    assert "info, drive, set or list" in err


def test_a_mistyped_option_is_told_by_its_command(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "start", "--hlep")
    assert err.startswith("liv start has no option --hlep: did you mean --help?")
    err = usage_error(capsys, "start", "--devcie", "X")
    assert err.startswith("liv start has no option --devcie: did you mean --device?")
    assert "--override" in err
    err = usage_error(capsys, "report", "--format", "xml")
    assert "--format 'xml' is not allowed" in err
    assert "table, csv, json or html" in err


def test_liv_help_shows_the_page_of_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert main(["help"]) == 0
    assert capsys.readouterr().out == parser.format_help()
    assert main(["help", "start"]) == 0
    assert capsys.readouterr().out == subcommands(parser)["start"].format_help()
    assert main(["help", "device", "set"]) == 0
    assert "PORT_OR_URL" in capsys.readouterr().out
    assert main(["help", "strat"]) == 2
    assert "did you mean 'start'?" in capsys.readouterr().err


def test_start_help_shows_the_patient_what_a_patient_uses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["start", "--help"])
    page = capsys.readouterr().out
    usage = page.split("\n\n", 1)[0]
    assert "--" not in usage.replace("[-h]", ""), usage
    patient, staff = page.split("options for the clinic or service engineers", 1)
    for option in ("--db", "--home", "--device", "--override", "--calibration-dir"):
        assert option not in patient, option
        assert option in staff, option
    args = build_parser().parse_args(
        ["start", "--db", "l.db", "--home", "h", "--device", "sim://", "--override", "why",
         "--calibration-dir", "c"]
    )  # fmt: skip
    assert (args.device, args.override, args.home) == ("sim://", "why", "h")


# ---- plain sentences -------------------------------------------------------------------------


def test_a_missing_prescription_file_says_what_to_do(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["protocol", "install", str(tmp_path / "nosuch.yaml")]) == 1
    err = capsys.readouterr().err
    assert "prescription file does not exist" in err
    assert "ask your clinic" in err
    assert main(["protocol", "install", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "a folder, not a prescription file" in err
    assert "give the signed prescription" in err


def test_a_port_without_a_plate_is_one_plain_sentence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["device", "set", "/dev/null"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "liv: No plate answers at /dev/null: check that it is plugged in and switched on, and "
        "that this is its port ('liv device list' shows the ports).\n"
    )
    assert main(["-v", "device", "set", "/dev/null"]) == 1
    assert "technical detail: no device at '/dev/null'" in capsys.readouterr().err


# ---- the README ------------------------------------------------------------------------------

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def sh_blocks(text: str) -> list[list[str]]:
    blocks = text.split("```sh\n")[1:]
    return [block.split("```", 1)[0].strip().splitlines() for block in blocks]


def test_the_readme_first_screen_keeps_its_two_set_up_commands() -> None:
    first_screen = README.split("## What is here", 1)[0]
    assert sh_blocks(first_screen) == [
        ["python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/liv demo"],
        [
            "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' "
            "&& .venv/bin/python -m pytest"
        ],
    ]
    later = README.split("## What is here", 1)[1]
    assert "`.venv/bin/liv ...`" in later
    assert "`. .venv/bin/activate`" in later


def test_the_readme_path_to_a_first_session_is_made_of_real_commands() -> None:
    path = README.split("**Then run a session, on a simulated plate.**", 1)[1].split("\n## ")[0]
    lines = [line for block in sh_blocks(path) for line in block]
    assert lines == [
        "liv sim serve --tcp 127.0.0.1:4000 --sim 'sim://?mass=0'",
        "liv device set socket://127.0.0.1:4000",
        "liv calibrate --engineer --device socket://127.0.0.1:4000",
        "liv sim serve --tcp 127.0.0.1:4000",
        "liv start",
    ]
    parser = build_parser()
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "liv"
        parser.parse_args(words[1:])  # a usage error would exit 2


def test_a_mistyped_option_of_liv_itself_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(capsys, "--hlep")
    assert err.startswith("liv has no option --hlep: did you mean --help?")
    err = usage_error(capsys, "--verison", "status")
    assert "did you mean --version?" in err
