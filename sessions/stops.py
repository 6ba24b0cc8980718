"""The reasons a running session is stopped from outside, as the record states them.

Kept apart from the session runner (which imports the control loop and its numerics) so that
commands that only read the log can tell an interruption from a failure without importing it.
"""

from __future__ import annotations

STOP_CTRL_C = "stopped by the patient (Ctrl-C)"
STOP_SIGTERM = "stopped by the computer (a stop signal, SIGTERM)"
STOP_SIGHUP = "the terminal was closed (SIGHUP)"
STOP_PIPE = "the output pipe was closed"
# What records written before said for SIGTERM (still read as STOP_SIGTERM; never written).
STOP_SIGTERM_V1 = "stopped by the patient (a stop signal, SIGTERM)"
# The runner's reasons for a session that ended by itself, stored as ``stopped_by_patient``
# (docs/log-format.md) although nobody stopped it: the record's reason says what happened.
NOBODY_PREFIX = "nobody on the plate"
OUT_OF_TIME_PREFIX = "the session ran out of time"


def stop_word(reason: str) -> str:
    """What text lists (``liv sessions``, ``liv show``) call a ``stopped_by_patient`` record,
    by what stopped it: the stored status and the JSON say ``stopped_by_user`` for them all."""
    if reason in (STOP_SIGTERM, STOP_SIGTERM_V1):
        return "computer_stop"
    if reason.startswith(NOBODY_PREFIX):
        return "nobody_on_plate"
    if reason.startswith(OUT_OF_TIME_PREFIX):
        return "out_of_time"
    return "stopped_by_user"
