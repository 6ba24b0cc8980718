"""Stored text never drives the terminal: escape codes, controls and bidi overrides are shown.

The hostile strings are written the way they really arrive: through the session log's API (a
device id from a plate's handshake, an override reason typed at the prompt, a safety event's
detail) or by editing the log file, then every human-readable command is run and its output
checked for raw control characters.
"""

from __future__ import annotations

import sqlite3
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sessions.cli import main
from sessions.log import SessionLog
from sessions.protocol import parse_protocol
from sessions.text import terminal_line, terminal_text
from tests.simhelpers import enrol_home, write_signed

ESC_CLEAR = "\x1b[2J"  # clears the screen
OSC_TITLE = "\x1b]0;owned\x07"  # retitles the window
C1_CSI = "\x9b31m"  # an 8-bit CSI: red text on terminals that honour C1
RLO = "\u202e"  # right-to-left override: shows "gnp.exe" for "exe.png"
ISOLATE = "\u2066"
HOSTILE = (ESC_CLEAR, OSC_TITLE, C1_CSI, RLO, ISOLATE, "\r", "\x08", "\x7f", "\u2028")


def raw_controls(text: str) -> list[str]:
    """Characters a terminal could obey (newline, tab and CRLF are layout, kept on purpose)."""
    return [
        c
        for c in text.replace("\r\n", "\n")
        if c not in "\n\t" and unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"}
    ]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (ESC_CLEAR, "\\x1b[2J"),
        (OSC_TITLE, "\\x1b]0;owned\\x07"),
        (C1_CSI, "\\x9b31m"),
        (f"exe{RLO}gnp", "exe\\u202egnp"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("\x00\x7f\x85", "\\x00\\x7f\\x85"),
        ("back\rspace\x08", "back\\x0dspace\\x08"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("lone \udcff surrogate", "lone \\udcff surrogate"),
        ("P-0042 Zoë 日本 ▁▂█ 0.3 g", "P-0042 Zoë 日本 ▁▂█ 0.3 g"),
    ],
)
def test_terminal_line_shows_controls_instead_of_sending_them(raw: str, shown: str) -> None:
    assert terminal_line(raw) == shown
    assert raw_controls(terminal_line(raw)) == []


def test_terminal_text_keeps_layout_but_not_a_bare_carriage_return() -> None:
    assert terminal_text("a\tb\nc\r\nd\re") == "a\tb\nc\r\nd\\x0de"
    assert terminal_line("a\nb") == "a\\x0ab"


# ---- every human-readable command, with hostile text in the log -----------------------------


PROTOCOL = """\
patient_id: P-0042
target_g: 0.3
frequency_hz: 30
minutes_per_session: 10
sessions_per_day: 2
min_gap_hours: 3
study_start: {start}
study_end: {end}
timezone: UTC
"""


@pytest.fixture
def hostile_home(tmp_path: Path) -> tuple[Path, str, str]:
    """A home whose log holds two sessions full of escape codes; (home, session, stranger's)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    today = datetime.now(UTC).date()
    text = PROTOCOL.format(start=today - timedelta(days=5), end=today + timedelta(days=60))
    write_signed(enrol_home(home).protocol_path, text)
    protocol = parse_protocol(text)
    started = datetime.now(UTC) - timedelta(days=2)
    with SessionLog(home / "liv.db") as log:
        ids = []
        for patient in (protocol.patient_id, f"P-9{ESC_CLEAR}{RLO}"):
            session_id = log.start_session(
                patient_id=patient,
                device_id=f"SIM{OSC_TITLE}",
                firmware_version=f"1.0{C1_CSI}",
                protocol_sha256=protocol.sha256,
                protocol_json=protocol.canonical_json(),
                started_utc=started,
                timezone="UTC",
                local_date=started.date(),
                slot=1,
                minutes_prescribed=10.0,
                target_g=0.3,
                override_reason=f"felt fine{ESC_CLEAR}{RLO}enod",
            )
            log.finish_session(
                session_id,
                status="tripped",
                reason=f"coil hot{ISOLATE}\x1b[31m\r",
                ended_utc=started + timedelta(minutes=3),
                minutes_at_dose=2.0,
                envelope=[(0.0, 0.1), (1.0, 0.3)],
                freqs_hz=[30.0],
                safety_events=[
                    {"reason": f"over_temp{ESC_CLEAR}", "t_s": 60.0, "detail": f"hot{OSC_TITLE}"}
                ],
                mean_error_pct=0.1,
                p95_abs_error_pct=0.3,
                exposure=None,
            )
            ids.append(session_id)
    return home, ids[0], ids[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_no_command_passes_stored_escape_codes_to_the_terminal(
    hostile_home: tuple[Path, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    home, mine, theirs = hostile_home
    where = ["--home", str(home)]
    outputs = {
        "status": run(capsys, "status", *where),
        "sessions": run(capsys, "sessions", *where),
        "show": run(capsys, "show", mine, *where),
        "show other": run(capsys, "show", theirs, *where),
        "report table": run(capsys, "report", "--patient", "P-0042", *where),
        "report csv": run(capsys, "report", "--patient", "P-0042", "--format", "csv", *where),
        "verify": run(capsys, "verify", *where),
        "error": run(capsys, "show", f"nope{ESC_CLEAR}{RLO}", *where),
        "report of a stranger": run(capsys, "report", "--patient", f"P-9{ESC_CLEAR}", *where),
    }
    for name, (code, text) in outputs.items():
        assert raw_controls(text) == [], f"{name}: {raw_controls(text)!r} in {text!r}"
        assert code in (0, 1), name
    # the text is shown, visibly, not dropped
    assert "SIM\\x1b]0;owned\\x07" in outputs["show"][1]
    assert "felt fine\\x1b[2J\\u202eenod" in outputs["show"][1]
    assert "P-9\\x1b[2J\\u202e" in outputs["sessions"][1]
    assert "nope\\x1b[2J\\u202e" in outputs["error"][1]


def test_a_tampered_log_is_reported_without_its_escape_codes(
    hostile_home: tuple[Path, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    home, mine, _ = hostile_home
    with sqlite3.connect(home / "liv.db") as db:  # as whoever edits the file would
        for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            db.execute(f'DROP TRIGGER "{trigger}"')
        db.execute(
            "UPDATE sessions SET session_id = ? WHERE session_id = ?",
            (f"{mine}{ESC_CLEAR}{RLO}", mine),
        )
    db.close()
    code, text = run(capsys, "verify", "--home", str(home))
    assert code == 1
    assert "LOG CHANGED" in text
    assert raw_controls(text) == [], text


def test_a_device_id_from_a_plates_handshake_is_shown_not_obeyed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Protocol 2.0 refuses a HELLO whose device id is not printable ASCII; the refusal names the
    # id as hex, so the escape code never reaches the terminal.
    code, text = run(capsys, "device", "info", "--device", "sim://?speed=max&device_id=A%1B%5B2J")
    assert code == 1, text
    assert raw_controls(text) == [], text
    assert "device_id_raw = 411b5b324a" in text
