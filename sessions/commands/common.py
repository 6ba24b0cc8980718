"""What every patient and clinician command shares: the home, the log, JSON output, periods."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

from firmware_bridge.errors import LivError
from sessions.cli.errors import UsageError
from sessions.home import LivHome, resolve_home
from sessions.log import (
    PINS_FILE,
    DevicePins,
    SessionLog,
)

EXIT_REFUSED = 1


def home_of(args: argparse.Namespace) -> LivHome:
    """The installation a command works on (sessions.home.resolve_home: one rule for all)."""
    return resolve_home(getattr(args, "home", None))


@contextmanager
def open_log(
    args: argparse.Namespace, home: LivHome | None = None, *, read_only: bool = False
) -> Iterator[SessionLog]:
    """The session log; ``read_only`` (audits) never creates, migrates or writes it."""
    home = home_of(args) if home is None else home
    home.check()
    path = home.db_path(getattr(args, "db", None))
    if not read_only:
        if path.parent == home.root:
            home.ensure()  # created private, like every directory of the installation
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with SessionLog(path, read_only=read_only) as log:
        yield log


def pins_of(home: LivHome) -> DevicePins:
    """The plates' keys this home trusts (sessions/log/vouch.py)."""
    return DevicePins(home.root / PINS_FILE)


def print_json(data: object) -> None:
    """JSON for programs on standard output (JSON escapes every control character)."""
    print(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))


def parse_date(text: str | None) -> date | None:
    return None if text is None else date.fromisoformat(text)


def period(args: argparse.Namespace) -> tuple[date | None, date | None]:
    """``--since`` and ``--until`` as dates; a period that ends before it starts is refused."""
    since, until = parse_date(args.since), parse_date(args.until)
    if since is not None and until is not None and since > until:
        raise UsageError(
            f"--since {since.isoformat()} is after --until {until.isoformat()}: give a "
            "--since on or before the --until day"
        )
    return since, until


class ReportError(LivError):
    """A report or FHIR export whose patient is not named, or not in the log."""
