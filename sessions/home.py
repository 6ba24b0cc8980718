"""Where an installation keeps its state: the active protocol, the plate, the log, calibrations.

``resolve_home`` is the one place that decides it, for every command (``liv calibrate`` and
``liv run`` included). The data directory is, first match wins:

1. ``--home DIR`` on the command line;
2. ``$LIV_HOME``;
3. ``$XDG_DATA_HOME/liv`` (when ``XDG_DATA_HOME`` is an absolute path);
4. ``~/.local/share/liv``.

It holds:

- ``protocol.yaml``: the installed protocol (``liv protocol install``);
- ``device``: the plate's port or URL (``liv device set``), used when ``--device`` is absent;
- ``calibration/``: one calibration per plate (``liv calibrate``);
- ``liv.db``: the session log;
- ``DEMO``: present only in a demo's home (``liv demo``): there simulated sessions count in the
  figures, and every output says "demo: simulated sessions, not therapy" (``is_demo``).

``--db FILE`` and ``--calibration-dir DIR`` move one part elsewhere for one command. Without
``--home``, ``$LIV_DB`` and ``$LIV_CALIBRATION_DIR`` do the same from the environment; an
explicit ``--home`` means that home's own log and calibrations.

The directory must belong to the user and be writable by nobody else (mode 700): a home that
other users could change is refused, with the command that fixes it. Its files are replaced
atomically and never written through a symbolic link (controller/privatefiles.py).

Nothing here ever falls back to a simulated plate: no device configured is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from controller.privatefiles import (
    check_private_dir,
    ensure_private_dir,
    write_private_file,
)
from firmware_bridge.errors import LivError
from sessions.protocol import MAX_TEXT_CHARS, PatientProtocol, load_protocol, parse_protocol

if TYPE_CHECKING:  # imported where used: numpy is not needed to read the log (liv status)
    from controller.calibration import CalibrationStore

ENV_HOME = "LIV_HOME"
ENV_DB = "LIV_DB"
ENV_CALIBRATION_DIR = "LIV_CALIBRATION_DIR"
ENV_XDG_DATA_HOME = "XDG_DATA_HOME"
DEMO_MARKER = "DEMO"  # a file of this name in the home's root makes it a demo home


class SetupError(LivError):
    """Something the installation lacks (no protocol, no device); the message says what to do."""


def default_root() -> Path:
    """The data directory when neither ``--home`` nor ``$LIV_HOME`` names one."""
    xdg = os.environ.get(ENV_XDG_DATA_HOME, "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "liv"


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> LivHome:
    """The installation every command uses: ``--home``, else ``$LIV_HOME``, else the default."""
    if explicit:
        return LivHome(Path(explicit).expanduser())
    env_home = os.environ.get(ENV_HOME, "")
    root = Path(env_home).expanduser() if env_home else default_root()
    env_db = os.environ.get(ENV_DB, "")
    env_cal = os.environ.get(ENV_CALIBRATION_DIR, "")
    return LivHome(
        root,
        db=Path(env_db).expanduser() if env_db else None,
        calibration_dir=Path(env_cal).expanduser() if env_cal else None,
    )


@dataclass(frozen=True)
class LivHome:
    """One installation's directory; ``db`` and ``calibration_dir`` default to inside it."""

    root: Path
    db: Path | None = None
    calibration_dir: Path | None = None

    @property
    def protocol_path(self) -> Path:
        return self.root / "protocol.yaml"

    @property
    def device_path(self) -> Path:
        return self.root / "device"

    @property
    def is_demo(self) -> bool:
        """A demo home (a file ``DEMO`` in its root): simulated sessions count, labelled so."""
        return (self.root / DEMO_MARKER).is_file()

    def db_path(self, override: Path | None = None) -> Path:
        if override is not None:
            return override
        return self.db if self.db is not None else self.root / "liv.db"

    def calibrations(self, override: Path | None = None) -> CalibrationStore:
        from controller.calibration import CalibrationStore

        if override is not None:
            return CalibrationStore(override)
        where = self.calibration_dir
        return CalibrationStore(where if where is not None else self.root / "calibration")

    def check(self) -> None:
        """Refuse a home other users could change (an absent home is fine)."""
        check_private_dir(self.root)

    def ensure(self) -> None:
        """Create the home directory, private to the user, and check that it is."""
        ensure_private_dir(self.root)

    def install_protocol(self, source: Path) -> PatientProtocol:
        """Validate ``source`` completely, then write those same bytes as the active protocol."""
        load_protocol(source)  # every problem, with its line, in the file's own name
        with source.open("rb") as stream:
            data = stream.read(MAX_TEXT_CHARS * 4 + 1)
        # what is written is what was checked, even if the file changed in between
        protocol = parse_protocol(data.decode("utf-8-sig", errors="replace"), str(source))
        self.ensure()
        write_private_file(self.protocol_path, data)
        return protocol

    def protocol(self) -> PatientProtocol:
        self.check()
        if not self.protocol_path.exists():
            raise SetupError(
                f"no protocol is installed in {self.root}: ask your clinic for it, then run "
                "'liv protocol install FILE'"
            )
        return load_protocol(self.protocol_path)

    def set_device(self, url: str) -> None:
        self.ensure()
        write_private_file(self.device_path, (url.strip() + "\n").encode("utf-8"))

    def device(self, override: str | None = None) -> str:
        if override:
            return override
        self.check()
        if self.device_path.exists():
            url = self.device_path.read_text().strip()
            if url:
                return url
        raise SetupError(
            "no plate is configured: connect it and run 'liv device set PORT' "
            "(for example /dev/ttyACM0), or give --device"
        )
