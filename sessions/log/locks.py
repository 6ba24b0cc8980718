"""Per-session liveness locks: which running rows still belong to a living process."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NOTE_BYTES = 4096  # a lock file's reserved size: room for one note

if sys.platform != "win32":
    import fcntl

_log = logging.getLogger(__name__)

# --- per-session liveness locks ------------------------------------------------------------------


def running_locks_folder(db_path: Path) -> Path:
    """The folder beside the log at ``db_path`` that holds its running sessions' lock files
    (``liv.db`` -> ``liv.db.running``). Empty when no session runs; whoever removes it (``liv
    demo``) asks here, so the name is made in one place."""
    return db_path.with_name(db_path.name + ".running")


class _SessionLocks:
    """One flock'd file per running session: held while its process lives, freed by the kernel.

    recover_interrupted only recovers a running row whose lock nobody holds, so a second liv
    process (a report, an import) never interrupts a session that is still running.
    """

    def __init__(self, db_path: Path) -> None:
        self.folder = running_locks_folder(db_path)
        self._held: dict[str, int] = {}
        self._noted: set[str] = set()  # lock files that carry a note: kept on release

    def _file(self, session_id: str) -> Path:
        return self.folder / f"{session_id}.lock"

    def acquire(self, session_id: str) -> None:
        if sys.platform == "win32":  # no flock: recovery treats every running row as stale
            return
        if not self.folder.is_dir():
            with contextlib.suppress(FileExistsError):
                self.folder.mkdir(mode=0o700)
                os.chmod(self.folder, 0o700)
        fd = os.open(self._file(session_id), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        # Room for a note, reserved now: a disk that fills up later cannot refuse it.
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, NOTE_BYTES)
        self._held[session_id] = fd

    def write_note(self, session_id: str, note: Mapping[str, Any]) -> bool:
        """Keep ``note`` (JSON) in the session's lock file for recovery; True if it was kept.

        For a session whose end could not be written to the log (disk full, locked): the next
        recovery records why, instead of the generic crash reason. The file is then kept when
        the lock is released.
        """
        fd = self._held.get(session_id)
        if fd is None:
            return False
        data = json.dumps(note, ensure_ascii=True, allow_nan=False).encode("ascii")
        if len(data) > NOTE_BYTES:
            return False
        try:
            os.pwrite(fd, data.ljust(NOTE_BYTES, b" "), 0)
            os.fsync(fd)
        except OSError as exc:
            _log.warning("could not keep the note for session %s: %r", session_id, exc)
            return False
        self._noted.add(session_id)
        return True

    def read_note(self, session_id: str) -> dict[str, Any] | None:
        """The note a process left in the session's lock file, or None."""
        try:
            data = self._file(session_id).read_bytes()
        except OSError:
            return None
        try:
            note = json.loads(data.decode("ascii").strip() or "null")
        except ValueError:
            return None
        return note if isinstance(note, dict) else None

    def release(self, session_id: str) -> None:
        fd = self._held.pop(session_id, None)
        if fd is None:
            return
        if session_id not in self._noted:
            with contextlib.suppress(OSError):
                os.unlink(self._file(session_id))
        self._noted.discard(session_id)
        os.close(fd)

    def is_held(self, session_id: str) -> bool:
        """As :meth:`is_live`, but only looks: a stale lock file (and its note) is left for
        recovery. For readers (``liv status``) and for a start that must not touch the plate."""
        if session_id in self._held:
            return True
        if sys.platform == "win32":
            return False
        try:
            fd = os.open(self._file(session_id), os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            os.close(fd)  # (closing releases a lock taken here)
        return False

    def is_live(self, session_id: str) -> bool:
        """True when a living process (this one included) holds the session's lock."""
        if session_id in self._held:
            return True
        if sys.platform == "win32":
            return False
        try:
            fd = os.open(self._file(session_id), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            with contextlib.suppress(OSError):
                os.unlink(self._file(session_id))
            return False
        finally:
            os.close(fd)

    def close(self) -> None:
        for session_id in list(self._held):
            self.release(session_id)
