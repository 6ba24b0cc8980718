"""The command line's exit statuses and the errors it reports in one sentence (docs/cli.md)."""

from __future__ import annotations

import argparse

from firmware_bridge.errors import LivError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


ENGINEER_SENTENCE = "This is a command for service engineers. It is not needed for your sessions."


class UsageError(Exception):
    """A command-line value that is not allowed; the message says what is."""


class EngineerOnlyError(LivError):
    """An engineering command typed without ``--engineer``: one sentence, exit 1."""

    def __init__(self) -> None:
        super().__init__(ENGINEER_SENTENCE)


def require_engineer(args: argparse.Namespace) -> None:
    """Refuse an engineering command without engineer mode (also when called directly)."""
    if not getattr(args, "engineer", False):
        raise EngineerOnlyError()
