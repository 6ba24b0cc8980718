"""Red team: a patient's computer, a plate and the clinic's trust in who the records are about.

The plate signs a record's hash, and the hash covers ``patient_id``; but a plate signs any
digest its host hands it, and a signed prescription names its patient only inside the file. A
patient who installs another patient's signed prescription (copied from a friend's computer)
records her own sessions under the other's name, vouched for by her own registered plate. The
clinic cannot tell from the signatures; it can tell that one plate now speaks for two patients.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sessions.cli import main
from sessions.clinic.db import ClinicDb
from sessions.clinic.importer import import_export
from sessions.clinic.overview import overview
from tests.test_clinic_db import (
    TODAY,
    count,
    make_records,
    register_plates,
    vouched,
    write_export,
)


def _records_of(patient: str, device: str, seed: int, days_back: int = 0) -> list[dict[str, Any]]:
    return make_records(
        patient, 3, device_id=device, seed=seed, last_day=TODAY - timedelta(days=days_back)
    )


def _one_plate_two_patients(tmp_path: Path) -> tuple[Path, Path]:
    """P1's export, then P2's sessions on P1's plate over the same days: its counters go on
    after P1's."""
    first = vouched(_records_of("P1", "LIV-A", 1, days_back=1))
    last = first[-1]["device_voucher"]
    second = vouched(
        _records_of("P2", "LIV-A", 2), first_counter=last["counter"] + 1, head=last["head"]
    )
    return (
        write_export(tmp_path / "p1.jsonl", first),
        write_export(tmp_path / "p2.jsonl", second),
    )


def test_one_plate_vouching_for_two_patients_is_flagged_on_both(tmp_path: Path) -> None:
    """P2's sessions recorded on P1's plate (P2's prescription installed in P1's home)."""
    db = str(tmp_path / "clinic.db")
    own, borrowed = _one_plate_two_patients(tmp_path)
    with ClinicDb(db) as clinic:
        register_plates(clinic, "LIV-A")
        assert import_export(clinic, own).problems == []
        outcome = import_export(clinic, borrowed)
        rows = {row.patient_id: row for row in overview(clinic)}
    assert outcome.refused is None  # a plate may be given to another patient: shown, not refused
    sentence = (
        "plate LIV-A has vouched for the therapy sessions of 2 patients (P1, P2) over the same days"
    )
    assert any(sentence in p for p in outcome.problems)
    assert count(db, "SELECT COUNT(*) FROM problems WHERE kind = 'shared_plate'") == 2
    assert rows["P1"].flags.get("integrity") == 1
    assert rows["P2"].flags.get("integrity") == 1


def test_importing_the_same_files_again_adds_no_second_flag(tmp_path: Path) -> None:
    db = str(tmp_path / "clinic.db")
    own, borrowed = _one_plate_two_patients(tmp_path)
    with ClinicDb(db) as clinic:
        register_plates(clinic, "LIV-A")
        for path in (own, borrowed, own, borrowed):
            assert import_export(clinic, path).refused is None
    assert count(db, "SELECT COUNT(*) FROM problems WHERE kind = 'shared_plate'") == 2


def test_each_patient_on_her_own_plate_is_not_flagged(tmp_path: Path) -> None:
    db = str(tmp_path / "clinic.db")
    with ClinicDb(db) as clinic:
        register_plates(clinic, "LIV-A", "LIV-B")
        for patient, device, seed in (("P1", "LIV-A", 1), ("P2", "LIV-B", 2)):
            path = write_export(tmp_path / f"{patient}.jsonl", _records_of(patient, device, seed))
            assert import_export(clinic, path).problems == []
    assert count(db, "SELECT COUNT(*) FROM problems") == 0


def test_the_unregistered_plate_sentence_says_where_the_key_must_come_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fake plate (a program speaking docs/protocol.md with its own fresh key and device id)
    is pinned at first use at home; the clinic refuses its export as unregistered. The sentence
    must not lead a clinician to register the key the export itself carries."""
    db = str(tmp_path / "clinic.db")
    fake = write_export(tmp_path / "fake.jsonl", _records_of("P1", "LIV-FAKE", 3))
    assert main(["clinic", "import", "--db", db, str(fake)]) == 1
    err = capsys.readouterr().err
    assert "plate LIV-FAKE is not registered with this clinic" in err
    assert "only if the clinic dispensed this plate" in err
    assert "with the key read from the plate itself" in err
    assert count(db, "SELECT COUNT(*) FROM records") == 0


def test_therapy_vouched_for_by_a_plate_that_ran_simulated_sessions_is_flagged(
    tmp_path: Path,
) -> None:
    """A simulator announces SIMULATED, so its sessions are recorded as simulated; its key is a
    file in its non-volatile directory on the patient's computer. A clinic that registered a
    simulator (docs/clinic.md allows it) then receives "therapy" signed with that key: forged
    with the copied key, or run on a simulator modified to leave the bit out."""
    db = str(tmp_path / "clinic.db")
    everything = {k: {"kind": "simulated"} for k in range(6)}
    first = vouched(make_records("P1", 3, device_id="SIM-X", seed=1, tweak=everything,
                                 last_day=TODAY - timedelta(days=5)))  # fmt: skip
    last = first[-1]["device_voucher"]
    forged = vouched(
        make_records("P1", 3, device_id="SIM-X", seed=2),
        first_counter=last["counter"] + 1,
        head=last["head"],
    )
    with ClinicDb(db) as clinic:
        register_plates(clinic, "SIM-X")
        assert import_export(clinic, write_export(tmp_path / "sim.jsonl", first)).problems == []
        outcome = import_export(clinic, write_export(tmp_path / "forged.jsonl", forged))
        again = import_export(clinic, write_export(tmp_path / "forged.jsonl", forged))
    assert outcome.refused is None
    sentence = "plate SIM-X has vouched for simulated sessions, so it is a simulator"
    assert any(sentence in p for p in outcome.problems)
    assert again.problems == []  # nothing new: not flagged twice
    assert count(db, "SELECT COUNT(*) FROM problems WHERE kind = 'simulator_therapy'") == 1
