"""The progress line the patient watches: fits the terminal, says what to do, shows a bar.

The terminal's width is taken from $COLUMNS (as shutil.get_terminal_size reads it first), so
these tests see exactly what a terminal of that width would get. Off a terminal the display
writes a plain line now and then, with no control characters.
"""

from __future__ import annotations

import io
import re

import pytest

from sessions.commands.start import ProgressLine
from sessions.runner import Progress

GOAL_S = 600.0


class FakeTerminal(io.StringIO):
    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def session(states: list[tuple[str, float]], step_s: float = 1.0) -> list[Progress]:
    """Progress updates for (state, seconds) spans; dose counts only in the at-dose states."""
    updates, at_dose, t = [], 0.0, 0.0
    for state, seconds in states:
        for _ in range(int(seconds / step_s)):
            if state.startswith("at dose") or state == "below dose":
                at_dose = min(GOAL_S, at_dose + step_s)
            updates.append(Progress(GOAL_S - at_dose, at_dose, 0.3, 0.3, state, t))
            t += step_s
    return updates


A_SESSION = session(
    [
        ("checking that somebody is on the plate", 3),
        ("ramping up", 2),
        ("at dose", 32),
        ("below dose", 2),
        ("paused: nobody on the plate", 5),
        ("at dose", 566),
        ("stopping", 1),
    ]
)


def shown_lines(written: str) -> list[str]:
    """What a terminal shows after each carriage return."""
    return [part.rstrip("\n") for part in written.split("\r") if part.strip("\n")]


@pytest.mark.parametrize("width", [20, 40, 80, 200])
def test_the_line_never_fills_the_terminal_and_says_keep_standing(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(width))
    out = FakeTerminal()
    display = ProgressLine(out, 0.3)
    for p in A_SESSION:
        display(p)
    display.finish()
    lines = shown_lines(out.getvalue())
    assert lines
    assert max(len(line) for line in lines) <= width - 1  # a full last column would wrap
    at_dose = [line for line in lines if "left" in line]
    assert at_dose, lines
    # "9:28 left" is in every width; the words in full from 40 columns, the bar from there too
    assert any(line.startswith("9:28 left") or "9:28 left" in line for line in at_dose)
    if width >= 40:
        assert any(line.startswith("Keep standing - 9:28 left") for line in at_dose)
        assert all(re.search(r"\[[█░]{8,}\] *$", line) for line in at_dose), at_dose[:3]
    if width >= 80:
        assert any("Checking that you are on the plate" in line for line in lines)
        assert any(line.startswith("Paused - step back onto the plate") for line in lines)


def test_the_bar_fills_with_the_time_at_dose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = FakeTerminal()
    display = ProgressLine(out, 0.3)
    half = Progress(300.0, 300.0, 0.3, 0.3, "at dose")
    display(half)
    bar = re.search(r"\[([█░]+)\]", out.getvalue())
    assert bar is not None
    filled = bar.group(1).count("█")
    assert filled == len(bar.group(1)) // 2


def test_a_shorter_line_clears_what_the_longer_one_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    out = FakeTerminal()
    display = ProgressLine(out, 0.3)
    display(Progress(300.0, 300.0, 0.3, 0.3, "paused: nobody on the plate"))
    first = shown_lines(out.getvalue())[-1]
    display(Progress(300.0, 300.0, 0.3, 0.3, "at dose"))
    second = shown_lines(out.getvalue())[-1]
    assert len(second) >= len(first)  # padded over the old text, still within the width
    assert len(second) <= 29


def test_off_a_terminal_a_plain_line_now_and_then() -> None:
    out = io.StringIO()  # a pipe, a log file, CI
    display = ProgressLine(out, 0.3)
    for p in A_SESSION:
        display(p)
    display.finish()
    text = out.getvalue()
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", text), "control characters off a terminal"
    lines = text.splitlines()
    # one line per change of state (7) and one a minute of dose (10): never one per update
    assert 7 <= len(lines) <= 20, lines
    lefts = [re.match(r"Keep standing - (\d+):(\d\d) left", line) for line in lines]
    seconds = [int(m.group(1)) * 60 + int(m.group(2)) for m in lefts if m]
    assert len(seconds) >= 10  # about one a minute of the ten
    assert seconds == sorted(seconds, reverse=True)
    assert lines[0].startswith("Checking that you are on the plate - keep standing")
    assert lines[-1].startswith("Stopping - step off when it is still")
    assert all(len(line) <= 80 for line in lines)
