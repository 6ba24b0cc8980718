"""Per-session liveness locks: which running rows still belong to a living process."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

if sys.platform != "win32":
    import fcntl

_log = logging.getLogger(__name__)

# --- per-session liveness locks ------------------------------------------------------------------


class _SessionLocks:
    """One flock'd file per running session: held while its process lives, freed by the kernel.

    recover_interrupted only recovers a running row whose lock nobody holds, so a second liv
    process (a report, an import) never interrupts a session that is still running.
    """

    def __init__(self, db_path: Path) -> None:
        self.folder = db_path.with_name(db_path.name + ".running")
        self._held: dict[str, int] = {}

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
        self._held[session_id] = fd

    def release(self, session_id: str) -> None:
        fd = self._held.pop(session_id, None)
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self._file(session_id))
        os.close(fd)

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
