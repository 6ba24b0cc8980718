"""Which logged sessions count as therapy, and the record's presence event's name.

Kept apart from sessions.adherence (which re-exports them) so that ``liv start``, which needs
only these to decide whether a session is due, does not load the adherence reports before the
plate moves (issue 11: start until the plate moves <= 0.3 s; docs/performance.md).
"""

from __future__ import annotations

from sessions.log.records import SessionKind

# The session record's event holding presence detection's facts (sessions/runner.py); its
# ``values.verified`` false flags the session "presence_not_verified".
PRESENCE_EVENT = "presence"


def counted_kinds(demo: bool = False) -> frozenset[SessionKind]:
    """The kinds of record that count as therapy: therapy; in a demo home simulated too.

    Engineering runs never count, demo or not.
    """
    if demo:
        return frozenset({SessionKind.THERAPY, SessionKind.SIMULATED})
    return frozenset({SessionKind.THERAPY})


def session_kind(session: object) -> SessionKind:
    """A logged session's kind; a session without one (written before kinds) is therapy."""
    kind = getattr(session, "kind", None)
    return SessionKind.THERAPY if kind is None else SessionKind(kind)
