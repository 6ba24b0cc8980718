"""Where an installation keeps its state: the active protocol, the plate, the log, calibrations.

``$LIV_HOME`` (default ``$XDG_DATA_HOME/liv`` or ``~/.local/share/liv``) holds:

- ``protocol.yaml``: the installed protocol (``liv protocol install``);
- ``device``: the plate's port or URL (``liv device set``), used when ``--device`` is absent;
- ``calibration/``: one calibration per plate (``liv calibrate``), unless
  ``$LIV_CALIBRATION_DIR`` says otherwise;
- ``liv.db``: the session log, unless ``--db`` or ``$LIV_DB`` says otherwise.

Nothing here ever falls back to a simulated plate: no device configured is an error.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from controller.calibration import CalibrationStore
from firmware_bridge.errors import LivError
from sessions.protocol import PatientProtocol, load_protocol

ENV_HOME = "LIV_HOME"
ENV_DB = "LIV_DB"


class SetupError(LivError):
    """Something the installation lacks (no protocol, no device); the message says what to do."""


@dataclass(frozen=True)
class LivHome:
    root: Path

    @classmethod
    def default(cls) -> LivHome:
        env = os.environ.get(ENV_HOME)
        if env:
            return cls(Path(env))
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return cls(Path(base) / "liv")

    @property
    def protocol_path(self) -> Path:
        return self.root / "protocol.yaml"

    @property
    def device_path(self) -> Path:
        return self.root / "device"

    def db_path(self, override: Path | None = None) -> Path:
        if override is not None:
            return override
        env = os.environ.get(ENV_DB)
        return Path(env) if env else self.root / "liv.db"

    def calibrations(self, override: Path | None = None) -> CalibrationStore:
        if override is not None:
            return CalibrationStore(override)
        env = os.environ.get(CalibrationStore.ENV)
        return CalibrationStore(Path(env) if env else self.root / "calibration")

    def ensure(self) -> None:
        """Create the home directory, private to the user."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    def install_protocol(self, source: Path) -> PatientProtocol:
        """Validate ``source`` completely, then copy it in as the active protocol."""
        protocol = load_protocol(source)
        self.ensure()
        tmp = self.protocol_path.with_suffix(".tmp")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, 0o600)
        tmp.replace(self.protocol_path)
        return protocol

    def protocol(self) -> PatientProtocol:
        if not self.protocol_path.exists():
            raise SetupError(
                f"no protocol is installed in {self.root}: ask your clinic for it, then run "
                "'liv protocol install FILE'"
            )
        return load_protocol(self.protocol_path)

    def set_device(self, url: str) -> None:
        self.ensure()
        self.device_path.write_text(url.strip() + "\n")

    def device(self, override: str | None = None) -> str:
        if override:
            return override
        if self.device_path.exists():
            url = self.device_path.read_text().strip()
            if url:
                return url
        raise SetupError(
            "no plate is configured: connect it and run 'liv device set PORT' "
            "(for example /dev/ttyACM0), or give --device"
        )
