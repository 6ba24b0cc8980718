"""The log at scale: lists never read envelopes, verify and export stream, start-up is light.

Logs come from benchmarks/make_log.py (the generator the benchmark uses), a few weeks long so
each test takes seconds; docs/performance.md has the figures for one and five years. The
DAYS-long log is generated once per module; every test works on its own copy of the file.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from benchmarks.make_log import PATIENT_ID, bench_protocol, make_log
from sessions.cli import main
from sessions.commands.status import _status_of_log
from sessions.home import LivHome
from sessions.log import SCHEMA_VERSION, SessionKind, SessionLog, SessionStore, canonical_json
from sessions.log.chain import _canonical_pairs, _Entry, _verify_chains
from sessions.log.fields import _raw_from_row
from sessions.log.storage import _SCHEMA_V1
from sessions.protocol import protocol_from_dict
from tests.simhelpers import enrol_home, write_signed

DAYS = 14


@contextlib.contextmanager
def _unguard(path: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection with the append-only triggers dropped, as whoever holds the file can."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("DROP TRIGGER IF EXISTS sessions_finished_never_change")
        conn.execute("DROP TRIGGER IF EXISTS sessions_never_deleted")
        yield conn


@pytest.fixture(scope="module")
def days_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """DAYS days of two 10-minute sessions ending yesterday, as make_log writes them (generated
    once: it is the same log every time but for its random log id); the file and its count.
    Tests never open it: each gets a copy (:func:`copy_of`)."""
    path = tmp_path_factory.mktemp("days-log") / "liv.db"
    count = make_log(path, years=DAYS / 365)
    return path, count


def copy_of(log: tuple[Path, int], path: Path) -> int:
    """A fresh copy of the generated log at ``path`` (a new file, as make_log writes one);
    its record count."""
    source, count = log
    assert not path.exists()
    assert not any(source.parent.glob(f"{source.name}-*")), "the log was left open"
    shutil.copy2(source, path)  # the file's bytes and its private mode
    return count


@pytest.fixture
def big_home(tmp_path: Path, days_log: tuple[Path, int]) -> LivHome:
    """A home whose log holds DAYS days of two 10-minute sessions, ending yesterday."""
    home = LivHome(tmp_path / "home")
    home.ensure()
    copy_of(days_log, home.db_path())
    with SessionLog(home.db_path()) as log:
        first = min(s.local_date for s in log.summaries())
    plan = tmp_path / "plan.yaml"
    write_signed(plan, yaml.safe_dump(bench_protocol(first, DAYS)))
    enrol_home(home).install_protocol(plan)
    return home


def _liv(home: LivHome, *argv: str) -> int:
    return main([*argv, "--home", str(home.root)])


# --- status, start and lists read summaries only --------------------------------------------


def test_status_sessions_and_start_never_read_an_envelope(
    big_home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    """Envelopes replaced by unreadable text: every list and schedule still works."""
    protocol = big_home.protocol()
    now = datetime.now(UTC)
    with SessionLog(big_home.db_path()) as log:  # today's two sessions, through the API
        today = now.astimezone(protocol.zone).date()
        for slot in (1, 2):
            sid = log.start_session(
                patient_id=PATIENT_ID, device_id="SIM-BENCH", firmware_version="sim-1.0",
                protocol_sha256=protocol.sha256, protocol_json=protocol.canonical_json(),
                started_utc=now - timedelta(minutes=30 - 12 * slot), timezone=protocol.timezone,
                local_date=today, slot=slot, minutes_prescribed=10.0, target_g=0.3,
            )  # fmt: skip
            ended = now - timedelta(minutes=25 - 12 * slot)
            log.finish_session(
                sid, status="completed", reason="", ended_utc=ended,
                minutes_at_dose=10.0, envelope=[(0.1, 0.3)], freqs_hz=[30.0], safety_events=[],
                mean_error_pct=0.0, p95_abs_error_pct=1.0, exposure=None,
            )  # fmt: skip
    with _unguard(big_home.db_path()) as conn:
        conn.execute("UPDATE sessions SET envelope = '{not json' || hex(randomblob(5000))")
    capsys.readouterr()

    assert _liv(big_home, "status") == 0
    out = capsys.readouterr().out
    assert "Session 1: done." in out
    assert "Session 2: done." in out
    assert f"Every session done {DAYS + 1} days in a row." in out

    assert _liv(big_home, "sessions") == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 2 * DAYS + 2

    # start decides from the same summaries: refused as done, not as a damaged log
    assert _liv(big_home, "start", "--device", "sim://?speed=max") == 1
    err = capsys.readouterr().err
    assert "sessions are done" in err
    assert "cannot be used" not in err

    assert _liv(big_home, "show", next(iter(_ids(big_home)))) == 1  # show reads it: refused
    assert "cannot be read" in capsys.readouterr().err


def _ids(home: LivHome) -> list[str]:
    with SessionLog(home.db_path(), read_only=True) as log:
        return [s.session_id for s in log.summaries()]


def test_status_queries_name_no_envelope_and_stay_few(big_home: LivHome) -> None:
    """What status sends to SQLite: a fixed number of queries, none reading the envelope."""
    protocol = big_home.protocol()
    statements: list[str] = []
    with SessionLog(big_home.db_path(), read_only=True) as log:
        assert log._conn is not None
        log._conn.set_trace_callback(statements.append)
        recent, minutes = _status_of_log(log, protocol, datetime.now(UTC))
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 2
    assert not any("envelope" in s or "*" in s or "last_checkpoint" in s for s in selects)
    assert len(minutes) == 2 * DAYS
    assert 0 < len(recent) <= 2 * 6  # the few days the decision can depend on


def test_summaries_equal_the_full_records_without_envelope(big_home: LivHome) -> None:
    with SessionLog(big_home.db_path(), read_only=True) as log:
        full = log.sessions()
        light = log.summaries()
    assert len(light) == len(full) == 2 * DAYS
    for summary, record in zip(light, full, strict=True):
        for name in summary.__dataclass_fields__:
            assert getattr(summary, name) == getattr(record, name), name


# --- verify and export stream ------------------------------------------------------------------


def _reference_verify(path: Path) -> tuple[object, dict[str, str]]:
    """The whole-log algorithm verify had before streaming (all entries in memory)."""
    with SessionStore(path, read_only=True) as store:
        conn = store._conn
        assert conn is not None
        chains: dict[str, list[_Entry]] = {}
        for row in conn.execute("SELECT * FROM sessions ORDER BY log_id, chain_index"):
            try:
                entry = _Entry(row["session_id"], row["chain_index"], _raw_from_row(row))
            except ValueError as exc:
                entry = _Entry(row["session_id"], row["chain_index"], None, str(exc))
            chains.setdefault(row["log_id"], []).append(entry)
        order = store._chain_order(conn)
    return _verify_chains([(log_id, chains[log_id]) for log_id in order])


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (None, None),
        ("UPDATE sessions SET envelope = replace(envelope, '[1,', '[1.5,') "
         "WHERE chain_index = 9", "does not match its record_hash"),
        ("UPDATE sessions SET envelope = replace(envelope, '0.3]', '0.30]') "
         "WHERE chain_index = 4", None),  # same numbers, not canonical: the hash still holds
        ("UPDATE sessions SET envelope = '[[1,2' WHERE chain_index = 7", "not valid JSON"),
        ("UPDATE sessions SET minutes_at_dose = 9.5 WHERE chain_index = 3", "does not match"),
        ("UPDATE sessions SET chain_index = 99 WHERE chain_index = 12", "does not match"),
        ("DELETE FROM sessions WHERE chain_index = 12", "record 12 before it is missing"),
    ],
)  # fmt: skip
def test_streaming_verify_finds_what_the_whole_log_check_finds(
    tmp_path: Path, days_log: tuple[Path, int], edit: str | None, what: str | None
) -> None:
    path = tmp_path / "liv.db"
    count = copy_of(days_log, path)
    if edit is not None:
        with _unguard(path) as conn:
            conn.execute("DROP INDEX sessions_chain_position")  # lets an index be edited
            conn.execute(edit)
    with SessionStore(path, read_only=True) as store:
        result = store.verify()
    reference_bad, reference_heads = _reference_verify(path)
    assert result.records_checked == count - (edit or "").startswith("DELETE")
    assert result.first_bad == reference_bad
    assert result.heads == reference_heads
    if what is None:
        assert result.ok
    else:
        assert result.first_bad is not None
        assert what in result.first_bad.what


def _verify_peak_bytes(path: Path) -> int:
    with SessionStore(path, read_only=True) as store:
        tracemalloc.start()
        try:
            assert store.verify().ok
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def test_verify_memory_does_not_grow_with_the_log(tmp_path: Path) -> None:
    short, long = tmp_path / "short.db", tmp_path / "long.db"
    make_log(short, years=5 / 365)
    make_log(long, years=25 / 365)  # five times as many records
    assert _verify_peak_bytes(long) < 1.5 * _verify_peak_bytes(short)


def test_export_streams_and_writes_the_same_lines(
    tmp_path: Path, days_log: tuple[Path, int]
) -> None:
    path = tmp_path / "liv.db"
    copy_of(days_log, path)
    with _unguard(path) as conn:  # one envelope stored in a non-canonical (but equal) form
        conn.execute(
            "UPDATE sessions SET envelope = replace(envelope, '0.3]', '0.30]') "
            "WHERE chain_index = 2"
        )
    out = tmp_path / "out.jsonl"
    with SessionLog(path, read_only=True) as log:
        assert log.export_jsonl(out) == 2 * DAYS
        expected = [  # no plate vouched for these records: device_voucher is null
            canonical_json({**raw, "device_voucher": None})
            for raw in log._export_rows(log._connection())
        ]
    assert out.read_text(encoding="utf-8").splitlines() == expected
    copy = tmp_path / "copy.db"
    with SessionLog(copy) as log:  # the export imports into a new log and verifies there
        assert log.import_jsonl(out).added == 2 * DAYS
        assert log.verify().ok


def test_canonical_pairs_accepts_only_canonical_text() -> None:
    """The fast check never accepts a text that canonical JSON would write differently."""
    rng = random.Random(11)
    for _ in range(500):
        points = [
            [round(rng.uniform(0, 700), rng.randrange(7)), round(rng.random(), rng.randrange(7))]
            for _ in range(rng.randrange(6))
        ]
        assert _canonical_pairs(canonical_json(points))
    alphabet = "0123456789.,[]-;e "
    for _ in range(30_000):
        points = [[round(rng.uniform(0, 99), rng.randrange(4)), round(rng.random(), 5)]]
        chars = list(canonical_json(points * rng.randrange(1, 4)))
        for _ in range(rng.randrange(1, 3)):
            at = rng.randrange(len(chars))
            match rng.randrange(3):
                case 0:
                    chars[at] = rng.choice(alphabet)
                case 1:
                    chars.insert(at, rng.choice(alphabet))
                case _:
                    del chars[at]
        text = "".join(chars)
        if _canonical_pairs(text):
            assert canonical_json(json.loads(text)) == text, text
    for text in (
        "[[0.10,1]]",
        "[[01,1]]",
        "[[1,2,3]]",
        "[[-1,2]]",
        "[[1e5,2]]",
        "[[1,2;3,4]]",
        "[[1234567890,1]]",
        "[[0.1234567,1]]",
        "[[1.,2]]",
        "[[.5,2]]",
        "[[1,2],]",
    ):
        assert not _canonical_pairs(text), text  # fmt: skip


# --- schema ---------------------------------------------------------------------------------


def test_a_schema_1_log_is_migrated_and_keeps_verifying(
    tmp_path: Path, days_log: tuple[Path, int]
) -> None:
    """A log written by the first schema opens, gains the summary index and the kind column, and
    still verifies: its records (written without a kind) keep their hashes and read as therapy."""
    path = tmp_path / "old.db"
    copy_of(days_log, path)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:  # schema 1
        conn.execute("DROP INDEX IF EXISTS sessions_day_minutes")
        conn.execute("DROP INDEX sessions_clock_order")  # schema 7's
        conn.execute("ALTER TABLE sessions DROP COLUMN error_uncertainty_pct")  # schema 3's
        conn.execute("ALTER TABLE sessions DROP COLUMN kind")  # schema 4 added it
        conn.execute("DROP TABLE envelope_chunks")  # schema 5's
        for table in ("vouchers", "unvouched"):  # schema 6 (and their triggers, indexes)
            conn.execute(f"DROP TABLE {table}")
        conn.execute("DROP TRIGGER meta_never_deleted")
        conn.execute("DELETE FROM meta WHERE key = 'vouched_from_index'")
        conn.execute(_SCHEMA_V1[-1])  # the trigger as schema 1 made it
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE sql NOT NULL")}
    assert names == {_name(s) for s in _SCHEMA_V1}
    with SessionLog(path, read_only=True) as log:  # an audit never migrates: reads as it is
        assert len(log.summaries()) == 2 * DAYS
        assert {s.kind for s in log.summaries()} == {SessionKind.THERAPY}
        assert len(log.slot_minutes(PATIENT_ID)) == 2 * DAYS
        assert log.verify().ok
    with SessionLog(path) as log:
        assert log.verify().ok
        assert len(log.slot_minutes(PATIENT_ID)) == 2 * DAYS
        assert {s.kind for s in log.summaries()} == {SessionKind.THERAPY}
    with contextlib.closing(sqlite3.connect(path)) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        plan = " ".join(
            str(r[-1])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT local_date, slot, minutes_at_dose FROM sessions "
                "WHERE patient_id = ? ORDER BY local_date, slot, started_utc, session_id",
                (PATIENT_ID,),
            )
        )
    assert version == (str(SCHEMA_VERSION),)
    assert "COVERING INDEX sessions_day_minutes" in plan


def _name(statement: str) -> str:
    """The name a CREATE TABLE / INDEX / TRIGGER statement gives."""
    words = statement.replace("(", " ").split()
    kind = next(i for i, w in enumerate(words) if w in ("TABLE", "INDEX", "TRIGGER"))
    return words[kind + 1]


# --- start-up ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["status", "--help"], ["status"]])
def test_help_and_status_do_not_import_the_numerics(tmp_path: Path, argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from sessions.cli import main\n"
        "try:\n"
        f"    main({argv!r} + (['--home', sys.argv[1]] if 'status' in {argv!r} else []))\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'scipy', 'threadpoolctl') or m.startswith('controller.loop'))\n"
        "print(heavy)\n"
    )
    home = LivHome(tmp_path / "home")
    home.ensure()
    plan = tmp_path / "plan.yaml"
    today = datetime.now(UTC).date()
    write_signed(plan, yaml.safe_dump(bench_protocol(today, 10)))
    protocol_from_dict(bench_protocol(today, 10))  # the file is a valid protocol
    enrol_home(home).install_protocol(plan)
    done = subprocess.run(
        [sys.executable, "-c", code, str(home.root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
