"""Patient protocol files: what a clinician prescribes, read strictly and validated whole.

A protocol is one YAML mapping (``docs/protocol-file.md`` describes every field). It is read by
a YAML loader that resolves nothing implicitly, so every plain scalar arrives as the exact text
the clinician wrote; each field is then converted by a strict rule of its own. YAML 1.1's
surprises (``10:30`` read as 630, ``030`` as 24, ``no`` as False, a repeated key silently
winning) therefore cannot slip through as a wrong dose. Values outside ``HARD_LIMITS`` are
refused, never clamped, and every problem in a file is reported at once, sorted by line.

The package is split along its seams, each module using only those before it: ``problems``
(ProtocolProblem, ProtocolFileError), ``fields`` (the field table, HARD_LIMITS, DailyWindow),
``yamltree`` (YAML or a dict read into a tree of exact text), ``values`` (text to values by
strict rules), ``check`` (a whole protocol checked field by field), ``model``
(PatientProtocol) and ``load`` (the entry points). Import every name from ``sessions.protocol``.

Errors::

    LivError (firmware_bridge.errors)     ValueError
    └── ProtocolFileError ────────────────┘    carries .source and .problems (ProtocolProblem)

A ``PatientProtocol`` checks itself when constructed, so one built by hand or changed with
``dataclasses.replace`` is held to the same rules as one read from a file.
"""

from __future__ import annotations

from sessions.protocol.fields import HARD_LIMITS, MAX_STUDY_DAYS, DailyWindow
from sessions.protocol.load import (
    MAX_TEXT_CHARS,
    load_protocol,
    parse_protocol,
    protocol_from_bytes,
    protocol_from_dict,
    read_protocol_bytes,
)
from sessions.protocol.model import PatientProtocol
from sessions.protocol.problems import ProtocolFileError, ProtocolProblem

__all__ = [
    "HARD_LIMITS",
    "MAX_STUDY_DAYS",
    "MAX_TEXT_CHARS",
    "DailyWindow",
    "PatientProtocol",
    "ProtocolFileError",
    "ProtocolProblem",
    "load_protocol",
    "parse_protocol",
    "protocol_from_bytes",
    "protocol_from_dict",
    "read_protocol_bytes",
]
