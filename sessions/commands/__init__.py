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
and ``liv status`` only what it reads (docs/performance.md). Import a name from its module
(``from sessions.commands.status import status_lines``).
"""

from __future__ import annotations

# `liv export --format`: what each writes and the file name it takes in an --out directory.
EXPORT_FORMATS = {
    "jsonl": "liv-log.jsonl",
    "csv": "liv-sessions.csv",
    "csv-records": "liv-records.csv",
    "csv-envelopes": "liv-envelopes.csv",
    "fhir": "liv-fhir.json",
}
