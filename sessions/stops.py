"""The reasons a running session is stopped from outside, as the record states them.

Kept apart from the session runner (which imports the control loop and its numerics) so that
commands that only read the log can tell an interruption from a failure without importing it.
"""

from __future__ import annotations

STOP_CTRL_C = "stopped by the patient (Ctrl-C)"
STOP_SIGTERM = "stopped by the patient (a stop signal, SIGTERM)"
STOP_SIGHUP = "the terminal was closed (SIGHUP)"
STOP_PIPE = "the output pipe was closed"
