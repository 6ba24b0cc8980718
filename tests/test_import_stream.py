"""Importing one long export holds one record at a time, not the file (issue 13).

A patient's year is one chain: 730 records of about 94 kB each (a real 10-minute session's
envelope, docs/performance.md). Both importers, the clinic's (``liv clinic import``) and the
home's (``liv import``), check each record as they read it and write in bounded batches, so
their peak memory is a few records', whatever the number of records. The export here is one
chain of 20 records with 2,000-point envelopes: parsed whole, it takes about 5 MB; each
importer stays under half of that.
"""

from __future__ import annotations

import functools
import importlib
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sessions.clinic import importer
from sessions.clinic.db import ClinicDb
from sessions.clinic.importer import import_export
from sessions.log import SessionLog
from sessions.log.vouch import Pin
from tests.test_clinic_db import (
    make_records,
    plate_key_hex,
    register_plates,
    vouched,
    write_export,
)

RECORDS = 20
POINTS = 2_000
BOUND_BYTES = 2_500_000  # a few records' worth; the whole chain parsed is about 5 MB


@pytest.fixture(scope="module")
def long_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One patient's chain of ``RECORDS`` sessions with long envelopes, vouched for."""
    folder = tmp_path_factory.mktemp("long")
    records = make_records("LONG", RECORDS // 2, envelope_points=POINTS)
    return write_export(folder / "long.jsonl", records)


def _peak(run: Callable[[], object]) -> int:
    """Peak Python memory of ``run`` (the modules it loads on first use loaded beforehand)."""
    importlib.import_module("sessions.clinic.overview")
    importlib.import_module("sessions.report")
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_whole_chain_parsed_is_far_above_the_bound(long_export: Path) -> None:
    """The size the old importers held: every record of the chain parsed at once."""
    import json

    def hold_all() -> list[object]:
        lines = long_export.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines]

    assert _peak(hold_all) > 2 * BOUND_BYTES


def test_the_clinic_imports_a_long_chain_in_flat_memory(
    long_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Batches of a few records, as a long real chain makes them (the defaults would take this
    # whole file in one batch): the second pass's batching is what is measured.
    monkeypatch.setattr(
        importer, "_batches", functools.partial(importer._batches, size=4, envelope_chars=100_000)
    )
    written: list[int] = []
    store = importer._batches

    def counted(*args: Any, **kwargs: Any) -> Any:
        for batch in store(*args, **kwargs):
            written.append(len(batch.lines))
            yield batch

    monkeypatch.setattr(importer, "_batches", counted)
    with ClinicDb(str(tmp_path / "clinic.db")) as db:
        register_plates(db, "LIV-LONG")
        outcomes = []
        peak = _peak(lambda: outcomes.append(import_export(db, long_export)))
        (outcome,) = outcomes
        assert (outcome.refused, outcome.added) == (None, RECORDS)
        assert db.query("SELECT COUNT(*) FROM vouchers") == [(RECORDS,)]
    assert peak < BOUND_BYTES, peak
    assert len(written) > 1, written  # several batches ...
    assert sum(written) == RECORDS  # ... holding every record once


def test_the_home_imports_a_long_chain_in_flat_memory(long_export: Path, tmp_path: Path) -> None:
    plates = {"LIV-LONG": Pin("LIV-LONG", plate_key_hex("LIV-LONG"), 1)}
    with SessionLog(tmp_path / "home" / "liv.db") as log:
        results = []
        peak = _peak(lambda: results.append(log.import_jsonl(long_export, plates=plates)))
        (result,) = results
        assert (result.added, result.vouched) == (RECORDS, RECORDS)
        assert len(log.sessions()) == RECORDS
    assert peak < BOUND_BYTES, peak


def _reordered(path: Path, out: Path) -> Path:
    """The export with its second and third record lines swapped (each line unchanged)."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    out.write_text("".join(lines), encoding="utf-8")
    return out


def test_records_out_of_chain_order_are_refused_in_one_sentence(tmp_path: Path) -> None:
    """An export lists each chain in order; the streaming check requires it and says so (the
    old importers sorted the file in memory, which is what a flat import cannot do)."""
    from sessions.log import LogError, LogErrorReason

    records = make_records("P1", 3)
    swapped = _reordered(write_export(tmp_path / "p1.jsonl", records), tmp_path / "swapped.jsonl")
    plates = {"LIV-P1": Pin("LIV-P1", plate_key_hex("LIV-P1"), 1)}
    with SessionLog(tmp_path / "home" / "liv.db") as log:
        with pytest.raises(LogError) as info:
            log.import_jsonl(swapped, plates=plates)
        assert log.sessions() == []
    error = info.value
    assert error.reason is LogErrorReason.TAMPERED
    assert str(error) == (
        f"Refused the whole import file: record 1 of log {records[1]['log_id']} (session "
        f"{records[1]['session_id']}) does not verify: the file lists it after record 2 of its "
        "log, but an export lists every log's records in chain order (the file was reordered or "
        "spliced) (line 3); nothing was imported."
    )
    with ClinicDb(str(tmp_path / "clinic.db")) as db:
        register_plates(db, "LIV-P1")
        outcome = import_export(db, swapped)
        assert db.query("SELECT COUNT(*) FROM records") == [(0,)]
        assert db.query("SELECT kind, patient_id FROM problems") == [("unverified", "P1")]
    assert outcome.refused is not None
    assert "lists it after record 2 of its log" in outcome.refused
    assert outcome.refused.endswith("(line 3); nothing was imported from it")


def test_chains_in_any_order_of_log_ids_are_taken(tmp_path: Path) -> None:
    """Only each chain's own order matters: two patients' chains, by descending log id."""
    chains = sorted(
        (vouched(make_records(f"P{k}", 2, seed=k)) for k in (1, 2)),
        key=lambda chain: chain[0]["log_id"],
        reverse=True,
    )
    export = write_export(tmp_path / "two.jsonl", [*chains[0], *chains[1]])
    with ClinicDb(str(tmp_path / "clinic.db")) as db:
        register_plates(db, "LIV-P1", "LIV-P2")
        outcome = import_export(db, export)
    assert (outcome.refused, outcome.added) == (None, 8)


def test_a_file_changed_between_verification_and_storing_is_refused_whole(
    tmp_path: Path,
) -> None:
    """The records are read again when stored: a line that is not the one verified refuses."""
    from sessions.clinic.importer import ImportOutcome, ImportRefusedError, _store, verify_export
    from sessions.clinic.plates import PlateRegistry

    records = make_records("P1", 3)
    export = write_export(tmp_path / "p1.jsonl", records)
    with ClinicDb(str(tmp_path / "clinic.db")) as db:
        register_plates(db, "LIV-P1")
        verified = verify_export(export, PlateRegistry(db))
        lines = export.read_text(encoding="utf-8").splitlines(keepends=True)
        lines[4] = lines[4].replace('"minutes_at_dose":10', '"minutes_at_dose":1')
        export.write_text("".join(lines), encoding="utf-8")
        with pytest.raises(ImportRefusedError, match="changed while it was imported"):
            _store(db, verified, ImportOutcome(export))
        assert db.query("SELECT COUNT(*) FROM records") == [(0,)]
        assert db.query("SELECT COUNT(*) FROM imports") == [(0,)]


def test_the_home_refuses_a_file_changed_between_its_two_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``liv import`` reads the file again to store it: a record that is not the one it checked
    (a file swapped after the check) refuses the whole file, as at the clinic."""
    from sessions.log import LogError, exchange

    export = write_export(tmp_path / "p1.jsonl", make_records("P1", 3))
    scan = exchange.scan_import

    def scanned_then_changed(lines: Any) -> Any:
        result = scan(lines)
        text = export.read_text(encoding="utf-8")
        changed = text.replace('"minutes_at_dose":10', '"minutes_at_dose":1', 1)
        assert changed != text
        export.write_text(changed, encoding="utf-8")
        return result

    monkeypatch.setattr(exchange, "scan_import", scanned_then_changed)
    plates = {"LIV-P1": Pin("LIV-P1", plate_key_hex("LIV-P1"), 1)}
    with SessionLog(tmp_path / "home" / "liv.db") as log:
        with pytest.raises(LogError, match="changed while it was imported"):
            log.import_jsonl(export, plates=plates)
        assert log.sessions() == []
