"""sqlite3 and OS errors turned into one LogError sentence a patient can read."""

from __future__ import annotations

import contextlib
import errno
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sessions.log.records import LogError, LogErrorReason

_log = logging.getLogger(__name__)


# --- errors --------------------------------------------------------------------------------------


# (sqlite error-name prefixes, message fragments, reason, sentence with {path}), tried in order.
_SQLITE_CASES: tuple[tuple[tuple[str, ...], tuple[str, ...], LogErrorReason, str], ...] = (
    (
        ("SQLITE_BUSY", "SQLITE_LOCKED"),
        ("locked", "busy"),
        LogErrorReason.LOCKED,
        "the session log {path} is in use by another program (another liv window or "
        "process?); close it and try again",
    ),
    (
        ("SQLITE_FULL",),
        ("disk is full",),
        LogErrorReason.DISK_FULL,
        "the disk holding the session log {path} is full; free some space and try again "
        "(records already saved are kept)",
    ),
    (
        ("SQLITE_NOTADB", "SQLITE_CORRUPT"),
        ("not a database", "malformed"),
        LogErrorReason.CORRUPT,
        "the file {path} is damaged or is not a liv session log; it was left unchanged, "
        "keep it and contact service",
    ),
    (
        ("SQLITE_READONLY",),
        ("readonly", "read-only"),
        LogErrorReason.READ_ONLY,
        "the session log {path} can be read but not written (read-only file, folder or disk)",
    ),
    (
        ("SQLITE_PERM", "SQLITE_AUTH"),
        ("permission",),
        LogErrorReason.PERMISSION,
        "permission denied for the session log {path}; it belongs to another user or is protected",
    ),
    (
        ("SQLITE_CANTOPEN",),
        ("unable to open",),
        LogErrorReason.CANNOT_OPEN,
        "the session log {path} cannot be opened; check that its folder exists and that "
        "you may write there",
    ),
    (
        ("SQLITE_IOERR",),
        ("i/o error",),
        LogErrorReason.IO,
        "the disk holding the session log {path} reported a read or write error; check "
        "the disk or storage card",
    ),
)


def _explain_sqlite(exc: sqlite3.Error, path: Path) -> tuple[LogErrorReason, str]:
    """Map a sqlite3 error to a reason code and a sentence a patient can read."""
    name = str(getattr(exc, "sqlite_errorname", None) or "").upper()
    text = str(exc).lower()
    if isinstance(exc, sqlite3.IntegrityError) or name.startswith("SQLITE_CONSTRAINT"):
        return (
            LogErrorReason.INTEGRITY,
            f"the session log {path} refused a change that would alter its records ({exc})",
        )
    for prefixes, texts, reason, sentence in _SQLITE_CASES:
        if name.startswith(prefixes) or any(t in text for t in texts):
            return reason, sentence.format(path=path)
    return LogErrorReason.OTHER, f"the session log {path} could not be used ({exc})"


def _explain_os(exc: OSError, path: Path) -> tuple[LogErrorReason, str]:
    where = exc.filename or path
    if isinstance(exc, PermissionError):
        return (
            LogErrorReason.PERMISSION,
            f"permission denied for {where}; it belongs to another user or is protected",
        )
    if isinstance(exc, IsADirectoryError):
        return LogErrorReason.CANNOT_OPEN, f"{where} is a folder, not a session log file"
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return LogErrorReason.CANNOT_OPEN, f"{where} does not exist or its folder is missing"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            LogErrorReason.DISK_FULL,
            f"the disk holding {where} is full; free some space and try again",
        )
    if exc.errno == errno.EROFS:
        return LogErrorReason.READ_ONLY, f"{where} is on a read-only disk"
    return (
        LogErrorReason.IO,
        f"the disk holding {where} reported an error ({exc.strerror or exc})",
    )


@contextlib.contextmanager
def _translate(action: str, path: Path) -> Iterator[None]:
    """Turn sqlite3 and OS errors into one :class:`LogError` sentence: 'Could not <action>: ...'."""
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        if isinstance(exc, sqlite3.Error):
            reason, sentence = _explain_sqlite(exc, path)
        else:
            reason, sentence = _explain_os(exc, path)
        _log.warning("session log: could not %s: %r", action, exc)
        raise LogError(f"Could not {action}: {sentence}.", reason=reason, path=path) from exc


def _invalid(message: str) -> LogError:
    return LogError(message, reason=LogErrorReason.INVALID)
