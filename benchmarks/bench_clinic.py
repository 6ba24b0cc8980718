"""Clinic database at scale: import throughput, overview, one report, memory; SQLite and PostgreSQL.

    python benchmarks/bench_clinic.py [--patients 1000] [--imported 100] [--days 365]
        [--envelope-points 4] [--backend both] [--pg-url postgresql://...] [--json OUT.json]

Each patient has one export of ``days`` days of two sessions (``--days 365``: 730 records; 1,000
patients: 730,000 sessions), written as ``liv export`` writes them (tests/test_clinic_db.py
``make_records``; envelopes of ``--envelope-points`` points, 4 by default, since the overview never
reads them; the clinic keeps only those of flagged sessions), each record vouched for by its plate,
whose key is registered before the import. The first ``--imported`` exports are imported with
``import_export`` (verification, insert, the patient's summary rows): that gives the import
throughput. The other patients are copies of those, made in SQL (records, summary rows, new ids),
because importing 730,000 sessions one by one takes longer than this machine can spare (about 1.3 s
a patient); the database then has the full number of rows, which is what the overview and the report
read.
At ``--imported`` patients and at all of them: the overview (``overview`` + JSON, what ``liv
clinic overview --format json`` does; best of 3), one patient's full report (HTML, with
compute_adherence; best of 3), and the peak Python memory (tracemalloc) of each.
PostgreSQL: ``--pg-url``, else a throwaway cluster from /usr/lib/postgresql/*/bin.
Prints a table; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sessions.clinic.db import ClinicDb
from sessions.clinic.importer import import_export
from sessions.clinic.overview import overview, patient_report, render_json
from tests.test_clinic_db import (
    fresh_postgres_db,
    make_records,
    postgres_bindir,
    register_plates,
    throwaway_postgres,
    write_export,
)

OVERVIEW_TARGET_S = 2.0
REPORT_TARGET_S = 1.0


def _best(fn: Callable[[], Any], runs: int = 3) -> tuple[float, int]:
    """Best wall time of ``runs`` calls, and the peak traced memory of one call (bytes)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return min(times), peak


def _exports(folder: Path, patients: int, days: int, points: int = 4) -> list[Path]:
    today = datetime.now(UTC).date()
    paths = []
    for k in range(patients):
        # a varied clinic: every 7th patient stopped 10 days ago, every 5th misses days
        last = today - timedelta(days=10 if k % 7 == 0 else 1)
        skip = frozenset(range(days - 20, days - 14)) if k % 5 == 0 else frozenset()
        records = make_records(
            f"P{k:04d}", days, last_day=last, seed=k, skip_days=skip, envelope_points=points
        )
        paths.append(write_export(folder / f"P{k:04d}.jsonl", records))
    return paths


def _measure(db: ClinicDb, label: str, patients: int, sessions: int) -> dict[str, Any]:
    overview_s, overview_peak = _best(lambda: render_json(overview(db)))
    report_s, report_peak = _best(lambda: patient_report(db, "P0001", "html"))
    return {
        "label": label,
        "patients": patients,
        "sessions": sessions,
        "overview_s": round(overview_s, 3),
        "overview_peak_mb": round(overview_peak / 1e6, 2),
        "report_s": round(report_s, 3),
        "report_peak_mb": round(report_peak / 1e6, 2),
    }


_COPY = (
    (
        "INSERT INTO records (log_id, chain_index, session_id, prev_hash, record_hash,"
        " patient_id, device_id, firmware_version, protocol_sha256, started_utc, local_date,"
        " slot, status, minutes_prescribed, minutes_at_dose, target_g, mean_error_pct,"
        " summary_json, record_json, import_id, kind)"
        " SELECT log_id || ?, chain_index, session_id || ?, prev_hash, record_hash, ?,"
        " device_id, firmware_version, protocol_sha256, started_utc, local_date, slot, status,"
        " minutes_prescribed, minutes_at_dose, target_g, mean_error_pct, summary_json,"
        " record_json, import_id, kind FROM records WHERE patient_id = ?"
    ),
    (
        "INSERT INTO patient_days (patient_id, day, status, slots_prescribed, slots_completed,"
        " minutes_prescribed, minutes_at_dose) SELECT ?, day, status, slots_prescribed,"
        " slots_completed, minutes_prescribed, minutes_at_dose FROM patient_days"
        " WHERE patient_id = ?"
    ),
    (
        "INSERT INTO patient_flags (patient_id, session_id, kind, local_date, reason)"
        " SELECT ?, session_id || ?, kind, local_date, reason FROM patient_flags"
        " WHERE patient_id = ?"
    ),
    (
        "INSERT INTO patients (patient_id, timezone, sessions, last_session_day, device_id,"
        " firmware_version, devices_json, refreshed_utc) SELECT ?, timezone, sessions,"
        " last_session_day, device_id, firmware_version, devices_json, refreshed_utc"
        " FROM patients WHERE patient_id = ?"
    ),
)


def _copy_patient(db: ClinicDb, source: str, copy: str) -> None:
    suffix = f"-{copy}"
    with db.transaction():
        db.execute(_COPY[0], (suffix, suffix, copy, source))
        db.execute(_COPY[1], (copy, source))
        db.execute(_COPY[2], (copy, suffix, source))
        db.execute(_COPY[3], (copy, source))


def run_backend(url: str, name: str, exports: list[Path], patients: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"backend": name, "points": []}
    with ClinicDb(url) as db:
        imported = 0
        import_s = 0.0
        import_peak = 0
        for k, path in enumerate(exports, 1):
            tracing = k in (1, len(exports))
            if tracing:
                tracemalloc.start()
            register_plates(db, f"LIV-{path.stem}"[:16])  # the plate, registered beforehand
            start = time.perf_counter()
            outcome = import_export(db, path)
            import_s += time.perf_counter() - start
            if tracing:
                import_peak = max(import_peak, tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
            assert outcome.refused is None, outcome.refused
            imported += outcome.added
        figures["import_s"] = round(import_s, 1)
        figures["import_sessions_per_s"] = round(imported / import_s)
        figures["import_peak_mb"] = round(import_peak / 1e6, 2)
        figures["imported_sessions"] = imported
        (record_bytes,) = db.query("SELECT COALESCE(SUM(LENGTH(record_json)), 0) FROM records")[0]
        kept, envelope_bytes = db.query(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope_json)), 0) FROM envelopes"
        )[0]
        export_bytes = sum(path.stat().st_size for path in exports)
        figures["export_bytes_per_session"] = round(export_bytes / imported)
        figures["stored_bytes_per_session"] = round(
            (int(record_bytes) + int(envelope_bytes)) / imported
        )
        figures["envelopes_kept"] = int(kept)
        print(f"  {name}: imported {len(exports)} patients, {imported} sessions",
              file=sys.stderr)  # fmt: skip
        figures["points"].append(_measure(db, name, len(exports), imported))
        if patients > len(exports):
            start = time.perf_counter()
            for k in range(len(exports), patients):
                _copy_patient(db, f"P{k % len(exports):04d}", f"P{k:04d}")
            figures["copy_s"] = round(time.perf_counter() - start, 1)
            total = int(db.query("SELECT COUNT(*) FROM records")[0][0])
            print(f"  {name}: copied to {patients} patients, {total} sessions", file=sys.stderr)
            figures["points"].append(_measure(db, name, patients, total))
    return figures


@contextlib.contextmanager
def _postgres(given: str | None) -> Iterator[str]:
    if given:
        with fresh_postgres_db(given) as url:
            yield url
        return
    bindir = postgres_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL binaries: give --pg-url or install postgresql")
    with throwaway_postgres(bindir) as server, fresh_postgres_db(server) as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--imported", type=int, default=100, help="patients really imported")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-url", help="a PostgreSQL server (default: a throwaway cluster)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--envelope-points", type=int, default=4,
        help="points per session envelope (a real 10-minute session has about 12,000)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="liv-bench-clinic-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        exports = _exports(
            folder, min(args.imported, args.patients), args.days, args.envelope_points
        )
        print(f"wrote {len(exports)} exports in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)  # fmt: skip
        if args.backend in ("sqlite", "both"):
            results.append(run_backend(str(folder / "clinic.db"), "sqlite", exports, args.patients))
        if args.backend in ("postgresql", "both"):
            with _postgres(args.pg_url) as url:
                results.append(run_backend(url, "postgresql", exports, args.patients))
    print(f"{'backend':<11} {'patients':>8} {'sessions':>9} {'overview':>9} {'ov. peak':>9} "
          f"{'report':>7} {'rep. peak':>9}")  # fmt: skip
    for backend in results:
        for p in backend["points"]:
            print(
                f"{p['label']:<11} {p['patients']:>8} {p['sessions']:>9} "
                f"{p['overview_s']:>8.3f}s {p['overview_peak_mb']:>7.2f}MB "
                f"{p['report_s']:>6.3f}s {p['report_peak_mb']:>7.2f}MB"
            )
        print(
            f"{backend['backend']:<11} import {backend['imported_sessions']} sessions in "
            f"{backend['import_s']} s = {backend['import_sessions_per_s']} sessions/s, "
            f"peak {backend['import_peak_mb']} MB per export; stored "
            f"{backend['stored_bytes_per_session']} B/session (export "
            f"{backend['export_bytes_per_session']} B/session), "
            f"{backend['envelopes_kept']} envelopes kept"
        )
    last = [b["points"][-1] for b in results]
    ok = all(p["overview_s"] <= OVERVIEW_TARGET_S and p["report_s"] <= REPORT_TARGET_S
             for p in last)  # fmt: skip
    print(f"targets (overview <= {OVERVIEW_TARGET_S:g} s, report <= {REPORT_TARGET_S:g} s): "
          f"{'met' if ok else 'NOT met'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
