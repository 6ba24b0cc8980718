"""Shared helpers for tests that drive the simulated plate."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import hil_tests.plate
from controller.estimation import fit_sine
from firmware_bridge.client import DeviceClient
from firmware_bridge.protocol import Message
from sessions.home import LivHome
from sessions.prescription import public_key_pem, sign_protocol_bytes
from sessions.protocol import PatientProtocol

# The order protocol fields are written in; a field given that is not listed here follows them.
PROTOCOL_FIELDS = (
    "patient_id",
    "target_g",
    "frequency_hz",
    "frequency_schedule",
    "minutes_per_session",
    "sessions_per_day",
    "min_gap_hours",
    "study_start",
    "study_end",
    "timezone",
)


def protocol_yaml(**fields: object) -> str:
    """A protocol file's text, one `key: value` line per field, each value written as given.

    Defaults: P-0123, 0.3 g at 45 Hz, 1 min twice a day 3 h apart, a study from 10 days before
    today (UTC) to 100 days after, in UTC. A field set to None is left out.
    """
    today = datetime.now(UTC).date()
    values: dict[str, object] = {
        "patient_id": "P-0123",
        "target_g": 0.3,
        "frequency_hz": 45,
        "minutes_per_session": 1,
        "sessions_per_day": 2,
        "min_gap_hours": 3,
        "study_start": (today - timedelta(days=10)).isoformat(),
        "study_end": (today + timedelta(days=100)).isoformat(),
        "timezone": "UTC",
        **fields,
    }
    order = [k for k in PROTOCOL_FIELDS if k in values] + [
        k for k in values if k not in PROTOCOL_FIELDS
    ]
    return "".join(f"{k}: {values[k]}\n" for k in order if values[k] is not None)


# --- signed prescriptions (docs/trust.md) -------------------------------------------------------
#
# Every test that installs a protocol does it as a clinic would: the home is enrolled with the
# test clinic's public key and the protocol is signed with its private key. One key serves the
# whole test session (made once, in memory; never a real clinic's).


@functools.cache
def clinic_signing_key() -> Ed25519PrivateKey:
    """The test session's clinic signing key."""
    return Ed25519PrivateKey.generate()


def clinic_public_key_file(directory: Path) -> Path:
    """The test clinic's public key written as a file in ``directory`` (for ``liv enroll``)."""
    path = directory / "test-clinic-public.pem"
    path.write_bytes(public_key_pem(clinic_signing_key().public_key()))
    return path


def sign_text(text: str | bytes, key: Ed25519PrivateKey | None = None) -> bytes:
    """A protocol text signed by the test clinic (or by ``key``), as a signed file's bytes."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return sign_protocol_bytes(data, key or clinic_signing_key())


def write_signed(path: Path, text: str | bytes) -> Path:
    """Write ``text`` signed by the test clinic to ``path``."""
    path.write_bytes(sign_text(text))
    return path


def enrol_home(home: LivHome | Path) -> LivHome:
    """Enrol ``home`` with the test clinic's public key (idempotent)."""
    home = home if isinstance(home, LivHome) else LivHome(Path(home))
    home.ensure()
    home.enrol(clinic_public_key_file(home.root.parent))
    return home


def signed_protocol(home: LivHome | Path, text: str | None = None, **fields: object) -> Path:
    """Enrol ``home`` and write a protocol signed by the test clinic beside it.

    The protocol is ``text`` when given, else ``protocol_yaml(**fields)``; the path returned is
    ready for ``liv protocol install``.
    """
    home = enrol_home(home)
    path = home.root.parent / f"{home.root.name}-protocol.signed.yaml"
    return write_signed(path, protocol_yaml(**fields) if text is None else text)


def install_signed(
    home: LivHome | Path, text: str | None = None, **fields: object
) -> PatientProtocol:
    """Enrol ``home``, sign the protocol (``text`` or ``protocol_yaml(**fields)``), install it."""
    home = home if isinstance(home, LivHome) else LivHome(Path(home))
    return home.install_protocol(signed_protocol(home, text, **fields))


def calibrate_empty_plate(directory: Path, device_id: str) -> Path:
    """``directory`` holding the calibration of the empty simulated plate ``device_id``."""
    from controller.calibration import CalibrationStore, identify

    with DeviceClient.open(f"sim://?speed=max&mass=0&seed=1&device_id={device_id}") as device:
        CalibrationStore(directory).save(identify(device))
    return directory


def load_truth(path: Path) -> dict[str, Any]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def run_blocks(client: DeviceClient, seconds: float) -> list[Any]:
    """Read blocks for ``seconds`` of device time (the client keeps sending heartbeats)."""
    return list(client.read_for(seconds))


def listen_silently(client: DeviceClient, seconds: float) -> list[Message]:
    """Read the raw stream for ``seconds`` of device time without sending anything."""
    return hil_tests.plate.listen_silently(client, seconds).messages


def truth_drive_phase(truth: dict[str, Any]) -> np.ndarray:
    """Drive phase (up to a constant) of every truth sample, from its frequency history."""
    fs = float(truth["sample_rate_hz"])
    return 2.0 * np.pi * np.cumsum(truth["freq_hz"].astype(np.float64)) / fs


def truth_amplitude(truth: dict[str, Any], mask: np.ndarray) -> float:
    """True peak acceleration at the drive frequency over the masked samples (sine fit).

    Fits gravity-free truth with free phase, so the unknown phase constant does not matter.
    """
    return fit_sine(truth["accel_g"][mask], truth_drive_phase(truth)[mask]).peak_g


def exposure_time(truth: dict[str, Any], start_index: int) -> np.ndarray:
    """Exposure time of every truth sample (NaN where the device was not streaming)."""
    fs = float(truth["sample_rate_hz"])
    index = truth["sample_index"].astype(np.float64)
    index[truth["sample_index"] < 0] = np.nan
    return (index - start_index) / fs


def truth_envelope(
    truth: dict[str, Any], t_exposure: np.ndarray, start_s: float, end_s: float, step_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """True amplitude in consecutive windows of ``step_s`` between two exposure times."""
    starts = np.arange(start_s, end_s - step_s / 2, step_s)
    amps = np.array(
        [truth_amplitude(truth, (t_exposure >= s) & (t_exposure < s + step_s)) for s in starts]
    )
    return starts + step_s / 2, amps


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> bool:
    """Read ``proc``'s stderr (raw, unbuffered) until it holds ``needle``; False on timeout."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return False
            seen += chunk
            if needle.encode() in seen:
                return True
    return False


PROBE_DRIVE = 0.02  # small enough for any simulated plate to stay far below its ceiling


def measured_g_per_drive(query: str, freq_hz: float, truth_path: Path) -> float:
    """The simulated plate's true response at ``freq_hz``, g per unit drive, from a probe.

    ``query`` is the sim URL's query (without ``truth``); the probe runs on a fresh plate of the
    same kind and is judged from its truth file, so tests pick drives from the plant as it is.
    """
    with DeviceClient.open(f"sim://?{query}&truth={truth_path}") as device:
        device.set_frequency(freq_hz)
        device.start_output()
        device.set_drive(PROBE_DRIVE, 0.1)
        device.read_for(0.6)
        end_index = device.sample_index
    truth = load_truth(truth_path)
    fs = float(truth["sample_rate_hz"])
    index = truth["sample_index"]
    settled = (index >= end_index - 0.3 * fs) & (index < end_index)
    return truth_amplitude(truth, settled) / PROBE_DRIVE


def downgrade_log(conn: sqlite3.Connection, version: int) -> None:
    """Undo the log's migrations above ``version`` on ``conn`` (autocommit), as if an older
    program had written it: its records keep the columns' values they have (NULL where the
    older schema had no column, so write them with an older program's fields only)."""
    from sessions.log.storage import _SCHEMA_V1

    if version < 6:  # the plate's countersignatures
        for trigger in ("vouchers_never_change", "vouchers_never_deleted",
                        "unvouched_never_deleted", "meta_never_deleted"):  # fmt: skip
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        conn.execute("DROP TABLE IF EXISTS vouchers")
        conn.execute("DROP TABLE IF EXISTS unvouched")
        conn.execute("DELETE FROM meta WHERE key = 'vouched_from_index'")
        conn.execute(_SCHEMA_V1[-1])  # meta_never_deleted, as schema 1 made it
    if version < 5:
        conn.execute("DROP TABLE IF EXISTS envelope_chunks")
    if version < 4:  # kind, and the summary index rebuilt with it
        conn.execute("DROP INDEX IF EXISTS sessions_day_minutes")
        conn.execute("ALTER TABLE sessions DROP COLUMN kind")
        if version >= 2:
            conn.execute(
                "CREATE INDEX sessions_day_minutes ON sessions "
                "(patient_id, local_date, slot, started_utc, session_id, minutes_at_dose)"
            )
    if version < 3:
        conn.execute("ALTER TABLE sessions DROP COLUMN error_uncertainty_pct")
    if version < 2:
        conn.execute("DROP INDEX IF EXISTS sessions_day_minutes")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))


def vouch_all(home: LivHome | Path, device_id: str) -> None:
    """Pair ``home`` with a simulated plate named ``device_id`` and have it countersign every
    finished record of that plate in the home's log, as a session on it would have: for test
    histories written straight into the log (docs/trust.md, "The session record")."""
    from firmware_bridge.client import DeviceClient
    from sessions.log import PINS_FILE, DevicePins, SessionLog
    from sessions.runner import PlateVoucher

    home = home if isinstance(home, LivHome) else LivHome(Path(home))
    with (
        DeviceClient.open(f"sim://?speed=max&device_id={device_id}") as device,
        SessionLog(home.db_path()) as log,
    ):
        voucher, why = PlateVoucher.connect(
            device, log, DevicePins(home.root / PINS_FILE), lambda _text: None
        )
        assert voucher is not None, why


@contextlib.contextmanager
def sim_served(where: list[str], url: str) -> Iterator[str]:
    """``liv sim serve`` of ``url`` in its own process; yields the first line it prints (the
    address, unchecked) and, once closed, requires a clean exit without a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessions.cli", "sim", "serve", *where, "--sim", url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
