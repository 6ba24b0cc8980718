"""``liv report``: adherence for clinicians."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from sessions.adherence import counted_kinds
from sessions.commands.common import ReportError, home_of, open_log, period
from sessions.commands.integrity import log_integrity
from sessions.home import LivHome
from sessions.log import (
    SessionKind,
    SessionLog,
    SessionSummary,
)
from sessions.protocol import (
    PatientProtocol,
    protocol_from_dict,
)
from sessions.text import echo

_log = logging.getLogger(__name__)


def _report_subject(
    args: argparse.Namespace, home: LivHome, records: list[SessionSummary]
) -> tuple[str, PatientProtocol, datetime | None]:
    """The patient to report on, the protocol in force now and when it was installed.

    The protocol in force now is the installed one when it is this patient's (installed when
    its file was written); otherwise the one their latest session ran under (no install time).
    The protocols of earlier sessions come from the sessions themselves (compute_adherence).
    """
    # engineering runs of an installation without a protocol are logged under no patient
    patients = sorted({r.patient_id for r in records if r.kind is not SessionKind.ENGINEERING})
    patient = args.patient
    if patient is None:
        if len(patients) == 1:
            patient = patients[0]
        elif home.protocol_path.exists():
            patient = home.protocol().patient_id
        else:
            listed = ", ".join(patients) or "none"
            raise ReportError(f"say which patient with --patient (in this log: {listed})")
    if home.protocol_path.exists():
        installed = home.protocol()
        if installed.patient_id == patient:
            written = home.protocol_path.stat().st_mtime
            return patient, installed, datetime.fromtimestamp(written, UTC)
    mine = [r for r in records if r.patient_id == patient]
    counted = [r for r in mine if r.kind in counted_kinds(home.is_demo)]
    theirs = counted or [r for r in mine if r.kind is not SessionKind.ENGINEERING]
    if theirs:
        latest = max(theirs, key=lambda r: (r.started_utc, r.session_id))
        try:
            return patient, protocol_from_dict(json.loads(latest.protocol_json)), None
        except (ValueError, RecursionError) as exc:  # the log's text, written by hand
            _log.warning("prescription of session %s unreadable: %s", latest.session_id, exc)
            raise ReportError(
                f"the prescription recorded with session {latest.session_id} cannot be read, so "
                "the sessions cannot be judged against it; run 'liv verify', or install the "
                "protocol with 'liv protocol install FILE'"
            ) from None
    raise ReportError(f"no sessions and no protocol for patient {patient!r} in this log")


def report_text(args: argparse.Namespace, home: LivHome, log: SessionLog, fmt: str) -> str:
    """The report in ``fmt`` (table, csv, json, html) for the patient ``args`` name."""
    return report_output(args, home, log, fmt)[0]


def report_output(
    args: argparse.Namespace, home: LivHome, log: SessionLog, fmt: str
) -> tuple[str, bool]:
    """The report in ``fmt``, and whether the log's integrity it states failed."""
    from sessions.adherence import compute_adherence
    from sessions.jsonshapes import report_shape
    from sessions.report import ReportContext, render_csv, render_html, render_table

    since, until = period(args)
    records = log.summaries()
    patient, protocol, installed_utc = _report_subject(args, home, records)
    theirs = [r for r in records if r.patient_id == patient]
    try:
        report = compute_adherence(
            protocol,
            theirs,
            since=since,
            until=until,
            installed_utc=installed_utc,
            demo=home.is_demo,
            set_back=log.set_back(patient).keys(),
        )
    except ValueError as exc:  # a period the report cannot cover: the message says why
        raise ReportError(str(exc)) from None
    integrity, trust = log_integrity(log, home)
    context = ReportContext.of(report, protocol, theirs, integrity, trust)
    if fmt == "html":
        text = render_html(report, protocol, theirs, lambda s: log.get(s.session_id), context)
    elif fmt == "json":
        data = report_shape(
            report, context.integrity, context.last_session, context.target, context.trust
        )
        text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    else:
        text = {"table": render_table, "csv": render_csv}[fmt](report, context)
    return text, context.integrity_failed


def cmd_report(args: argparse.Namespace) -> int:
    home = home_of(args)
    fmt = "json" if getattr(args, "json", False) else args.format
    with open_log(args, home, read_only=True) as log:
        text, failed = report_output(args, home, log, fmt)
    if failed:
        echo(
            "liv: warning: this log FAILED verification ('liv verify' says where); the report "
            "says so at the top",
            file=sys.stderr,
        )
    if args.out:
        out = Path(args.out)
        out.write_text(text, encoding="utf-8")
        echo(f"report written to {out}")
    else:
        echo(text, end="" if text.endswith("\n") else "\n")
    return 0
