"""The clinic's commands: ``liv clinic import|overview|problems|acknowledge|report|export``
(docs/clinic.md).

Each handler takes the parsed arguments and returns an exit status; expected failures raise a
LivError whose one sentence the person sees (sessions/cli/app.py prints it).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from firmware_bridge.errors import LivError
from sessions.clinic.db import ClinicDb, resolve_db_url
from sessions.clinic.importer import import_export, load_sessions, refresh_all
from sessions.text import echo, terminal_line

EXIT_REFUSED = 1


class ClinicCommandError(LivError):
    pass


def open_db(args: argparse.Namespace) -> ClinicDb:
    """The clinic database the command works on (--db, $LIV_CLINIC_DB, the clinic dir)."""
    db = ClinicDb(resolve_db_url(getattr(args, "db", None), getattr(args, "clinic_dir", None)))
    if db.migrated_from is not None and db.migrated_from > 0:
        refresh_all(db)  # a migration may add summary rows: fill them from the records
    return db


def cmd_clinic_import(args: argparse.Namespace) -> int:
    refused = 0
    with open_db(args) as db:
        for name in args.files:
            outcome = import_export(db, Path(name))
            where = terminal_line(name)
            if outcome.refused is not None:
                refused += 1
                echo(f"refused {where}: {terminal_line(outcome.refused)}", file=sys.stderr)
            else:
                who = ", ".join(outcome.patients) or "no records"
                echo(
                    f"imported {where}: {outcome.added} new records, {outcome.duplicates} "
                    f"already held ({terminal_line(who)})"
                )
                for problem in outcome.problems:
                    echo(f"warning: {terminal_line(problem)}", file=sys.stderr)
            for note in outcome.notes:
                echo(f"note: {terminal_line(note)}", file=sys.stderr)
    if refused:
        echo(
            f"{refused} of {len(args.files)} file(s) refused; ask for a new export from the "
            "patient's plate, or see 'liv clinic overview' for the problems recorded",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    return 0


def cmd_clinic_plate_add(args: argparse.Namespace) -> int:
    from sessions.clinic.plates import add_plate

    with open_db(args) as db:
        plate = add_plate(db, args.device_id, args.key, args.first_counter)
    echo(
        f"plate {plate.device_id} registered with key {plate.key_id} (first counter "
        f"{plate.first_counter}); its exports can now be imported"
    )
    return 0


def cmd_clinic_plate_list(args: argparse.Namespace) -> int:
    from sessions.clinic.plates import list_plates

    with open_db(args) as db:
        plates = list_plates(db)
    if not plates:
        echo("no plates registered; register each with 'liv clinic plate add DEVICE_ID KEYHEX'")
        return 0
    echo(f"{'device':<16}  {'key id':<16}  first  registered")
    for p in plates:
        echo(f"{p.device_id:<16}  {p.key_id:<16}  {p.first_counter:>5}  {p.added_utc}")
        echo(f"  {p.device_key}")
    return 0


def cmd_clinic_overview(args: argparse.Namespace) -> int:
    from sessions.clinic.overview import (
        acknowledged_problems,
        clinic_problems,
        overview,
        patient_report,
        render_html,
        render_json,
        render_table,
        report_file_name,
    )

    if args.format == "html" and not args.out:
        raise ClinicCommandError(
            "the HTML overview links to each patient's report: give --out FILE.html"
        )
    from sessions.clinic.problems import all_problems

    with open_db(args) as db:
        found = all_problems(db)
        rows = overview(db, problems=found)
        problems = clinic_problems(db, found)
        acknowledged = acknowledged_problems(db, found)
        renderer = {"table": render_table, "json": render_json, "html": render_html}[args.format]
        text = renderer(rows, problems, acknowledged)
        if args.format == "html":
            out = Path(args.out)
            for row in rows:
                target = out.parent / report_file_name(row.patient_id)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(patient_report(db, row.patient_id, "html"), encoding="utf-8")
    _write(args.out, text, "overview")
    return 0


def cmd_clinic_problems(args: argparse.Namespace) -> int:
    from sessions.clinic.problems import all_problems, short_id_length
    from sessions.jsonshapes import clinic_problem_shape

    with open_db(args) as db:
        everything = all_problems(db)
    width = short_id_length(p.problem_id for p in everything)
    shown = [p for p in everything if args.all or p.open]
    if args.json:
        data = [clinic_problem_shape(p, p.problem_id[:width]) for p in shown]
        echo(json.dumps(data, indent=2, ensure_ascii=False))
        return 0
    acknowledged = sum(1 for p in everything if not p.open)
    for p in shown:
        where = p.patient_id if p.patient_id is not None else "no patient"
        state = "open" if p.open else "acknowledged"
        echo(terminal_line(f"{p.problem_id[:width]}  {p.found_utc[:16].replace('T', ' ')} UTC  "
                           f"{where}  {p.kind}  {state}"))  # fmt: skip
        echo(f"  {terminal_line(p.detail)}")
        if p.note is not None:
            echo(terminal_line(f"  acknowledged {p.note.acknowledged_utc[:16].replace('T', ' ')} "
                               f"UTC by {p.note.acknowledged_by}: {p.note.note}"))  # fmt: skip
    opened = len(everything) - acknowledged
    if args.all:
        echo(f"{len(everything)} problem(s): {opened} open, {acknowledged} acknowledged")
    elif opened:
        echo(
            f"{opened} open problem(s) ({acknowledged} acknowledged: --all shows them); once "
            "one is dealt with: liv clinic acknowledge ID --note TEXT"
        )
    else:
        echo(f"no open problems ({acknowledged} acknowledged: --all shows them)")
    return 0


def cmd_clinic_acknowledge(args: argparse.Namespace) -> int:
    from sessions.clinic.problems import acknowledge

    with open_db(args) as db:
        problem = acknowledge(db, args.problem_id, args.note, args.by)
    note = problem.note
    assert note is not None
    who = problem.patient_id if problem.patient_id is not None else "no patient"
    echo(
        terminal_line(
            f"problem {problem.problem_id} ({problem.kind}, {who}) acknowledged by "
            f"{note.acknowledged_by}; it no longer counts on the overview, and 'liv clinic "
            "problems --all' shows it with the note"
        )
    )
    return 0


def cmd_clinic_report(args: argparse.Namespace) -> int:
    from sessions.clinic.overview import patient_report

    with open_db(args) as db:
        try:
            text = patient_report(
                db, args.patient, args.format, since=_day(args.since), until=_day(args.until)
            )
        except LookupError:
            raise ClinicCommandError(
                f"the clinic database holds no therapy sessions of patient {args.patient!r}; "
                "'liv clinic overview' lists the patients"
            ) from None
        except ValueError as exc:
            raise ClinicCommandError(str(exc)) from None
    _write(args.out, text, "report")
    return 0


def cmd_clinic_export(args: argparse.Namespace) -> int:
    from sessions.clinic.fhir import FhirSession, patient_bundle

    with open_db(args) as db:
        held = load_sessions(db, args.patient)
    if not held:
        raise ClinicCommandError(
            f"the clinic database holds no sessions of patient {args.patient!r}; "
            "'liv clinic overview' lists the patients"
        )
    sessions = [FhirSession(h.summary, h.kind) for h in held]
    bundle = patient_bundle(args.patient, sessions, datetime.now(UTC))
    _write(args.out, json.dumps(bundle, indent=1, ensure_ascii=False) + "\n", "FHIR bundle")
    return 0


def _day(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


def _write(out: str | None, text: str, what: str) -> None:
    if out:
        Path(out).write_text(text, encoding="utf-8")
        echo(f"{what} written to {out}", file=sys.stderr)
    else:
        echo(text, end="" if text.endswith("\n") else "\n")


__all__ = [
    "ClinicCommandError",
    "cmd_clinic_acknowledge",
    "cmd_clinic_export",
    "cmd_clinic_import",
    "cmd_clinic_overview",
    "cmd_clinic_plate_add",
    "cmd_clinic_plate_list",
    "cmd_clinic_problems",
    "cmd_clinic_report",
]
