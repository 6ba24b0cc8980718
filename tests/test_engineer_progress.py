"""Engineers see progress on stderr while ``liv calibrate`` sweeps and ``liv run`` holds.

Off a terminal (here: pytest's captured stderr) a plain line now and then, with the step or the
time and no control characters; on a terminal (a fake one, its width from $COLUMNS) one line
redrawn in place, never wider than the terminal minus one column. ``--json`` keeps stdout pure.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path

import pytest

from sessions.cli import main

EMPTY = "sim://?speed=max&seed=4&device_id=SIM-PROGRESS&mass=0"
LOADED = "sim://?speed=max&seed=5&device_id=SIM-PROGRESS"
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # every control character but the newline


class FakeTerminal(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def calibrate(home: Path) -> list[str]:
    return ["calibrate", "--engineer", "--device", EMPTY, "--home", str(home), "--json"]


def run(home: Path, seconds: str = "12") -> list[str]:
    return ["run", "--engineer", "--device", LOADED, "--home", str(home), "--freq", "40",
            "--seconds", seconds, "--json"]  # fmt: skip


def test_calibrate_off_a_terminal_shows_plain_lines_with_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(calibrate(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["device_id"] == "SIM-PROGRESS"  # stdout is still pure JSON
    assert not CONTROL.search(err), repr(err)
    steps = re.findall(r"^calibrating: frequency (\d+) of (\d+), ([\d.]+) Hz, \d:\d\d left$",
                       err, re.MULTILINE)  # fmt: skip
    assert steps[0] == ("1", "16", "25")  # the first step, then every few seconds of plate time
    assert steps[-1] == ("16", "16", "100")  # and the last
    assert 3 <= len(steps) < 16  # sparse: not a line per step


def test_run_off_a_terminal_shows_elapsed_time_left_and_amplitude(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(calibrate(tmp_path)) == 0
    capsys.readouterr()
    assert main(run(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] == "completed"
    assert not CONTROL.search(err), repr(err)
    lines = re.findall(
        r"^run (\d):(\d\d) of 0:15, (\d):(\d\d) left, (measured [\d.]+ g|measuring), "
        r"target 0\.300 g, 40\.0 Hz, (ramping up|holding|ramping down)$",
        err,
        re.MULTILINE,
    )
    # 15 s of plate time (1.5 s ramps around 12 s held): a line at 0 s and every 5 s after
    assert len(lines) >= 3, err
    elapsed = [60 * int(m) + int(s) for m, s, *_ in lines]
    left = [60 * int(m) + int(s) for _, _, m, s, *_ in lines]
    assert elapsed[0] == 0
    assert all(b - a >= 5 for a, b in itertools.pairwise(elapsed))
    assert all(e + r == 15 for e, r in zip(elapsed, left, strict=True))
    held = [float(g.split()[1]) for *_, g, phase in lines if phase == "holding"]
    assert held
    assert all(abs(g - 0.3) < 0.03 for g in held)


@pytest.mark.parametrize("command", ["calibrate", "run"])
def test_on_a_terminal_of_40_columns_the_line_fits_in_39(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    if command == "run":
        assert main(calibrate(tmp_path)) == 0
        capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "40")
    terminal = FakeTerminal()
    monkeypatch.setattr("sys.stderr", terminal)
    argv = calibrate(tmp_path) if command == "calibrate" else run(tmp_path, "3")
    assert main(argv) == 0
    json.loads(capsys.readouterr().out)  # stdout still parses
    written = terminal.getvalue()
    assert "\r" in written  # redrawn in place
    shown = [part.split("\n")[0] for part in written.split("\r")[1:]]  # each redraw
    assert len(shown) >= 3
    assert max(len(line) for line in shown) <= 39, shown
    first = "calibrating: frequency" if command == "calibrate" else "run 0:"
    assert all(line.startswith(first) for line in shown), shown
    assert "\n" in written.split("\r")[-1]  # the next output starts on a line of its own
