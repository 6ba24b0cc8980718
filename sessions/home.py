"""Where an installation keeps its state: the active protocol, the plate, the log, calibrations.

``resolve_home`` is the one place that decides it, for every command (``liv calibrate`` and
``liv run`` included). The data directory is, first match wins:

1. ``--home DIR`` on the command line;
2. ``$LIV_HOME``;
3. ``$XDG_DATA_HOME/liv`` (when ``XDG_DATA_HOME`` is an absolute path);
4. ``~/.local/share/liv``.

It holds:

- ``clinic-key.pem``: the public key of the clinic this home is enrolled with (``liv enroll``);
  ``enrolment.jsonl`` records every enrolment and every replacement of that key;
- ``protocol.yaml``: the installed protocol (``liv protocol install``), signed by that clinic;
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

A protocol is installed only when the enrolled clinic key signed it (sessions/prescription.py),
and it is checked again every time it is read (``liv start``, ``liv status``, ``liv report``),
so an installed file edited afterwards is refused (docs/trust.md).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from controller.privatefiles import (
    UnsafePathError,
    check_private_dir,
    ensure_private_dir,
    write_private_file,
)
from firmware_bridge.errors import LivError
from firmware_bridge.userdirs import user_data_dir
from sessions.wording import say

# Imported where used: numpy is not needed to read the log (liv status), and the signing library
# and the YAML reader only where a key or a protocol is read (an engineer's open-loop drive reads
# neither: docs/performance.md).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from controller.calibration import CalibrationStore
    from sessions.prescription import SignatureCheck
    from sessions.protocol import PatientProtocol

_log = logging.getLogger(__name__)

ENV_HOME = "LIV_HOME"
ENV_DB = "LIV_DB"
ENV_CALIBRATION_DIR = "LIV_CALIBRATION_DIR"
DEMO_MARKER = "DEMO"  # a file of this name in the home's root makes it a demo home


class SetupError(LivError):
    """Something the installation lacks (no protocol, no device); the message says what to do."""


NOT_ENROLLED_SENTENCE = say("setup.not_enrolled")


@dataclass(frozen=True)
class Enrolment:
    """What ``LivHome.enrol`` did: the key now enrolled and the one it replaced, if any."""

    fingerprint: str
    replaced: str | None
    changed: bool


def default_root() -> Path:
    """The data directory when neither ``--home`` nor ``$LIV_HOME`` names one."""
    return user_data_dir("liv")


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
    def clinic_key_path(self) -> Path:
        return self.root / "clinic-key.pem"

    @property
    def enrolment_history_path(self) -> Path:
        return self.root / "enrolment.jsonl"

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

    def clinic_key(self) -> Ed25519PublicKey | None:
        """The public key of the clinic this home is enrolled with (None: not enrolled)."""
        from sessions.prescription import public_key_from_pem

        self.check()
        try:
            data = self.clinic_key_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return public_key_from_pem(data, str(self.clinic_key_path))
        except LivError as exc:
            _log.warning(
                "the enrolled clinic key %s is damaged (%s): enrol again with "
                "liv enroll FILE --replace", self.clinic_key_path, exc,
            )  # fmt: skip
            raise SetupError(say("setup.key_damaged")) from None

    def enrol(self, key_file: Path, replace: bool = False) -> Enrolment:
        """Enrol this home with the clinic public key in ``key_file``.

        Enrolling again with the same key changes nothing. Another key replaces the enrolled
        one only with ``replace``; every enrolment and replacement is appended to
        ``enrolment.jsonl``. After a replacement the installed protocol (signed by the old key)
        is refused until the new clinic's prescription is installed.
        """
        from sessions.prescription import fingerprint, public_key_pem, read_public_key

        key = read_public_key(key_file)
        new_fp = fingerprint(key)
        try:
            old = self.clinic_key()
            old_fp = None if old is None else fingerprint(old)
        except UnsafePathError:
            raise
        except LivError:  # the enrolled key file is damaged: only --replace may repair it
            old_fp = "a damaged key"
        if old_fp == new_fp:
            return Enrolment(new_fp, None, changed=False)
        if old_fp is not None and not replace:
            _log.warning(
                "home %s is enrolled with clinic key %s, not %s: liv enroll FILE --replace "
                "changes it", self.root, old_fp, new_fp,
            )  # fmt: skip
            raise SetupError(say("setup.other_clinic"))
        self.ensure()
        entry = {
            "at_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "event": "enrolled" if old_fp is None else "replaced",
            "clinic_key": new_fp,
            "replaced_key": old_fp,
            "key_file": str(key_file),
        }
        history = b""
        if self.enrolment_history_path.exists():
            history = self.enrolment_history_path.read_bytes()
        line = json.dumps(entry, sort_keys=True).encode("utf-8") + b"\n"
        # the record is written before the key, so no key is ever enrolled unrecorded
        write_private_file(self.enrolment_history_path, history + line)
        write_private_file(self.clinic_key_path, public_key_pem(key))
        _log.log(
            logging.INFO if old_fp is None else logging.WARNING,
            "home %s %s with clinic key %s (was %s)", self.root, entry["event"], new_fp, old_fp,
        )  # fmt: skip
        return Enrolment(new_fp, old_fp, changed=True)

    def _trusted_protocol(self, data: bytes, source: str) -> PatientProtocol:
        """The protocol in ``data`` if the enrolled clinic key signed exactly these bytes."""
        from sessions.prescription import require_trusted
        from sessions.protocol import protocol_from_bytes

        enrolled = self.clinic_key()
        if enrolled is None:
            _log.warning("home %s has no clinic key: enrol with liv enroll FILE", self.root)
            raise SetupError(NOT_ENROLLED_SENTENCE)
        require_trusted(data, enrolled, source)
        return protocol_from_bytes(data, source)

    def install_protocol(self, source: Path) -> PatientProtocol:
        """Check ``source`` (signature, then every field), then write those same bytes as the
        active protocol."""
        from sessions.protocol import read_protocol_bytes

        data = read_protocol_bytes(source)
        protocol = self._trusted_protocol(data, str(source))
        self.ensure()
        write_private_file(self.protocol_path, data)
        return protocol

    def protocol(self) -> PatientProtocol:
        """The installed protocol, its signature checked again (the file may have been edited)."""
        from sessions.protocol import read_protocol_bytes

        self.check()
        if not self.protocol_path.exists():
            _log.warning(
                "no protocol is installed in %s: install one with liv protocol install FILE",
                self.root,
            )
            raise SetupError(say("setup.no_prescription"))
        return self._trusted_protocol(
            read_protocol_bytes(self.protocol_path), str(self.protocol_path)
        )

    def protocol_signature(self) -> SignatureCheck:
        """The signature of the installed protocol against the enrolled key (for ``status``)."""
        from sessions.prescription import check_signature
        from sessions.protocol import read_protocol_bytes

        return check_signature(read_protocol_bytes(self.protocol_path), self.clinic_key())

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
        _log.warning(
            "no plate is configured in %s: run liv device set PORT (for example "
            "/dev/ttyACM0), or give --device", self.root,
        )  # fmt: skip
        raise SetupError(say("setup.no_plate"))
