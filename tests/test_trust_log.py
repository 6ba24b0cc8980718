"""A record the plate vouches for: every attack on a real log is detected or refused.

The log is produced by real sessions on ``sim://?speed=max`` (module fixture); each test works
on its own copy of the home and of the simulated plate's non-volatile memory. Every attack is
first shown to pass the hash chain alone (``SessionLog.verify``, all that ``liv verify`` checked
before device signatures), then shown caught by ``liv verify`` or refused by ``liv import``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from sessions.cli import main
from sessions.home import LivHome
from sessions.log import (
    AWAITING_REASON,
    GENESIS_HASH,
    LEGACY_TEXT,
    PINS_FILE,
    DevicePins,
    SessionLog,
    canonical_json,
    record_hash,
)
from sessions.log.fields import _raw_from_row
from sessions.wording import say
from tests.simhelpers import install_signed

DEVICE_ID = "SIM-T1"
SESSIONS = 4


@dataclass(frozen=True)
class Plant:
    """A home with a log of real sessions and the simulated plate's memory beside it."""

    root: Path

    @property
    def home(self) -> LivHome:
        return LivHome(self.root / "home")

    @property
    def db(self) -> Path:
        return self.home.db_path()

    @property
    def nv(self) -> Path:
        return self.root / "nv"

    @property
    def url(self) -> str:
        return f"sim://?speed=max&mass=70&seed=4&device_id={DEVICE_ID}&nv={self.nv}"

    def liv(self, *argv: str) -> int:
        return main([*argv, "--home", str(self.home.root)])


def _backup(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Plant:
    plant = Plant(tmp_path_factory.mktemp("golden"))
    home = plant.home
    home.ensure()
    install_signed(home)
    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={DEVICE_ID}") as dev:
        home.calibrations().save(identify(dev))
    assert plant.liv("device", "set", plant.url) == 0
    for n in range(SESSIONS):
        assert plant.liv("start", "--device", plant.url, "--override", "trust test") == 0
        if n == 1:
            _backup(plant.db, plant.root / "after-2.db")
    return plant


@pytest.fixture
def plant(golden: Plant, tmp_path: Path) -> Plant:
    shutil.copytree(golden.root, tmp_path / "plant")
    return Plant(tmp_path / "plant")


@contextmanager
def tampered(db: Path) -> Iterator[sqlite3.Connection]:
    """The log opened as an attacker would: append-only triggers dropped."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        for (trigger,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f'DROP TRIGGER "{trigger}"')
        conn.execute("BEGIN")
        yield conn
        conn.execute("COMMIT")
    finally:
        conn.close()


def rechain(conn: sqlite3.Connection) -> None:
    """Recompute every record's prev_hash and record_hash in chain order (the keyless chain)."""
    prev = GENESIS_HASH
    rows = conn.execute(
        "SELECT * FROM sessions WHERE record_hash IS NOT NULL ORDER BY chain_index"
    ).fetchall()
    for row in rows:
        raw = _raw_from_row(row)
        raw["prev_hash"] = prev
        new = record_hash(prev, raw)
        conn.execute(
            "UPDATE sessions SET prev_hash = ?, record_hash = ? WHERE session_id = ?",
            (prev, new, row["session_id"]),
        )
        prev = new


def chain_alone_passes(plant: Plant) -> None:
    """What the log proved before device signatures: the attack gets past it."""
    with SessionLog(plant.db, read_only=True) as log:
        result = log.verify()
    assert result.ok, result.first_bad


def verify(plant: Plant, capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str]:
    capsys.readouterr()
    code = plant.liv("verify", *options)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def trust_problems(plant: Plant, connected: bool = False) -> list[str]:
    from sessions.log import PlateState

    plate = None
    if connected:
        with DeviceClient.open(plant.url) as device:
            identity = device.identity()
        plate = PlateState(
            identity.device_id, identity.public_key.hex(), identity.counter, identity.head.hex()
        )
    pins = DevicePins(plant.home.root / PINS_FILE).all()
    with SessionLog(plant.db, read_only=True) as log:
        return log.verify_vouchers(pins, plate).problems


# ---- the untouched log -------------------------------------------------------------------------


def test_an_untouched_log_verifies_with_and_without_the_plate(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = verify(plant, capsys, "--device", plant.url)
    assert code == 0, text
    assert f"{SESSIONS} vouched for by the plate" in text
    assert f"the plate's counter {SESSIONS} matches the log" in text
    code, text = verify(plant, capsys, "--no-device")
    assert code == 0, text
    assert "only be detected with the plate connected" in text


# ---- attacks on the log file --------------------------------------------------------------------


def test_an_edited_record_with_a_recomputed_chain_is_detected(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    with tampered(plant.db) as conn:
        conn.execute("UPDATE sessions SET minutes_at_dose = 9.5 WHERE chain_index = 1")
        rechain(conn)
    chain_alone_passes(plant)
    code, text = verify(plant, capsys, "--no-device")
    assert code == 1
    assert "LOG NOT VOUCHED FOR BY THE PLATE" in text
    assert "record 1" in text
    assert "changed after the plate signed it" in text


def test_a_rechained_log_is_detected(plant: Plant, capsys: pytest.CaptureFixture[str]) -> None:
    """Records swapped in order and the chain rebuilt: no record's hash is what was signed."""
    with tampered(plant.db) as conn:
        conn.execute("UPDATE sessions SET chain_index = -1 WHERE chain_index = 1")
        conn.execute("UPDATE sessions SET chain_index = 1 WHERE chain_index = 2")
        conn.execute("UPDATE sessions SET chain_index = 2 WHERE chain_index = -1")
        rechain(conn)
    chain_alone_passes(plant)
    code, text = verify(plant, capsys, "--no-device")
    assert code == 1
    assert "changed after the plate signed it" in text


def _delete_record(conn: sqlite3.Connection, session_id: str) -> None:
    """Remove one record from every table that holds it (its voucher, its row)."""
    for table in ("vouchers", "unvouched", "sessions"):
        conn.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))


def test_a_deleted_middle_record_is_detected(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    with tampered(plant.db) as conn:
        (victim,) = conn.execute("SELECT session_id FROM sessions WHERE chain_index = 1").fetchone()
        _delete_record(conn, victim)
        conn.execute("UPDATE sessions SET chain_index = chain_index - 1 WHERE chain_index > 1")
        rechain(conn)
    chain_alone_passes(plant)
    code, _ = verify(plant, capsys, "--no-device")
    assert code == 1
    problems = trust_problems(plant)
    assert any("record(s) 2 before" in p and "missing from the log" in p for p in problems)


def _delete_last(plant: Plant, count: int) -> None:
    """Delete the log's last ``count`` records, as someone holding the file could."""
    with tampered(plant.db) as conn:
        victims = conn.execute(
            "SELECT session_id FROM sessions ORDER BY chain_index DESC LIMIT ?", (count,)
        ).fetchall()
        for (victim,) in victims:
            _delete_record(conn, victim)


def test_deleting_the_last_record_is_detected_with_the_plate_connected(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    _delete_last(plant, 1)
    chain_alone_passes(plant)
    code, text = verify(plant, capsys, "--device", plant.url)
    assert code == 1
    assert f"vouched for records up to {SESSIONS} but the log holds up to {SESSIONS - 1}" in text


def test_a_truncated_log_is_detected_with_the_configured_plate(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    """`liv verify` asks the home's configured plate (liv device set) by itself."""
    _delete_last(plant, 3)
    chain_alone_passes(plant)
    code, text = verify(plant, capsys)
    assert code == 1
    assert "the last records were deleted" in text


def test_an_emptied_log_is_detected_with_the_plate_connected(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    _delete_last(plant, SESSIONS)
    chain_alone_passes(plant)
    code, text = verify(plant, capsys, "--device", plant.url)
    assert code == 1
    assert f"up to {SESSIONS} but the log holds none" in text


def test_a_log_rolled_back_to_an_older_copy_is_detected(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    for suffix in ("-wal", "-shm"):
        plant.db.with_name(plant.db.name + suffix).unlink(missing_ok=True)
    shutil.copy(plant.root / "after-2.db", plant.db)
    chain_alone_passes(plant)
    code, text = verify(plant, capsys, "--device", plant.url)
    assert code == 1
    assert f"up to {SESSIONS} but the log holds up to 2" in text


def test_a_log_replaced_by_another_plates_is_detected(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log of the same plate id vouched for by another key (another plate, or a key the
    attacker made): refused against the key this home paired with."""
    other = LivHome(tmp_path / "other")
    other.ensure()
    shutil.copy(plant.home.protocol_path, other.protocol_path)
    shutil.copy(plant.home.clinic_key_path, other.clinic_key_path)  # the same clinic
    shutil.copytree(plant.home.root / "calibration", other.root / "calibration")
    url = f"sim://?speed=max&mass=70&seed=4&device_id={DEVICE_ID}&nv={tmp_path / 'nv2'}"
    assert main(["start", "--device", url, "--home", str(other.root)]) == 0
    for suffix in ("", "-wal", "-shm"):
        plant.db.with_name(plant.db.name + suffix).unlink(missing_ok=True)
    _backup(other.db_path(), plant.db)
    chain_alone_passes(plant)
    code, text = verify(plant, capsys, "--no-device")
    assert code == 1
    assert "which this home never paired with" in text


@pytest.mark.parametrize("signature", ["none", "forged"])
def test_a_forged_appended_record_is_detected(
    plant: Plant, capsys: pytest.CaptureFixture[str], signature: str
) -> None:
    with tampered(plant.db) as conn:
        last = conn.execute("SELECT * FROM sessions ORDER BY chain_index DESC LIMIT 1").fetchone()
        raw = _raw_from_row(last)
        raw.update(
            session_id="forged-0001", chain_index=raw["chain_index"] + 1, minutes_at_dose=1.0
        )
        raw["prev_hash"] = last["record_hash"]
        raw["record_hash"] = record_hash(raw["prev_hash"], raw)
        columns = {k: _column(v) for k, v in raw.items()}
        conn.execute(
            f"INSERT INTO sessions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            list(columns.values()),
        )
        conn.execute(
            "INSERT INTO unvouched (session_id, reason) VALUES (?, ?)",
            ("forged-0001", AWAITING_REASON),
        )
        if signature == "forged":
            held = conn.execute("SELECT * FROM vouchers ORDER BY counter DESC LIMIT 1").fetchone()
            conn.execute(
                "INSERT INTO vouchers VALUES (?, ?, ?, ?, ?, ?)",
                ("forged-0001", held["device_key"], held["counter"] + 1, held["head"],
                 "ab" * 32, "cd" * 64),
            )  # fmt: skip
    chain_alone_passes(plant)
    code, text = verify(plant, capsys, "--no-device")
    assert code == 1
    assert "forged-0001" in text


def _column(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list | dict):
        return canonical_json(value)
    return value


# ---- liv import ---------------------------------------------------------------------------------


def _export(plant: Plant, tmp_path: Path) -> list[dict[str, Any]]:
    out = tmp_path / "export.jsonl"
    assert plant.liv("export", "--out", str(out)) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return [obj for obj in lines if "schema" not in obj]  # the export's header is no record


def _write(lines: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(canonical_json(obj) + "\n" for obj in lines))
    return path


def _rechain_lines(lines: list[dict[str, Any]]) -> None:
    prev = GENESIS_HASH
    for obj in lines:
        obj["prev_hash"] = prev
        body = {k: v for k, v in obj.items() if k != "device_voucher"}
        obj["record_hash"] = prev = record_hash(prev, body)


def _import(plant: Plant, file: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    clinic = plant.root / "clinic.db"
    capsys.readouterr()
    code = main(["import", str(file), "--db", str(clinic), "--home", str(plant.home.root)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_a_genuine_export_imports_and_again_adds_nothing(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = _write(_export(plant, tmp_path), tmp_path / "genuine.jsonl")
    code, text = _import(plant, file, capsys)
    assert code == 0, text
    assert f"imported {SESSIONS} records" in text
    code, text = _import(plant, file, capsys)
    assert code == 0
    assert f"0 records ({SESSIONS} already present)" in text
    with SessionLog(plant.root / "clinic.db", read_only=True) as clinic:
        assert clinic.verify_vouchers(DevicePins(plant.home.root / PINS_FILE).all()).ok


def test_a_fabricated_import_is_refused(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3 of 6 made 6 of 6: doses raised and the chain rebuilt; the plate signed other hashes."""
    lines = _export(plant, tmp_path)
    for obj in lines:
        obj["minutes_at_dose"] = obj["minutes_prescribed"]
        obj["reason"] = "edited"
    _rechain_lines(lines)
    file = _write(lines, tmp_path / "fabricated.jsonl")
    with SessionLog(tmp_path / "old-rules.db") as scratch:  # the chain alone accepts it
        assert scratch.import_jsonl(file).added == SESSIONS
    code, text = _import(plant, file, capsys)
    assert code == 1
    assert "Refused the whole import file" in text
    assert "record 0 of log" in text
    # the plate's head and signature were made over the record's true hash
    assert "does not follow from the previous head and the digest" in text


def test_an_import_without_countersignatures_is_refused(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _export(plant, tmp_path)
    for obj in lines:
        obj["device_voucher"] = None
    file = _write(lines, tmp_path / "unsigned.jsonl")
    code, text = _import(plant, file, capsys)
    assert code == 1
    assert "is not vouched for by its plate" in text


def test_appending_to_the_plates_chain_through_import_is_refused(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _export(plant, tmp_path)
    forged = dict(lines[-1])
    forged.update(
        session_id="forged-0002", chain_index=len(lines), prev_hash=lines[-1]["record_hash"]
    )
    voucher = dict(forged["device_voucher"])
    voucher.update(counter=voucher["counter"] + 1, prev_head=voucher["head"])
    forged["device_voucher"] = voucher
    body = {k: v for k, v in forged.items() if k != "device_voucher"}
    forged["record_hash"] = record_hash(forged["prev_hash"], body)
    file = _write([*lines, forged], tmp_path / "appended.jsonl")
    code, text = _import(plant, file, capsys)
    assert code == 1
    assert "forged-0002" in text
    assert "does not follow from the previous head" in text or "does not verify" in text


def test_a_log_signed_by_a_key_not_enrolled_is_refused(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _export(plant, tmp_path)
    (plant.home.root / PINS_FILE).unlink()  # the clinic never enrolled this plate
    file = _write(lines, tmp_path / "foreign.jsonl")
    code, text = _import(plant, file, capsys)
    assert code == 1
    assert "not enrolled here" in text
    key = lines[0]["device_voucher"]["device_key"]
    clinic = plant.root / "clinic.db"
    argv = ["import", str(file), "--db", str(clinic), "--home", str(plant.home.root)]
    assert main([*argv, "--device-key", key]) == 0
    assert "enrolled plate SIM-T1" in capsys.readouterr().out


# ---- pairing, unvouched records, migration ------------------------------------------------------


def test_a_plate_with_another_key_is_refused_until_re_paired(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    impostor = plant.url.replace(str(plant.nv), str(plant.root / "nv-impostor"))
    capsys.readouterr()
    assert plant.liv("start", "--device", impostor, "--override", "x") == 1
    err = capsys.readouterr().err.strip()
    assert "does not prove it is the one this home was paired with" in err
    assert len(err.splitlines()) == 1
    with SessionLog(plant.db, read_only=True) as log:
        assert len(log.summaries()) == SESSIONS  # nothing recorded
    assert plant.liv("device", "set", impostor) == 1
    assert plant.liv("device", "set", impostor, "--re-pair") == 0
    assert "re-paired with plate SIM-T1" in capsys.readouterr().out
    assert plant.liv("start", "--device", impostor, "--override", "x") == 0


def test_a_record_left_unvouched_is_countersigned_at_the_next_connection(
    plant: Plant, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session whose host died after the plate signed (answer lost) and one never signed."""
    from datetime import UTC, datetime

    with SessionLog(plant.db) as log:
        pending = []
        for _ in range(2):
            sid = log.start_session(
                patient_id="P-0123", device_id=DEVICE_ID, firmware_version="1.0.0",
                protocol_sha256="0" * 64, protocol_json="{}", started_utc=datetime.now(UTC),
                timezone="UTC", local_date=datetime.now(UTC).date(), slot=1,
                minutes_prescribed=1.0, target_g=0.3,
            )  # fmt: skip
            record = log.finish_session(
                sid, status="interrupted", reason="host killed", ended_utc=datetime.now(UTC),
                minutes_at_dose=0.5, envelope=[], freqs_hz=[], safety_events=[],
                mean_error_pct=None, p95_abs_error_pct=None, exposure=None,
            )  # fmt: skip
            pending.append(record)
        assert log.vouch_text(pending[0].session_id) == f"not vouched for: {AWAITING_REASON}"
    code, _ = verify(plant, capsys, "--no-device")
    assert code == 1  # not vouched for yet
    with DeviceClient.open(plant.url) as device:  # the plate signs; the host dies unanswered
        key = device.identity().public_key
        device.countersign(bytes.fromhex(str(pending[0].record_hash)), SESSIONS + 1, key)
    assert plant.liv("start", "--device", plant.url, "--override", "x") == 0
    code, text = verify(plant, capsys, "--device", plant.url)
    assert code == 0, text
    assert f"{SESSIONS + 3} vouched for by the plate" in text
    with SessionLog(plant.db, read_only=True) as log:
        assert "counter 5" in log.vouch_text(pending[0].session_id)
        assert "counter 6" in log.vouch_text(pending[1].session_id)


def test_a_lost_link_at_the_end_leaves_the_record_logged_and_noted(plant: Plant) -> None:
    from datetime import UTC, datetime

    from sessions.runner import PlateVoucher

    with SessionLog(plant.db) as log:
        sid = log.start_session(
            patient_id="P-0123", device_id=DEVICE_ID, firmware_version="1.0.0",
            protocol_sha256="0" * 64, protocol_json="{}", started_utc=datetime.now(UTC),
            timezone="UTC", local_date=datetime.now(UTC).date(), slot=1,
            minutes_prescribed=1.0, target_g=0.3,
        )  # fmt: skip
        with DeviceClient.open(plant.url) as device:
            voucher, _ = PlateVoucher.connect(device, log, None, lambda _: None)
            assert voucher is not None
            record = log.finish_session(
                sid, status="completed", reason="", ended_utc=datetime.now(UTC),
                minutes_at_dose=1.0, envelope=[], freqs_hz=[], safety_events=[],
                mean_error_pct=None, p95_abs_error_pct=None, exposure=None,
            )  # fmt: skip
            device.port.close()  # the cable is pulled before the plate countersigns
            assert not voucher.vouch(sid, str(record.record_hash))
        text = log.vouch_text(sid)
        assert text.startswith("not vouched for: the plate could not countersign it")
        assert log.get(sid).status.value == "completed"  # never lost


def test_an_old_log_migrates_and_its_records_are_shown_as_before_signatures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import UTC, datetime

    db = tmp_path / "old.db"
    with SessionLog(db) as log:
        sid = log.start_session(
            patient_id="P-0123", device_id=DEVICE_ID, firmware_version="1.0.0",
            protocol_sha256="0" * 64, protocol_json="{}", started_utc=datetime.now(UTC),
            timezone="UTC", local_date=datetime.now(UTC).date(), slot=1,
            minutes_prescribed=1.0, target_g=0.3,
        )  # fmt: skip
        log.finish_session(
            sid, status="completed", reason="", ended_utc=datetime.now(UTC),
            minutes_at_dose=1.0, envelope=[], freqs_hz=[], safety_events=[],
            mean_error_pct=None, p95_abs_error_pct=None, exposure=None,
        )  # fmt: skip
    with tampered(db) as conn:  # as schema 5, the last before countersignatures, left it
        conn.execute("DROP TABLE vouchers")
        conn.execute("DROP TABLE unvouched")
        conn.execute("DELETE FROM meta WHERE key = 'vouched_from_index'")
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    with SessionLog(db, read_only=True) as log:  # an audit reads it unmigrated
        assert log.vouch_text(sid) == LEGACY_TEXT
        assert log.verify_vouchers().legacy == 1
    with SessionLog(db) as log:  # opened to write: migrated
        assert log.vouch_text(sid) == LEGACY_TEXT
        result = log.verify_vouchers()
        assert (result.ok, result.legacy, result.unvouched) == (True, 1, 0)
    capsys.readouterr()
    assert main(["verify", "--db", str(db), "--home", str(tmp_path / "h"), "--no-device"]) == 0
    assert "1 recorded before device signatures" in capsys.readouterr().out


def test_reports_and_exports_of_a_rechained_log_say_it_is_not_vouched_for(
    plant: Plant, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Simulated sessions relabelled as therapy, the chain rebuilt: the chain alone passes, but
    every report and export says at the top that the plate does not vouch for the log."""
    with tampered(plant.db) as conn:
        conn.execute("UPDATE sessions SET kind = 'therapy'")
        rechain(conn)
    chain_alone_passes(plant)
    capsys.readouterr()
    assert plant.liv("report") == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].startswith("!! LOG NOT VOUCHED FOR BY THE PLATE")
    assert "FAILED verification" in err
    html = tmp_path / "r.html"
    assert plant.liv("report", "--format", "html", "--out", str(html)) == 0
    assert html.read_text().index("LOG NOT VOUCHED FOR BY THE PLATE") < html.read_text().index(
        "<header>"
    )
    capsys.readouterr()
    assert plant.liv("report", "--json") == 0
    assert json.loads(capsys.readouterr().out)["integrity"]["status"] == "not_vouched"
    exported = tmp_path / "log.jsonl"
    assert plant.liv("export", "--out", str(exported)) == 0
    header = json.loads(exported.read_text().splitlines()[0])
    assert header["integrity"]["status"] == "not_vouched"
    assert header["integrity"]["ok"] is False
    rows = tmp_path / "s.csv"
    assert plant.liv("export", "--format", "csv", "--out", str(rows)) == 0
    assert all(
        line.endswith("NOT VOUCHED FOR by the plate: " + line.split(": ", 1)[-1])
        for line in rows.read_text().splitlines()[1:]
    )


def test_a_plate_that_cannot_countersign_is_told_to_the_patient_before_the_session(
    plant: Plant, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plate without COUNTERSIGN (protocol 2.0 allows it; here the clean-room firmware, a
    plate that does not announce itself simulated) runs therapy whose records will never be
    vouched for, and a clinic refuses them on import: `liv start` tells the patient on the
    screen, in plain words, before the session. A simulator is not told (its sessions never
    count)."""
    from hil_tests.cleanroom.device import DeviceConfig, serve

    config = DeviceConfig(countersign=False)
    with serve(plant.root / "cleanroom-nv", config) as server:
        plant.liv("start", "--device", server.url, "--override", "old plate")
    shown = capsys.readouterr().out
    assert say("start.cannot_vouch") in shown  # whatever the session then did
    monkeypatch.setattr(DeviceClient, "can_countersign", property(lambda self: False))
    assert plant.liv("start", "--device", plant.url, "--override", "simulator") == 0
    assert say("start.cannot_vouch") not in capsys.readouterr().out
