"""Red team at home: the log rewritten with sqlite3, its pins and its meta rows edited.

Everything in the home is the attacker's to write: the log, the plate's pinned key
(``device_keys.json``) and the log's own note of where device signatures start. Two rewrites
make every offline check pass: records declared "recorded before device signatures", and a
log re-signed with a key of the attacker's after the pin was swapped for it. Both are caught by
the plate (``liv verify`` with it connected) and by the clinic; offline, the report and the
export must not claim more than they checked.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from firmware_bridge.countersign import GENESIS_HEAD, next_head, signed_bytes
from firmware_bridge.sim.nvstore import DeviceNv
from sessions.clinic.db import ClinicDb
from sessions.clinic.importer import import_export
from sessions.clinic.plates import add_plate
from sessions.log import PINS_FILE
from sessions.log.vouch import device_id_raw
from tests import test_trust_log
from tests.test_trust_log import (
    DEVICE_ID,
    Plant,
    chain_alone_passes,
    rechain,
    tampered,
    verify,
)

golden = test_trust_log.golden  # the fixtures: a home with real sessions, a copy per test
plant = test_trust_log.plant


def _edit(conn: sqlite3.Connection) -> None:
    """The forger's change, a plausible one: every session completed, all minutes at dose."""
    conn.execute("UPDATE sessions SET minutes_at_dose = minutes_prescribed, status = 'completed'")


def _declare_before_signatures(plant: Plant) -> None:
    """Edit, rechain, drop the vouchers, and say every record predates device signatures."""
    with tampered(plant.db) as conn:
        _edit(conn)
        rechain(conn)
        conn.execute("DELETE FROM vouchers")
        conn.execute("DELETE FROM unvouched")
        conn.execute("UPDATE meta SET value = '1000000' WHERE key = 'vouched_from_index'")


def _resign_with_own_key(plant: Plant) -> None:
    """Edit, rechain, sign every record with a key of the attacker's, and pin that key."""
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()
    with tampered(plant.db) as conn:
        _edit(conn)
        rechain(conn)
        rows = conn.execute(
            "SELECT s.session_id, s.record_hash, s.device_id FROM sessions s JOIN vouchers v"
            " USING (session_id) ORDER BY v.counter"
        ).fetchall()
        conn.execute("DELETE FROM vouchers")
        head = GENESIS_HEAD
        for counter, row in enumerate(rows, 1):
            digest = bytes.fromhex(row["record_hash"])
            new = next_head(head, counter, digest)
            message = signed_bytes(device_id_raw(row["device_id"]), counter, digest, head, new)
            conn.execute(
                "INSERT INTO vouchers VALUES (?, ?, ?, ?, ?, ?)",
                (row["session_id"], public, counter, head.hex(), new.hex(),
                 key.sign(message).hex()),
            )  # fmt: skip
            head = new
    pins = plant.home.root / PINS_FILE
    data = json.loads(pins.read_text())
    for pin in data.values():
        pin["device_key"], pin["first_counter"] = public, 1
    pins.write_text(json.dumps(data))


UNSEEN = "re-signed after the plate's pairing was changed, can only be detected with the plate"
ATTACKS = {"before signatures": _declare_before_signatures, "re-signed": _resign_with_own_key}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_rewritten_log_that_passes_offline_is_caught_by_the_plate(
    plant: Plant, capsys: pytest.CaptureFixture[str], attack: str
) -> None:
    ATTACKS[attack](plant)
    chain_alone_passes(plant)
    code, text = verify(plant, capsys)  # the configured plate is asked
    assert code == 1
    assert "LOG NOT VOUCHED FOR BY THE PLATE" in text


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_offline_the_report_and_the_export_say_the_plate_was_not_asked(
    plant: Plant, capsys: pytest.CaptureFixture[str], attack: str
) -> None:
    """Before: "Log integrity: verified (...; 4 vouched for by the plate)" for a log re-signed
    with the attacker's key, and "verify --no-device" gave no word on what it could not see."""
    ATTACKS[attack](plant)
    capsys.readouterr()
    assert plant.liv("report", "--format", "table") == 0
    report = " ".join(capsys.readouterr().out.split())  # the table wraps its lines
    assert "Log integrity: verified without the plate" in report
    assert UNSEEN in report
    code, text = verify(plant, capsys, "--no-device")
    assert code == 0
    assert UNSEEN in text
    out = plant.root / "export.csv"
    assert plant.liv("export", "--format", "csv", "--out", str(out)) == 0
    assert "verified without the plate" in out.read_text()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_rewritten_log_is_refused_by_the_clinic(
    plant: Plant, attack: str, tmp_path: Path
) -> None:
    """The clinic registered the plate's own key (read from its memory), not the home's pins."""
    key = DeviceNv(plant.nv, DEVICE_ID).public_key.hex()
    genuine = tmp_path / "genuine.jsonl"
    assert plant.liv("export", "--out", str(genuine)) == 0
    ATTACKS[attack](plant)
    rewritten = tmp_path / "rewritten.jsonl"
    assert plant.liv("export", "--out", str(rewritten)) == 0
    with ClinicDb(str(tmp_path / "clinic.db")) as clinic:
        add_plate(clinic, DEVICE_ID, key)
        assert import_export(clinic, genuine).refused is None  # the plate's key is the right one
        outcome = import_export(clinic, rewritten)
    assert outcome.refused is not None
    assert REFUSED_AS[attack] in outcome.refused
    assert outcome.added == 0


REFUSED_AS = {
    "before signatures": "carries no countersignature of plate",
    "re-signed": "not by the key registered for plate",
}
