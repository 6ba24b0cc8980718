"""The clinic takes in only records a registered plate vouches for (issue 13, docs/clinic.md).

Every test runs on SQLite and on the real PostgreSQL server of tests/test_clinic_db.py. The
plates' keys are test keys (``plate_key``), except in the last test, where a home runs real
sessions on the simulated plate and its key comes from the simulator's non-volatile memory.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from controller.calibration import CalibrationStore, identify
from firmware_bridge.client import DeviceClient
from firmware_bridge.sim.nvstore import DeviceNv, state_root
from sessions.cli import main
from sessions.clinic.db import ClinicDb
from sessions.clinic.importer import import_export
from sessions.clinic.plates import PlateError, add_plate, list_plates
from sessions.home import LivHome
from sessions.log import GENESIS_HASH, record_hash
from tests.simhelpers import enrol_home, protocol_yaml, write_signed
from tests.test_clinic_db import (
    TODAY,
    count,
    db_url,
    make_records,
    plate_key_hex,
    postgres_server,
    register_plates,
    vouched,
    write_export,
)

__all__ = ["db_url", "postgres_server"]  # the fixtures, on both backends


def _refused(url: str, path: Path) -> tuple[str, str]:
    """Import ``path`` into ``url`` with plate LIV-P1 registered: (the sentence, problem kind)."""
    with ClinicDb(url) as db:
        register_plates(db, "LIV-P1")
        outcome = import_export(db, path)
    assert outcome.refused is not None
    assert count(url, "SELECT COUNT(*) FROM records") == 0
    assert count(url, "SELECT COUNT(*) FROM vouchers") == 0
    with ClinicDb(url) as db:
        kinds = db.query("SELECT kind FROM problems")
    assert len(kinds) == 1
    return outcome.refused, str(kinds[0][0])


def test_a_record_without_its_plates_voucher_is_refused(db_url: str, tmp_path: Path) -> None:
    """A forged record: its hash chain verifies, but the plate never signed it."""
    export = write_export(tmp_path / "forged.jsonl", make_records("P1", 2), vouch=False)
    sentence, kind = _refused(db_url, export)
    assert "carries no countersignature of plate LIV-P1" in sentence
    assert kind == "unvouched"


def test_a_forged_signature_is_refused(db_url: str, tmp_path: Path) -> None:
    records = vouched(make_records("P1", 2))
    records[2]["device_voucher"]["signature"] = "ab" * 64
    sentence, kind = _refused(db_url, write_export(tmp_path / "forged.jsonl", records))
    assert "signature" in sentence
    assert "record 2" in sentence
    assert kind == "unvouched"


def test_an_edited_record_with_its_voucher_is_refused(db_url: str, tmp_path: Path) -> None:
    """The home edits a record and recomputes the hash chain: only the voucher catches it."""
    records = vouched(make_records("P1", 3))
    records[3]["minutes_at_dose"] = 10.0 if records[3]["minutes_at_dose"] != 10.0 else 9.0
    prev = GENESIS_HASH
    for raw in records:  # re-chained, so the log's own checks pass
        raw["prev_hash"] = prev
        body = {k: v for k, v in raw.items() if k != "device_voucher"}
        raw["record_hash"] = prev = record_hash(prev, body)
    sentence, kind = _refused(db_url, write_export(tmp_path / "edited.jsonl", records))
    assert "record 3" in sentence
    assert "changed after the plate signed it" in sentence
    assert kind == "unvouched"


def test_a_record_signed_by_another_plates_key_is_refused(db_url: str, tmp_path: Path) -> None:
    records = vouched(make_records("P1", 2), key_of="LIV-OTHER")
    sentence, kind = _refused(db_url, write_export(tmp_path / "other.jsonl", records))
    assert "not by the key registered for plate LIV-P1" in sentence
    assert kind == "unvouched"


def test_an_unregistered_plate_is_refused_in_one_sentence_naming_what_to_do(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    export = write_export(tmp_path / "p9.jsonl", make_records("P9", 2))
    assert main(["clinic", "import", "--db", db_url, str(export)]) == 1
    err = capsys.readouterr().err
    assert "plate LIV-P9 is not registered with this clinic" in err
    assert "register the plate's key with 'liv clinic plate add LIV-P9 KEYHEX'" in err
    assert "Traceback" not in err
    assert count(db_url, "SELECT COUNT(*) FROM records") == 0
    assert count(db_url, "SELECT COUNT(*) FROM problems WHERE kind = 'unregistered'") == 1
    # once registered, the same file is taken
    assert main(["clinic", "plate", "add", "--db", db_url, "LIV-P9", plate_key_hex("LIV-P9")]) == 0
    assert main(["clinic", "import", "--db", db_url, str(export)]) == 0
    assert count(db_url, "SELECT COUNT(*) FROM records") == 4
    assert count(db_url, "SELECT COUNT(*) FROM vouchers") == 4


def test_a_gap_in_the_plates_counters_is_refused(db_url: str, tmp_path: Path) -> None:
    """The plate vouched for records 1-4 the clinic never got (a log emptied at home), then the
    patient's new log starts at counter 5: the missing records are reported, nothing merged."""
    records = vouched(make_records("P1", 2), first_counter=5)
    sentence, kind = _refused(db_url, write_export(tmp_path / "gap.jsonl", records))
    assert "record(s) 1-4" in sentence
    assert "missing" in sentence
    assert kind == "gap"


def test_a_new_log_continuing_the_plates_counters_is_taken_and_a_gap_after_it_is_not(
    db_url: str, tmp_path: Path
) -> None:
    old = vouched(make_records("P1", 2, last_day=TODAY - timedelta(days=10), seed=6))
    new = make_records("P1", 2, seed=7)
    with ClinicDb(db_url) as db:
        register_plates(db, "LIV-P1")
        assert import_export(db, write_export(tmp_path / "old.jsonl", old)).added == 4
        gap = import_export(db, write_export(tmp_path / "gap.jsonl", vouched(new, 7)))
        assert gap.refused is not None
        assert "record(s) 5-6" in gap.refused
        swapped = import_export(db, write_export(tmp_path / "swap.jsonl", vouched(new, 5)))
        assert swapped.refused is not None
        assert "heads differ" in swapped.refused
        after = vouched(new, 5, head=old[-1]["device_voucher"]["head"])
        cont = import_export(db, write_export(tmp_path / "new.jsonl", after))
    assert (cont.refused, cont.added) == (None, 4)
    assert count(db_url, "SELECT MAX(counter) FROM vouchers") == 8


def test_a_counter_the_clinic_holds_for_another_record_is_a_conflict(
    db_url: str, tmp_path: Path
) -> None:
    """A rolled-back plate log re-used counters 3-4 for other records."""
    first = vouched(make_records("P1", 2, seed=6))
    other = vouched(make_records("P1", 2, seed=8), first_counter=3)
    with ClinicDb(db_url) as db:
        register_plates(db, "LIV-P1")
        assert import_export(db, write_export(tmp_path / "a.jsonl", first)).added == 4
        outcome = import_export(db, write_export(tmp_path / "b.jsonl", other))
    assert outcome.refused is not None
    assert "counter 3 of plate LIV-P1" in outcome.refused
    assert count(db_url, "SELECT COUNT(*) FROM records") == 4


def test_plates_are_registered_listed_and_a_bad_key_is_one_sentence(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    key = plate_key_hex("LIV-0042")
    assert main(["clinic", "plate", "add", "--db", db_url, "LIV-0042", key.upper()]) == 0
    assert main(["clinic", "plate", "add", "--db", db_url, "LIV-0042", key]) == 0  # the same
    capsys.readouterr()
    assert main(["clinic", "plate", "add", "--db", db_url, "LIV-0042", "00" * 31]) == 1
    assert "64 hexadecimal digits" in capsys.readouterr().err
    assert main(["clinic", "plate", "add", "--db", db_url, "LIV-0042",
                 plate_key_hex("x")]) == 1  # fmt: skip
    assert "already registered with another key" in capsys.readouterr().err
    assert main(["clinic", "plate", "list", "--db", db_url]) == 0
    assert key in capsys.readouterr().out
    with ClinicDb(db_url) as db:
        assert [p.device_key for p in list_plates(db)] == [key]
        with pytest.raises(PlateError, match="device id"):
            add_plate(db, "has space", key)


def test_a_real_export_of_sessions_on_the_simulated_plate_is_imported(
    db_url: str, tmp_path: Path
) -> None:
    """A home runs a session on sim://?speed=max; its `liv export` is taken once the clinic
    registered the simulator's key (from its non-volatile memory), and stays flagged apart."""
    device_id = "SIM-CLINIC"
    calibration = tmp_path / "calibration"
    with DeviceClient.open(f"sim://?mass=0&seed=1&speed=max&device_id={device_id}") as device:
        CalibrationStore(calibration).save(identify(device))
    home = LivHome(tmp_path / "home")
    home.ensure()
    source = tmp_path / "protocol.yaml"
    write_signed(source, protocol_yaml())
    enrol_home(home).install_protocol(source)
    url = f"sim://?mass=70&seed=2&speed=max&device_id={device_id}"
    argv = ["start", "--device", url, "--home", str(home.root),
            "--calibration-dir", str(calibration)]  # fmt: skip
    assert main(argv) == 0
    export = tmp_path / "export.jsonl"
    assert main(["export", "--home", str(home.root), "--out", str(export)]) == 0
    lines = [json.loads(x) for x in export.read_text(encoding="utf-8").splitlines()]
    kinds = {x.get("kind") for x in lines if "session_id" in x}
    key = DeviceNv(state_root(), device_id).public_key.hex()
    with ClinicDb(db_url) as db:
        refused = import_export(db, export)
        assert refused.refused is not None
        assert "not registered" in refused.refused
        add_plate(db, device_id, key)
        outcome = import_export(db, export)
        assert outcome.refused is None, outcome.refused
        assert outcome.added >= 1
        assert {k for (k,) in db.query("SELECT DISTINCT kind FROM records")} == kinds
    assert kinds == {"simulated"}
    assert count(db_url, "SELECT COUNT(*) FROM vouchers") == outcome.added


def test_a_counter_taken_by_a_concurrent_import_refuses_the_later_file(
    db_url: str, tmp_path: Path
) -> None:
    """Two forks of a plate's log verified at once, before either is stored: the second to be
    stored finds the counters taken (unique per plate key and counter) and is refused whole."""
    from sessions.clinic.importer import ImportOutcome, ImportRefusedError, _store, verify_export
    from sessions.clinic.plates import PlateRegistry

    first = write_export(tmp_path / "a.jsonl", vouched(make_records("P1", 2, seed=6)))
    fork = write_export(tmp_path / "b.jsonl", vouched(make_records("P1", 2, seed=8)))
    with ClinicDb(db_url) as db:
        register_plates(db, "LIV-P1")
        verified_fork = verify_export(fork, PlateRegistry(db))  # before the first is stored
        assert import_export(db, first).added == 4
        with pytest.raises(ImportRefusedError, match="counter 1 of plate key"):
            _store(db, verified_fork, ImportOutcome(fork))
    assert count(db_url, "SELECT COUNT(*) FROM records") == 4
