"""``main``: parse, run the command's handler, and turn every expected failure into one sentence."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from firmware_bridge.errors import DeviceNotFoundError, LivError
from sessions.cli.errors import (
    ENGINEER_SENTENCE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
)
from sessions.cli.help import parse_command_line
from sessions.cli.parser import build_parser, engineering_command
from sessions.text import echo, terminal_line
from sessions.wording import refusal_sentence

# Commands that drive a plate or simulate one: numerics run single-threaded in them.
_PLATE_COMMANDS = frozenset({"device", "calibrate", "run", "start", "demo", "sim"})

_log = logging.getLogger("liv")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = sys.argv[1:] if argv is None else list(argv)
    if engineering_command(words):
        echo(f"liv: {ENGINEER_SENTENCE}", file=sys.stderr)
        return EXIT_FAILURE
    args = parse_command_line(parser, argv)
    logging.basicConfig(
        # Diagnostics are for engineers (-v); a patient sees the one sentence each command prints.
        level=logging.INFO if args.verbose else logging.CRITICAL,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with _numerics_for(args.command):
            code: int = args.handler(args)
            sys.stdout.flush()  # a reader that left is found here, not by the exit's flush
    except UsageError as exc:
        echo(f"liv: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LivError as exc:
        sentence = _patient_sentence(_command_name(args), exc, args.verbose)
        if _session_stopped(exc):  # Ctrl-C, SIGTERM, SIGHUP or a closed pipe at start-up
            _tell(f"liv: {sentence}")
            return EXIT_INTERRUPTED
        echo(f"liv: {sentence}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        echo("liv: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of the output left (`liv status | head -1`): nothing went wrong and there
        # is nothing to say; the interpreter's last flush must not fail either.
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_OK
    except OSError as exc:
        # A file or directory the command needs (missing, unwritable, a full disk): one
        # sentence naming it, never a traceback.
        where = f" ({exc.filename})" if exc.filename else ""
        echo(f"liv: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_FAILURE
    return code


def _numerics_for(command: str) -> contextlib.AbstractContextManager[Any]:
    """Single-threaded BLAS for the plate commands; nothing (and no numpy) for the others.

    The numerical libraries are loaded first: the limit applies to the libraries loaded
    when it is set.
    """
    if command not in _PLATE_COMMANDS:
        return contextlib.nullcontext()
    # numpy loads its BLAS when imported; the control loop is imported by the commands that
    # run it (an engineer's open-loop drive does not)
    import numpy  # noqa: F401

    from firmware_bridge.realtime import single_threaded_numerics

    return single_threaded_numerics()


# Commands a patient runs: their refusals are told in plain words (sessions/wording.py); the
# technical message goes to the log, shown with -v.
_PATIENT_COMMANDS = frozenset({"start", "status", "demo"})


# Engineers' tools: their messages keep the technical detail (a port's own error text).
_ENGINEER_TOOLS = frozenset({"calibrate", "run", "sim", "device info", "device drive"})


def _command_name(args: argparse.Namespace) -> str:
    """``start``, or ``device set`` for a command with actions."""
    if args.command == "device":
        return f"device {args.device_command}"
    return str(args.command)


def _patient_sentence(command: str, exc: LivError, verbose: bool) -> str:
    """What the person reads: the plain sentence on a patient command, else the message.

    The technical message goes to the log and, with ``-v``, to stderr as well.
    """
    if command not in _PATIENT_COMMANDS:
        if isinstance(exc, DeviceNotFoundError) and command not in _ENGINEER_TOOLS:
            # 'liv device set', 'liv verify': the port's own error text is for the log
            _log.warning("%s: %s", type(exc).__name__, exc)
            if verbose:
                _tell(f"liv: technical detail: {terminal_line(exc)}")
            return no_plate_sentence(exc.url)
        return str(exc)
    sentence = refusal_sentence(exc)
    if sentence is None:
        return str(exc)
    _log.warning("%s: %s", type(exc).__name__, exc)
    if verbose:
        _tell(f"liv: technical detail: {terminal_line(exc)}")
    return sentence


def no_plate_sentence(url: str) -> str:
    """A port that opened no plate, in plain words: what to check, and where to find the port."""
    if url.startswith(("socket://", "rfc2217://")):
        return (
            f"No plate answers at {terminal_line(url)}: check that its server is running and "
            "that the address is right."
        )
    return (
        f"No plate answers at {terminal_line(url)}: check that it is plugged in and switched "
        "on, and that this is its port ('liv device list' shows the ports)."
    )


def _session_stopped(exc: BaseException) -> bool:
    """A session stopped at start-up (:class:`sessions.runner.SessionStoppedError`).

    Only a command that imported the runner can raise it, so the runner is not imported here.
    """
    runner = sys.modules.get("sessions.runner")
    return runner is not None and isinstance(exc, runner.SessionStoppedError)


def _tell(sentence: str) -> None:
    """The one sentence on stderr; a closed terminal (SIGHUP) must not turn it into a crash."""
    with contextlib.suppress(OSError):
        print(sentence, file=sys.stderr)
