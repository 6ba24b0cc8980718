"""The patient's and the clinician's commands, one module per seam (handlers for ``liv``).

Each handler takes the parsed arguments and returns an exit status; expected failures raise a
LivError whose message is the one sentence the person sees (sessions/cli/ prints it).

- ``common``: the home, the session log, JSON output and ``--since``/``--until`` periods;
- ``protocols``: ``liv protocol check|install``, ``liv enroll``;
- ``plate``: ``liv device set|list``;
- ``start``: ``liv start`` and its progress line;
- ``status``: ``liv status``;
- ``listing``: ``liv sessions``, ``liv show``;
- ``integrity``: ``liv verify``, ``liv export``, ``liv import``;
- ``reporting``: ``liv report``;
- ``demo``: ``liv demo``.

The command line imports a module when its command runs, so ``liv --help`` loads none of them
and ``liv status`` only what it reads (docs/performance.md). The names of the former single
module stay importable from here (``from sessions.commands import status_lines``); each is
loaded from its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# `liv export --format`: what each writes and the file name it takes in an --out directory.
EXPORT_FORMATS = {
    "jsonl": "liv-log.jsonl",
    "csv": "liv-sessions.csv",
    "csv-records": "liv-records.csv",
    "csv-envelopes": "liv-envelopes.csv",
    "fhir": "liv-fhir.json",
}

# name -> the module of this package that defines it
_WHERE: dict[str, str] = {
    # common.py
    "EXIT_REFUSED": "common",
    "ReportError": "common",
    "home_of": "common",
    "open_log": "common",
    "parse_date": "common",
    "period": "common",
    "pins_of": "common",
    "print_json": "common",
    # protocols.py
    "_warn_about_study": "protocols",
    "cmd_enroll": "protocols",
    "cmd_protocol_check": "protocols",
    "cmd_protocol_install": "protocols",
    "describe_protocol": "protocols",
    "plain_protocol": "protocols",
    "study_warning": "protocols",
    # plate.py
    "_first_held_counter": "plate",
    "cmd_device_list": "plate",
    "cmd_device_set": "plate",
    "port_url": "plate",
    # start.py
    "BAR_MAX": "start",
    "BAR_MIN": "start",
    "EXIT_FAILURE": "start",
    "EXIT_INTERRUPTED": "start",
    "EXIT_OK": "start",
    "INTERRUPTING_STOPS": "start",
    "PLAIN_EVERY_S": "start",
    "ProgressLine": "start",
    "_not_therapy_note": "start",
    "_notice": "start",
    "cmd_start": "start",
    "progress_bar": "start",
    "progress_display": "start",
    "start_exit_status": "start",
    "start_session": "start",
    "terminal_columns": "start",
    # status.py
    "_minutes_by_slot": "status",
    "_status_of_log": "status",
    "cmd_status": "status",
    "status_lines": "status",
    "status_shape": "status",
    "streak": "status",
    # listing.py
    "_kind_text": "listing",
    "_summary": "listing",
    "cmd_sessions": "listing",
    "cmd_show": "listing",
    "resolve_session_id": "listing",
    "show_lines": "listing",
    "sparkline": "listing",
    # integrity.py
    "_enrolled_plates": "integrity",
    "_export_fhir": "integrity",
    "_integrity_ok": "integrity",
    "_integrity_text": "integrity",
    "_plate_state": "integrity",
    "cmd_export": "integrity",
    "cmd_import": "integrity",
    "cmd_verify": "integrity",
    "log_integrity": "integrity",
    # reporting.py
    "_report_subject": "reporting",
    "cmd_report": "reporting",
    "report_output": "reporting",
    "report_text": "reporting",
    # demo.py
    "DEMO_DAYS": "demo",
    "DEMO_DEVICE": "demo",
    "DEMO_MARKER": "demo",
    "DEMO_MINUTES": "demo",
    "DEMO_MISSED_DAY": "demo",
    "DEMO_MORNING_ONLY_DAY": "demo",
    "DemoSession": "demo",
    "_DemoClock": "demo",
    "_demo_root": "demo",
    "cmd_demo": "demo",
    "demo_history": "demo",
    "demo_protocol": "demo",
    "run_demo_history": "demo",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(_WHERE)
