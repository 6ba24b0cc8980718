"""Clinic database at scale: every patient imported for real; overview, report, memory.

    python benchmarks/bench_clinic.py [--patients 1000] [--days 365] [--envelope-points 4]
        [--backend both] [--pg-url postgresql://...] [--measure-at 10,100,1000]
        [--real-size] [--json OUT.json]

Each patient has one export of ``days`` days of two sessions (``--days 365``: 730 records; 1,000
patients: 730,000 sessions less the missed days), written as ``liv export`` writes it (tests/
test_clinic_db.py ``make_records``; envelopes of ``--envelope-points`` points), each record
vouched for by its plate, whose key is registered before the import. **Every patient is imported
with** ``import_export`` (verification, insert, the patient's summary rows), one export after the
other, each written just before its import and deleted after it (disk stays flat): that gives
the import throughput. After ``--measure-at`` patients (and at the end): the overview (what
``liv clinic overview --format json`` does; best of 3), one patient's full report (HTML, with
compute_adherence; best of 3) and the peak Python memory (tracemalloc) of each. The peak Python
memory of an import is traced on the second and the last patient; the process's peak RSS is
reported too.

``--real-size``: also (alone with ``--patients 0``), separately, one patient's year with
envelopes of a real 10-minute session's size (``REAL_ENVELOPE_POINTS`` points, measured from
``liv start`` on the simulator and ``liv export``: about 94 kB a line) is imported into a new
database of each backend by a child process, which reports the import's time and its peak RSS
(VmHWM, reset just before the import) above the RSS it had before.

PostgreSQL: ``--pg-url``, else a throwaway cluster from /usr/lib/postgresql/*/bin. Prints a table;
``--json`` also writes the figures, after every measurement (a long run leaves what it has).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.make_log import envelope_points
from benchmarks.output import machine_facts, write_json
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
# A real 10-minute session's envelope: `liv start` on sim://?speed=max with a 10-minute
# protocol, then `liv export`, gave 5,653 points (91,634 bytes of JSON; the line 93,960 bytes).
REAL_ENVELOPE_POINTS = 5653
REPORT_PATIENT = "P0001"


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


def patient_records(k: int, days: int, points: int, today: date) -> list[dict[str, Any]]:
    """Patient ``k``'s year: every 7th stopped 10 days ago, every 5th missed six days."""
    last = today - timedelta(days=10 if k % 7 == 0 else 1)
    skip = frozenset(range(days - 20, days - 14)) if k % 5 == 0 else frozenset()
    return make_records(
        f"P{k:04d}", days, last_day=last, seed=k, skip_days=skip, envelope_points=points
    )


def _rss_mb() -> float:
    """This process's peak resident memory so far (Linux: ru_maxrss in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _proc_status_mb(name: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS: now, VmHWM: peak) in MB, None elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    return None


def _reset_peak_rss() -> bool:
    """Start the peak-RSS count again from the present RSS (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _measure(db: ClinicDb, patients: int) -> dict[str, Any]:
    overview_s, overview_peak = _best(lambda: render_json(overview(db)))
    report_s, report_peak = _best(lambda: patient_report(db, REPORT_PATIENT, "html"))
    return {
        "patients": patients,
        "sessions": int(db.query("SELECT COUNT(*) FROM records")[0][0]),
        "overview_s": round(overview_s, 3),
        "overview_peak_mb": round(overview_peak / 1e6, 2),
        "report_s": round(report_s, 3),
        "report_peak_mb": round(report_peak / 1e6, 2),
    }


def run_backend(
    url: str,
    name: str,
    folder: Path,
    args: argparse.Namespace,
    save: Callable[[], None],
    figures: dict[str, Any],
) -> None:
    """Import every patient into ``url``, measuring at the checkpoints; fills ``figures``."""
    figures.update(backend=name, points=[], imported_sessions=0, import_s=0.0)
    checkpoints = {n for n in args.measure_at if n < args.patients} | {args.patients}
    today = datetime.now(UTC).date()
    export_bytes = 0
    import_peak = 0
    started = time.perf_counter()
    with ClinicDb(url) as db:
        for k in range(args.patients):
            path = write_export(
                folder / f"P{k:04d}.jsonl",
                patient_records(k, args.days, args.envelope_points, today),
            )
            export_bytes += path.stat().st_size
            tracing = k in (1, args.patients - 1)  # (the first loads the report's modules)
            register_plates(db, f"LIV-P{k:04d}")  # the plate, registered beforehand
            if tracing:
                tracemalloc.start()
            start = time.perf_counter()
            outcome = import_export(db, path)
            figures["import_s"] += time.perf_counter() - start
            if tracing:
                import_peak = max(import_peak, tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
            path.unlink()
            assert outcome.refused is None, outcome.refused
            figures["imported_sessions"] += outcome.added
            done = k + 1
            if done % 50 == 0 or done in checkpoints:
                rate = figures["imported_sessions"] / figures["import_s"]
                print(f"  {name}: {done} patients, {figures['imported_sessions']} sessions, "
                      f"{rate:.0f} sessions/s, {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
            if done in checkpoints:
                figures["points"].append(_measure(db, done))
                figures["import_sessions_per_s"] = round(
                    figures["imported_sessions"] / figures["import_s"]
                )
                figures["import_peak_mb"] = round(import_peak / 1e6, 2)
                figures["rss_peak_mb"] = round(_rss_mb())
                save()
        (record_bytes,) = db.query("SELECT COALESCE(SUM(LENGTH(record_json)), 0) FROM records")[0]
        kept, envelope_bytes = db.query(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope_json)), 0) FROM envelopes"
        )[0]
    imported = figures["imported_sessions"]
    figures["import_s"] = round(figures["import_s"], 1)
    figures["export_bytes_per_session"] = round(export_bytes / imported)
    stored = int(record_bytes) + int(envelope_bytes)
    figures["stored_bytes_per_session"] = round(stored / imported)
    figures["envelopes_kept"] = int(kept)
    figures["wall_s"] = round(time.perf_counter() - started)
    save()


def real_size_export(folder: Path, days: int, seed: int = 1) -> Path:
    """One patient's ``days`` days with envelopes of a real session's size (make_log's shape:
    ramp up, hold with 1% noise, ramp down), each record vouched for by plate LIV-P0001."""
    rng = random.Random(seed)
    per_s = REAL_ENVELOPE_POINTS / 603.0  # make_log's 2 s + 10 min + 1 s
    shapes = [envelope_points(rng, per_s, 0.3) for _ in range(16)]
    count = 2 * days
    tweak = {k: {"envelope": shapes[k % len(shapes)]} for k in range(count)}
    records = make_records("P0001", days, seed=seed, tweak=tweak)
    return write_export(folder / "real.jsonl", records)


def import_one(path: Path, url: str) -> dict[str, Any]:
    """(In a child process) import one export; time and peak RSS above the RSS before it."""
    with ClinicDb(url) as db:
        register_plates(db, "LIV-P0001")  # (this module has loaded what an import uses)
        reset = _reset_peak_rss()  # else the peak is the start-up's (loading the modules)
        before = (_proc_status_mb("VmRSS") if reset else None) or _rss_mb()
        start = time.perf_counter()
        outcome = import_export(db, path)
        seconds = time.perf_counter() - start
        after = (_proc_status_mb("VmHWM") if reset else None) or _rss_mb()
    assert outcome.refused is None, outcome.refused
    return {
        "added": outcome.added,
        "import_s": round(seconds, 1),
        "sessions_per_s": round(outcome.added / seconds, 1),
        "rss_before_mb": round(before),
        "rss_peak_mb": round(after),
        "rss_growth_mb": round(after - before, 1),
    }


def run_real_size(url: str, name: str, export: Path) -> dict[str, Any]:
    """One real-size year imported by a fresh process (its RSS is the import's alone)."""
    done = subprocess.run(
        [sys.executable, __file__, "--import-one", str(export), "--db", url],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    figures: dict[str, Any] = json.loads(done.stdout)
    figures["backend"] = name
    figures["export_mb"] = round(export.stat().st_size / 1e6, 1)
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


@contextlib.contextmanager
def _database(backend: str, folder: Path, name: str, pg_url: str | None) -> Iterator[str]:
    if backend == "sqlite":
        yield str(folder / f"{name}.db")
    else:
        with _postgres(pg_url) as url:
            yield url


def _print(report: dict[str, Any]) -> None:
    print(f"{'backend':<11} {'patients':>8} {'sessions':>9} {'overview':>9} {'ov. peak':>9} "
          f"{'report':>7} {'rep. peak':>9}")  # fmt: skip
    for backend in report["results"]:
        for p in backend["points"]:
            print(
                f"{backend['backend']:<11} {p['patients']:>8} {p['sessions']:>9} "
                f"{p['overview_s']:>8.3f}s {p['overview_peak_mb']:>7.2f}MB "
                f"{p['report_s']:>6.3f}s {p['report_peak_mb']:>7.2f}MB"
            )
        print(
            f"{backend['backend']:<11} import {backend['imported_sessions']} sessions in "
            f"{backend['import_s']} s = {backend['import_sessions_per_s']} sessions/s, "
            f"peak {backend['import_peak_mb']} MB per export (traced), process RSS peak "
            f"{backend['rss_peak_mb']} MB; stored {backend['stored_bytes_per_session']} "
            f"B/session (export {backend['export_bytes_per_session']} B/session), "
            f"{backend['envelopes_kept']} envelopes kept"
        )
    for real in report["real_size"]:
        print(
            f"{real['backend']:<11} one real-size year ({real['export_mb']} MB): "
            f"{real['added']} sessions in {real['import_s']} s ({real['sessions_per_s']}/s), "
            f"RSS {real['rss_before_mb']} -> {real['rss_peak_mb']} MB "
            f"(+{real['rss_growth_mb']} MB)"
        )
    last = [b["points"][-1] for b in report["results"]]
    if not last:
        return
    ok = all(p["overview_s"] <= OVERVIEW_TARGET_S and p["report_s"] <= REPORT_TARGET_S
             for p in last)  # fmt: skip
    print(f"targets (overview <= {OVERVIEW_TARGET_S:g} s, report <= {REPORT_TARGET_S:g} s): "
          f"{'met' if ok else 'NOT met'}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-url", help="a PostgreSQL server (default: a throwaway cluster)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--envelope-points", type=int, default=4,
        help=f"points per session envelope (a real 10-minute session: {REAL_ENVELOPE_POINTS})",
    )  # fmt: skip
    parser.add_argument(
        "--measure-at", default="10,100",
        type=lambda text: sorted({int(n) for n in text.split(",") if n}),
        help="also measure overview and report after this many patients (comma-separated)",
    )  # fmt: skip
    parser.add_argument(
        "--real-size", action="store_true",
        help="also import one patient's year with real-size envelopes (a child process)",
    )  # fmt: skip
    parser.add_argument("--import-one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.import_one is not None:
        print(json.dumps(import_one(args.import_one, args.db)))
        return 0
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "machine": machine_facts(),
        "results": [],
        "real_size": [],
    }

    def save() -> None:
        report["machine"]["load_average"] = machine_facts()["load_average"]
        write_json(args.json, report)

    with tempfile.TemporaryDirectory(prefix="liv-bench-clinic-") as tmp:
        folder = Path(tmp)
        for backend in backends if args.patients > 0 else ():  # 0: --real-size alone
            figures: dict[str, Any] = {}
            report["results"].append(figures)
            with _database(backend, folder, "clinic", args.pg_url) as url:
                run_backend(url, backend, folder, args, save, figures)
        if args.real_size:
            start = time.perf_counter()
            export = real_size_export(folder, args.days)
            print(f"wrote the real-size export in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            for backend in backends:
                with _database(backend, folder, "real", args.pg_url) as url:
                    report["real_size"].append(run_real_size(url, backend, export))
                save()
    _print(report)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
