"""Private files of an installation: written whole, never through a link, in a private directory.

The small files a plate's installation keeps (the active protocol, the configured plate, the
calibrations) decide what dose a patient receives, so:

- a directory that holds them must belong to the user running ``liv`` and be writable by
  nobody else (anyone who can write there can replace the prescription);
- a file is written to ``NAME.tmp`` in the same directory (created exclusively, never
  following a link), flushed to disk, then renamed over ``NAME``: a reader sees the old file
  or the new one, never half of one, and a planted symbolic link at either name is refused
  instead of being written through.

::

    LivError
    └── UnsafePathError   a directory or file that is not private; the message says the fix
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from firmware_bridge.errors import LivError

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class UnsafePathError(LivError):
    """A directory or file that other users could change, or a link where a file should be."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


def check_private_dir(directory: Path) -> None:
    """Refuse ``directory`` if another user owns it or may write to it (absent is fine)."""
    try:
        info = directory.stat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafePathError(directory, f"{directory} is not a directory: move it away")
    if info.st_uid != os.geteuid():
        raise UnsafePathError(
            directory,
            f"{directory} belongs to another user (uid {info.st_uid}), so its data cannot be "
            "trusted: use a directory of your own",
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafePathError(
            directory,
            f"{directory} can be changed by other users (mode {stat.S_IMODE(info.st_mode):o}): "
            f"run 'chmod 700 {directory}' and try again",
        )


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` and any missing parent (mode 700), then check that it is private."""
    missing: list[Path] = []
    for path in (directory, *directory.parents):
        if path.exists():
            break
        missing.append(path)
    for path in reversed(missing):
        path.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    check_private_dir(directory)


def _refuse_link(path: Path) -> bool:
    """Raise if ``path`` is a symbolic link or not a regular file; True if it exists."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(
            path,
            f"refusing to write {path}: it is a symbolic link (to {os.readlink(path)}), which "
            "could send the write anywhere; remove the link and try again",
        )
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(path, f"refusing to write {path}: it is not a regular file")
    return True


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (mode 600), never following a link."""
    ensure_private_dir(path.parent)
    _refuse_link(path)
    tmp = path.with_name(path.name + ".tmp")
    if _refuse_link(tmp):
        tmp.unlink()  # left by a write that crashed: a regular file of ours
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, PRIVATE_FILE_MODE)
    except FileExistsError:
        raise UnsafePathError(
            tmp, f"refusing to write {path}: {tmp} appeared while writing; try again"
        ) from None
    try:
        _write_and_sync(fd, data)
        _refuse_link(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_dir(path.parent)


def write_new_file(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Create ``path`` with ``data`` (durably); never replaces a file and never follows a link.

    Raises FileExistsError when ``path`` exists (a link included): for files made once, such as
    a key pair, that must never be overwritten.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    _write_and_sync(os.open(path, flags, mode), data)
    _sync_dir(path.parent)


def _write_and_sync(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, fsync it and close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(directory: Path) -> None:
    """Make the rename durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
