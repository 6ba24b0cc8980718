"""Red team: values written into the home's liv.db with sqlite3 never crash a command.

SQLite stores whatever it is given: a JSON column can hold a hundred thousand ``[``, an integer
column a number no JSON reader keeps. Before, such a cell made ``liv verify``, ``liv status``,
``liv sessions``, ``liv report`` and ``liv export`` end in a Python traceback (RecursionError,
ValueError) instead of saying the log cannot be used or was changed. Each command now answers
in one sentence with exit status 0 or 1.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks.make_log import make_log
from sessions.cli import main
from tests.test_trust_log import tampered

DEEP = "[" * 100_000
EDITS = {
    "envelope": f"UPDATE sessions SET envelope = '{DEEP}' WHERE chain_index = 1",
    "safety_events": f"UPDATE sessions SET safety_events = '{DEEP}' WHERE chain_index = 1",
    "protocol_json": f"UPDATE sessions SET protocol_json = '{{\"a\":{DEEP}}}'",
    "slot": "UPDATE sessions SET slot = 9223372036854775807 WHERE chain_index = 1",
}
COMMANDS = {
    "verify": ["verify", "--no-device"],
    "status": ["status"],
    "sessions": ["sessions"],
    "report": ["report"],
    "report html": ["report", "--format", "html", "--out", "{dir}/r.html"],
    "export": ["export", "--out", "{dir}/e.jsonl"],
}


@pytest.fixture(scope="module")
def log_of_therapy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with a few days of therapy records and no protocol installed (the report then
    judges them against the prescription the latest record carries)."""
    home = tmp_path_factory.mktemp("home")
    home.chmod(0o700)
    make_log(home / "liv.db", years=0.01)
    return home


@pytest.mark.parametrize("cell", sorted(EDITS))
def test_a_hostile_cell_in_the_log_is_one_sentence_for_every_command(
    log_of_therapy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], cell: str
) -> None:
    home = tmp_path / "home"
    shutil.copytree(log_of_therapy, home)
    with tampered(home / "liv.db") as conn:
        conn.execute(EDITS[cell])
    for name, argv in COMMANDS.items():
        capsys.readouterr()
        try:
            code = main([*(a.format(dir=tmp_path) for a in argv), "--home", str(home)])
        except RecursionError as exc:  # what escaped before; main() prints a traceback then
            pytest.fail(f"liv {name}: {exc!r}")
        out, err = capsys.readouterr()
        assert code in (0, 1), (name, code, err)
        assert "Traceback" not in out + err, (name, err)
        if name == "verify":
            assert code == 1, out + err
