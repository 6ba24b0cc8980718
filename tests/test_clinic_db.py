"""The clinic database: import, idempotence, conflicts, gaps, migrations, concurrency.

Every test runs on SQLite and on a real PostgreSQL server: ``$LIV_TEST_POSTGRES_URL`` if set
(a role that may CREATE DATABASE), else a throwaway cluster this module starts itself with the
Debian binaries under /usr/lib/postgresql/*/bin (as the ``postgres`` user when run as root).
Each test gets a fresh database. The exports are written exactly as ``liv export`` writes them
(canonical JSON lines with a verifying hash chain; one test round-trips them through a
SessionLog to prove it).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from benchmarks.make_log import completed_record
from firmware_bridge.countersign import GENESIS_HEAD, next_head, signed_bytes
from sessions.clinic.db import SCHEMA_VERSION, ClinicDb, ClinicDbError
from sessions.clinic.importer import ImportOutcome, import_export, refresh_patient, verify_export
from sessions.clinic.plates import PlateRegistry, add_plate
from sessions.log import GENESIS_HASH, SessionLog
from sessions.log.canonical import canonical_json
from sessions.log.vouch import Voucher, device_id_raw
from sessions.protocol import protocol_from_dict

TODAY = date(2026, 3, 1)
ZONE = "Europe/Berlin"

# --------------------------------------------------------------------------------------------
# exports as `liv export` writes them


def protocol_dict(patient_id: str, study_start: date, days: int = 120) -> dict[str, Any]:
    return {
        "patient_id": patient_id,
        "target_g": 0.3,
        "frequency_hz": 30.0,
        "minutes_per_session": 10.0,
        "sessions_per_day": 2,
        "min_gap_hours": 3.0,
        "daily_windows": [],
        "study_start": study_start.isoformat(),
        "study_end": (study_start + timedelta(days=days - 1)).isoformat(),
        "timezone": ZONE,
        "dose_tolerance": 0.1,
    }


def make_records(
    patient_id: str,
    days: int,
    *,
    last_day: date = TODAY - timedelta(days=1),
    log_id: str | None = None,
    device_id: str | None = None,
    firmware: str = "1.2.0",
    seed: int = 1,
    skip_days: frozenset[int] = frozenset(),
    tweak: dict[int, dict[str, Any]] | None = None,
    envelope_points: int = 4,
) -> list[dict[str, Any]]:
    """A verifying chain of ``days`` days of two 10-minute sessions (``tweak[k]``: record k's
    field changes, applied before hashing)."""
    rng = random.Random(seed)
    device_id = device_id or f"LIV-{patient_id}"[:16]  # each patient's own plate
    zone = ZoneInfo(ZONE)
    first_day = last_day - timedelta(days=days - 1)
    protocol = protocol_from_dict(protocol_dict(patient_id, first_day - timedelta(days=10)))
    log_id = log_id or str(uuid.UUID(int=rng.getrandbits(128), version=4))
    records: list[dict[str, Any]] = []
    prev = GENESIS_HASH
    for k in range(days):
        if k in skip_days:
            continue
        day = first_day + timedelta(days=k)
        for slot, hour in ((1, 8), (2, 18)):
            started = datetime(day.year, day.month, day.day, hour, 5, tzinfo=zone).astimezone(UTC)
            ended = started + timedelta(minutes=10, seconds=3)
            raw = completed_record(
                log_id=log_id,
                chain_index=len(records),
                prev_hash=prev,
                session_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                device_id=device_id,
                firmware_version=firmware,
                protocol=protocol,
                started=started,
                ended=ended,
                slot=slot,
                mean_error_pct=-0.4,
                p95_abs_error_pct=1.2,
                envelope=[[round(0.1 * i, 3), 0.3] for i in range(envelope_points)],
                changes=(tweak or {}).get(len(records)),
            )
            prev = raw["record_hash"]
            records.append(raw)
    return records


def plate_key(device_id: str) -> Ed25519PrivateKey:
    """A test plate's device key, the same for the same device id in every test."""
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(device_id.encode()).digest())


def plate_key_hex(device_id: str) -> str:
    return plate_key(device_id).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def vouched(
    records: list[dict[str, Any]],
    first_counter: int = 1,
    key_of: str | None = None,
    head: str = GENESIS_HEAD.hex(),
) -> list[dict[str, Any]]:
    """The records with the ``device_voucher`` their plate gives them, counted from
    ``first_counter`` after ``head`` in chain order (``key_of``: sign with another device's key
    instead)."""
    out: list[dict[str, Any]] = []
    heads: dict[str, tuple[int, bytes]] = {}
    for raw in sorted(records, key=lambda r: (r["log_id"], r["chain_index"])):
        device_id = str(raw["device_id"])
        counter, prev = heads.get(device_id, (first_counter - 1, bytes.fromhex(head)))
        counter += 1
        digest = bytes.fromhex(raw["record_hash"])
        new_head = next_head(prev, counter, digest)
        key = plate_key(key_of or device_id)
        signature = key.sign(
            signed_bytes(device_id_raw(device_id), counter, digest, prev, new_head)
        )
        voucher = Voucher(plate_key_hex(key_of or device_id), counter, prev.hex(),
                          new_head.hex(), signature.hex())  # fmt: skip
        out.append({**raw, "device_voucher": voucher.to_json()})
        heads[device_id] = (counter, new_head)
    return out


def write_export(path: Path, records: list[dict[str, Any]], *, vouch: bool = True) -> Path:
    """The file `liv export` writes: each record with its plate's voucher (``vouch``)."""
    lines = (
        vouched(records) if vouch and records and "device_voucher" not in records[0] else records
    )
    path.write_text("".join(canonical_json(r) + "\n" for r in lines), encoding="utf-8")
    return path


def register_plates(db: ClinicDb, *device_ids: str) -> None:
    for device_id in device_ids:
        add_plate(db, device_id, plate_key_hex(device_id))


def cli_register(db: str, *device_ids: str) -> None:
    """Register the test plates the way a clinician does: ``liv clinic plate add``."""
    from sessions.cli import main

    for device_id in device_ids:
        argv = ["clinic", "plate", "add", device_id, plate_key_hex(device_id)]
        assert main([*argv, *(["--db", db] if db else [])]) == 0


def import_registered(db: ClinicDb, path: Path) -> ImportOutcome:
    """``import_export`` after registering the test plates of the file's records."""
    devices = {
        json.loads(line)["device_id"]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and line.lstrip().startswith("{") and '"device_id"' in line
    }
    register_plates(db, *sorted(devices))
    return import_export(db, path)


# --------------------------------------------------------------------------------------------
# a real PostgreSQL server


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL binaries (/usr/lib/postgresql/N/bin), or None."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def throwaway_postgres(bindir: Path) -> Iterator[str]:
    """A new PostgreSQL cluster on a unix socket in a temp dir, for as long as the block runs.

    As root (here and in CI) the server runs as the ``postgres`` user (``runuser``): PostgreSQL
    refuses to run as root. No TCP port is opened; the port number only names the socket.
    """
    root = os.geteuid() == 0
    as_postgres = ["runuser", "-u", "postgres", "--"] if root else []
    base = Path(tempfile.mkdtemp(prefix="liv-pg-"))
    os.chmod(base, 0o755)
    if root:
        shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    port = _free_port()
    try:
        subprocess.run(
            [*as_postgres, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
             "-U", "postgres", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        options = f"-c listen_addresses='' -k {base} -p {port} -c fsync=off"
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"),
             "-w", "-o", options, "start"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        yield f"postgresql://postgres@/postgres?host={base}&port={port}"
    finally:
        subprocess.run(
            [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server URL: $LIV_TEST_POSTGRES_URL, else a throwaway cluster."""
    given = os.environ.get("LIV_TEST_POSTGRES_URL", "")
    if given:
        yield given
        return
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL binaries under /usr/lib/postgresql/*/bin: apt-get install "
            "postgresql, or set LIV_TEST_POSTGRES_URL"
        )
    with throwaway_postgres(bindir) as url:
        yield url


def _with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def fresh_postgres_db(server: str) -> Iterator[str]:
    import psycopg

    name = f"liv_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield _with_dbname(server, name)
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty clinic database on each backend."""
    if request.param == "sqlite":
        yield str(tmp_path / "clinic" / "clinic.db")
        return
    server = request.getfixturevalue("postgres_server")
    with fresh_postgres_db(server) as url:
        yield url


def count(url: str, sql: str) -> int:
    with ClinicDb(url) as db:
        return int(db.query(sql)[0][0])


# --------------------------------------------------------------------------------------------
# import


def test_an_export_is_imported_once_and_reimporting_adds_nothing(
    db_url: str, tmp_path: Path
) -> None:
    export = write_export(tmp_path / "p1.jsonl", make_records("P1", 10))
    with ClinicDb(db_url) as db:
        first = import_registered(db, export)
        again = import_registered(db, export)
    assert (first.refused, first.added, first.duplicates) == (None, 20, 0)
    assert (again.refused, again.added, again.duplicates) == (None, 0, 20)
    assert count(db_url, "SELECT COUNT(*) FROM records") == 20
    assert count(db_url, "SELECT COUNT(*) FROM problems") == 0
    assert count(db_url, "SELECT COUNT(*) FROM patient_days WHERE patient_id = 'P1'") > 0


def test_a_longer_export_of_the_same_log_adds_only_the_new_records(
    db_url: str, tmp_path: Path
) -> None:
    records = make_records("P1", 10)
    early = write_export(tmp_path / "early.jsonl", records[:8])
    full = write_export(tmp_path / "full.jsonl", records)
    with ClinicDb(db_url) as db:
        assert import_registered(db, early).added == 8
        later = import_registered(db, full)
    assert (later.added, later.duplicates, later.problems) == (12, 8, [])


def test_a_conflicting_record_refuses_the_whole_file_and_is_reported(
    db_url: str, tmp_path: Path
) -> None:
    original = make_records("P1", 5, seed=3)
    forked = make_records("P1", 6, seed=3, tweak={4: {"minutes_at_dose": 3.0}})
    with ClinicDb(db_url) as db:
        assert import_registered(db, write_export(tmp_path / "a.jsonl", original)).added == 10
        outcome = import_registered(db, write_export(tmp_path / "b.jsonl", forked))
    assert outcome.refused is not None
    assert "conflicts" in outcome.refused
    assert outcome.added == 0
    # nothing of the conflicting file was merged, not even its new records
    assert count(db_url, "SELECT COUNT(*) FROM records") == 10
    assert count(db_url, "SELECT COUNT(*) FROM problems WHERE kind = 'conflict'") == 1
    assert count(db_url, "SELECT COUNT(*) FROM imports WHERE outcome = 'refused'") == 1


def test_the_same_session_under_another_place_is_a_conflict(db_url: str, tmp_path: Path) -> None:
    first = make_records("P1", 2, seed=4)
    stolen = first[1]["session_id"]
    other = make_records("P2", 2, seed=5, tweak={0: {"session_id": stolen}})
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "a.jsonl", first))
        outcome = import_registered(db, write_export(tmp_path / "b.jsonl", other))
    assert outcome.refused is not None
    assert stolen in outcome.refused
    assert count(db_url, "SELECT COUNT(*) FROM records WHERE patient_id = 'P2'") == 0


def test_an_edited_export_is_refused_by_the_verification_seam(db_url: str, tmp_path: Path) -> None:
    records = make_records("P1", 3)
    records[2]["minutes_at_dose"] = 9.5  # edited after hashing
    export = write_export(tmp_path / "edited.jsonl", records)
    with pytest.raises(Exception, match="does not verify"), ClinicDb(db_url) as db:
        verify_export(export, PlateRegistry(db))
    with ClinicDb(db_url) as db:
        outcome = import_registered(db, export)
    assert outcome.refused is not None
    assert "does not verify" in outcome.refused
    assert count(db_url, "SELECT COUNT(*) FROM records") == 0
    assert count(db_url, "SELECT COUNT(*) FROM problems WHERE kind = 'unverified'") == 1


def test_an_export_shorter_than_the_clinics_copy_is_reported_as_a_rollback(
    db_url: str, tmp_path: Path
) -> None:
    records = make_records("P1", 10)
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "full.jsonl", records))
        outcome = import_registered(db, write_export(tmp_path / "old.jsonl", records[:6]))
    assert outcome.refused is None
    assert len(outcome.problems) == 1
    assert "lost 14 record(s)" in outcome.problems[0]
    assert count(db_url, "SELECT COUNT(*) FROM problems WHERE kind = 'rollback'") == 1


def test_a_patients_new_log_beside_the_old_one_is_reported(db_url: str, tmp_path: Path) -> None:
    old = make_records("P1", 4, last_day=TODAY - timedelta(days=10), seed=6)
    new = make_records("P1", 4, seed=7, device_id="LIV-0002")  # a new plate
    with ClinicDb(db_url) as db:
        import_registered(db, write_export(tmp_path / "old.jsonl", old))
        outcome = import_registered(db, write_export(tmp_path / "new.jsonl", new))
    assert outcome.added == 8
    assert any("new log" in p for p in outcome.problems)
    assert count(db_url, "SELECT COUNT(*) FROM problems WHERE kind = 'new_chain'") == 1


def test_exports_written_by_the_session_log_are_imported(db_url: str, tmp_path: Path) -> None:
    """Round trip through the home's own log: what `liv export` writes, the clinic reads."""
    source = write_export(tmp_path / "made.jsonl", make_records("P1", 3))
    with SessionLog(tmp_path / "home.db") as log:
        log.import_jsonl(source)
        exported = tmp_path / "exported.jsonl"
        log.export_jsonl(exported)
    with ClinicDb(db_url) as db:
        outcome = import_registered(db, exported)
    assert (outcome.refused, outcome.added) == (None, 6)


# --------------------------------------------------------------------------------------------
# migrations


def _v1_database(url: str) -> None:
    """A database as the first version of this schema left it, with one record in it."""
    with ClinicDb(url, migrate=False) as db:
        db._migrate(target=1)
        assert db.version == 1
        raw = make_records("P1", 1)[0]
        db.execute(
            "INSERT INTO imports (import_id, file_name, file_sha256, imported_utc, outcome,"
            " added, duplicates, detail) VALUES ('i1', 'f', 'x', 't', 'imported', 1, 0, '')"
        )
        db.execute(
            "INSERT INTO protocols (sha256, protocol_json) VALUES (?, ?)",
            (raw["protocol_sha256"], raw["protocol_json"]),
        )
        summary = {k: v for k, v in raw.items() if k not in ("envelope", "protocol_json")}
        db.execute(
            "INSERT INTO records (log_id, chain_index, session_id, prev_hash, record_hash,"
            " patient_id, device_id, firmware_version, protocol_sha256, started_utc,"
            " local_date, slot, status, minutes_prescribed, minutes_at_dose, target_g,"
            " mean_error_pct, summary_json, record_json, import_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'i1')",
            (
                *(raw[k] for k in ("log_id", "chain_index", "session_id", "prev_hash",
                                   "record_hash", "patient_id", "device_id",
                                   "firmware_version", "protocol_sha256", "started_utc",
                                   "local_date", "slot", "status", "minutes_prescribed",
                                   "minutes_at_dose", "target_g", "mean_error_pct")),
                canonical_json(summary),
                canonical_json(raw),
            ),
        )  # fmt: skip


# the tables of a database at schema 7 or later, in an order their references allow
_COPIED = (
    "protocols",
    "imports",
    "records",
    "problems",
    "problem_notes",
    "plates",
    "prescriptions",
    "vouchers",
    "envelopes",
    "patients",
    "patient_days",
    "patient_flags",
)


def copy_at_schema(source: str, target: str, version: int) -> None:
    """``target``, new, made a database at schema ``version`` (7 or later: the columns are
    today's) holding every row of ``source``: what the software of that version left, the
    rows written by today's importer (which needs today's schema)."""
    assert version >= 7
    with ClinicDb(source) as src, ClinicDb(target, migrate=False) as dst:
        dst._migrate(target=version)
        for table in (t for t in _COPIED if version >= 8 or t != "problem_notes"):
            cursor = src.execute(f"SELECT * FROM {table}")
            columns = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
            if rows:
                dst.executemany(
                    f"INSERT INTO {table} ({', '.join(columns)})"
                    f" VALUES ({', '.join('?' * len(columns))})",
                    rows,
                )


def test_an_old_version_database_is_migrated_step_by_step(db_url: str) -> None:
    _v1_database(db_url)
    with ClinicDb(db_url) as db:
        assert db.migrated_from == 1
        assert db.version == SCHEMA_VERSION
        versions = [v for (v,) in db.query("SELECT version FROM schema_version ORDER BY 1")]
        assert versions == list(range(1, SCHEMA_VERSION + 1))
        assert db.query("SELECT kind FROM records") == [("therapy",)]
        refresh_patient(db, "P1")
        assert db.query("SELECT sessions FROM patients WHERE patient_id = 'P1'") == [(1,)]
    with ClinicDb(db_url) as db:  # opening again changes nothing
        assert db.migrated_from is None


def test_a_newer_database_is_refused_and_left_alone(db_url: str) -> None:
    with ClinicDb(db_url) as db:
        db.execute(
            "INSERT INTO schema_version (version, applied_utc) VALUES (?, 'later')",
            (SCHEMA_VERSION + 1,),
        )
    with pytest.raises(ClinicDbError, match="newer version"):
        ClinicDb(db_url)
    assert raw_scalar(db_url, "SELECT MAX(version) FROM schema_version") == SCHEMA_VERSION + 1


def raw_scalar(url: str, sql: str) -> Any:
    """One value read with the driver itself (for a database ClinicDb refuses to open)."""
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute(sql).fetchone()
    else:
        import sqlite3

        with contextlib.closing(sqlite3.connect(url)) as conn:
            row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


# --------------------------------------------------------------------------------------------
# concurrency


def test_clinicians_importing_at_once_lose_nothing(db_url: str, tmp_path: Path) -> None:
    """Four importers, each with its own connection, take overlapping exports at once."""
    ClinicDb(db_url).close()  # the schema exists (concurrent first opens: test below)
    exports = [
        write_export(tmp_path / f"p{k}.jsonl", make_records(f"P{k}", 15, seed=10 + k))
        for k in range(6)
    ]
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def importer(order: list[Path]) -> None:
        try:
            with ClinicDb(db_url) as db:
                start.wait()
                for path in order:
                    outcome = import_registered(db, path)
                    assert outcome.refused is None, outcome.refused
        except BaseException as exc:
            errors.append(exc)

    orders = [exports, exports[::-1], exports[2:] + exports[:2], exports[1::2] + exports[::2]]
    threads = [threading.Thread(target=importer, args=(o,)) for o in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert count(db_url, "SELECT COUNT(*) FROM records") == 6 * 30
    assert count(db_url, "SELECT COUNT(DISTINCT session_id) FROM records") == 6 * 30
    assert count(db_url, "SELECT COUNT(*) FROM problems") == 0
    assert count(db_url, "SELECT SUM(added) FROM imports") == 6 * 30
    assert count(db_url, "SELECT SUM(sessions) FROM patients") == 6 * 30


def _open_at_once(url: str, programs: int) -> list[BaseException]:
    """``programs`` threads open (and so create and migrate) ``url`` at the same moment."""
    errors: list[BaseException] = []
    start = threading.Barrier(programs)

    def opener() -> None:
        try:
            start.wait()
            with ClinicDb(url) as db:
                assert db.version == SCHEMA_VERSION
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(programs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_two_programs_creating_the_database_at_once_both_succeed(
    db_url: str, tmp_path: Path
) -> None:
    assert not _open_at_once(db_url, 3)
    assert count(db_url, "SELECT COUNT(*) FROM schema_version") == SCHEMA_VERSION
    if db_url.startswith("postgres"):
        return
    # SQLite answers "database is locked" at once (no busy wait) to a program switching a file
    # being created to write-ahead logging: one new file in six to fifty lost that race before
    # the switch was retried, so the race is run on many new files.
    for attempt in range(200):
        url = str(tmp_path / f"race{attempt}" / "clinic.db")
        errors = _open_at_once(url, 3)
        assert not errors, (attempt, errors)
        assert count(url, "SELECT COUNT(*) FROM schema_version") == SCHEMA_VERSION


def test_envelopes_are_kept_only_for_the_sessions_a_report_draws(
    db_url: str, tmp_path: Path
) -> None:
    """The bulk of a record is its envelope; the clinic keeps it only for flagged sessions."""
    from sessions.clinic.importer import load_record

    trip = {"status": "tripped", "minutes_at_dose": 2.0, "reason": "overload"}
    records = make_records("P1", 5, tweak={3: trip}, envelope_points=50)
    with ClinicDb(db_url) as db:
        assert import_registered(db, write_export(tmp_path / "p1.jsonl", records)).added == 10
        kept = [s for (s,) in db.query("SELECT session_id FROM envelopes")]
        assert kept == [records[3]["session_id"]]
        assert not [t for (t,) in db.query("SELECT record_json FROM records") if "envelope" in t]
        flagged = load_record(db, records[3]["session_id"])
        assert [list(p) for p in flagged.envelope] == records[3]["envelope"]
        assert load_record(db, records[0]["session_id"]).envelope in ([], ())
        assert load_record(db, records[0]["session_id"]).record_hash == records[0]["record_hash"]


def test_verify_export_holds_one_chain_at_a_time(tmp_path: Path) -> None:
    """A file of many chains (patients) is verified chain by chain: the envelopes of the other
    chains are never held, so the peak does not grow with the number of chains."""
    import tracemalloc

    def peak(patients: int) -> int:
        records = [
            r
            for k in range(patients)
            for r in vouched(make_records(f"M{k}", 3, seed=k, envelope_points=2000))
        ]
        path = write_export(tmp_path / f"m{patients}.jsonl", records)
        del records
        with ClinicDb(str(tmp_path / f"c{patients}.db")) as db:
            register_plates(db, *(f"LIV-M{k}" for k in range(patients)))
            registry = PlateRegistry(db)
            tracemalloc.start()
            try:
                verified = verify_export(path, registry)
                top = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
        assert len(verified.records) == 6 * patients
        return top

    one, six = peak(1), peak(6)
    assert six < 2.5 * one, (one, six)
