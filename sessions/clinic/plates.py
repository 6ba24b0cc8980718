"""The plates the clinic dispensed, and what their countersignatures prove about an export.

The clinic registers each plate it gives out (``liv clinic plate add DEVICE_ID KEYHEX``): its
device id, its Ed25519 public key and the first counter it will vouch with for this clinic
(1 for a new plate). An export's record is taken only when its ``device_voucher`` verifies
under the registered key of its device and the plate's counters continue those the clinic
already holds (docs/clinic.md, "Only what a plate vouches for"). The signature and counter
checks are ``sessions.log.vouch``'s (``Voucher.problem``, ``check_vouchers``); this module only
says which key and which starting point the clinic trusts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from firmware_bridge.countersign import MAX_COUNTER, valid_public_key
from firmware_bridge.errors import LivError
from sessions.clinic.db import ClinicDb, now_utc
from sessions.log.vouch import Pin, TrustResult, Voucher, check_vouchers, key_name
from sessions.protocol import PatientProtocol

_KEY_HEX = re.compile(r"[0-9a-f]{64}")
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,15}")
_CHUNK = 400


class PlateError(LivError):
    """A plate registration the clinic refused: what is wrong and what is allowed."""


@dataclass(frozen=True)
class Plate:
    device_id: str
    device_key: str  # hex
    first_counter: int
    added_utc: str

    @property
    def key_id(self) -> str:
        return key_name(self.device_key)


def add_plate(db: ClinicDb, device_id: str, key_hex: str, first_counter: int = 1) -> Plate:
    """Register a plate's key; the same key again is a no-op, another key for it is refused."""
    if not _DEVICE_ID.fullmatch(device_id):
        raise PlateError(
            f"device id {device_id!r} is not a plate's id: use 1 to 16 letters, digits, '.', '_'"
            " or '-' as the plate reports it (e.g. LIV-0042)"
        )
    key = key_hex.strip().lower()
    if not _KEY_HEX.fullmatch(key) or not valid_public_key(bytes.fromhex(key)):
        raise PlateError(
            "the plate key must be its Ed25519 public key as 64 hexadecimal digits, read from "
            "the plate itself at the clinic (docs/clinic.md)"
        )
    if not 1 <= first_counter <= MAX_COUNTER:
        raise PlateError(f"--first-counter must be a whole number from 1 to {MAX_COUNTER}")
    held = get_plate(db, device_id)
    if held is not None:
        if held.device_key == key:
            return held
        raise PlateError(
            f"plate {device_id} is already registered with another key ({held.key_id}); a "
            "plate's key never changes, so check the device id and the key"
        )
    db.execute(
        "INSERT INTO plates (device_id, device_key, first_counter, added_utc) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (device_id, key, first_counter, now_utc()),
    )
    plate = get_plate(db, device_id)
    assert plate is not None
    if plate.device_key != key:  # another clinician registered it at the same moment
        raise PlateError(f"plate {device_id} was registered with another key ({plate.key_id})")
    return plate


def get_plate(db: ClinicDb, device_id: str) -> Plate | None:
    rows = db.query(
        "SELECT device_id, device_key, first_counter, added_utc FROM plates WHERE device_id = ?",
        (device_id,),
    )
    return (
        Plate(str(rows[0][0]), str(rows[0][1]), int(rows[0][2]), str(rows[0][3])) if rows else None
    )


def list_plates(db: ClinicDb) -> list[Plate]:
    return [
        Plate(str(d), str(k), int(c), str(t))
        for d, k, c, t in db.query(
            "SELECT device_id, device_key, first_counter, added_utc FROM plates ORDER BY device_id"
        )
    ]


def record_prescription(db: ClinicDb, protocol: PatientProtocol, key_fingerprint: str) -> None:
    """Remember a prescription this clinic signed (``liv protocol sign``), by its fingerprint:
    the ``protocol_sha256`` every session run under it carries (docs/trust.md)."""
    db.execute(
        "INSERT INTO prescriptions (sha256, patient_id, key_fingerprint, signed_utc)"
        " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (protocol.sha256, protocol.patient_id, key_fingerprint, now_utc()),
    )


class PlateRegistry:
    """What ``verify_export`` needs from the clinic: registered keys and the counters held."""

    def __init__(self, db: ClinicDb) -> None:
        self._db = db
        self.plates = {p.device_id: p for p in list_plates(db)}

    def held(self, device_key: str, counters: Iterable[int]) -> dict[int, tuple[str, str]]:
        """The clinic's vouchers of this key among ``counters``: counter -> (record_hash, head)."""
        wanted = sorted(set(counters))
        found: dict[int, tuple[str, str]] = {}
        for k in range(0, len(wanted), _CHUNK):
            part = wanted[k : k + _CHUNK]
            marks = ", ".join("?" * len(part))
            for counter, digest, head in self._db.query(
                "SELECT counter, record_hash, head FROM vouchers WHERE device_key = ?"
                f" AND counter IN ({marks})",
                (device_key, *part),
            ):
                found[int(counter)] = (str(digest), str(head))
        return found

    def last_below(self, device_key: str, counter: int) -> tuple[int, str] | None:
        """The clinic's highest counter of this key below ``counter``, with its head."""
        rows = self._db.query(
            "SELECT counter, head FROM vouchers WHERE device_key = ? AND counter < ?"
            " ORDER BY counter DESC LIMIT 1",
            (device_key, counter),
        )
        return (int(rows[0][0]), str(rows[0][1])) if rows else None


@dataclass(frozen=True)
class VoucherRefusal:
    """Why a file's vouchers do not let the clinic take it: the sentence and a problem kind."""

    sentence: str
    kind: str  # "unvouched", "unregistered", "gap", "conflict"


def check_export_vouchers(
    records: Iterable[tuple[Mapping[str, Any], Voucher | None]], registry: PlateRegistry
) -> VoucherRefusal | None:
    """The first reason the clinic cannot take these records on their plates' word, or None.

    ``records`` are (raw record, its voucher) of one file, in any order.
    """
    by_key: dict[str, list[tuple[Voucher, str, str, str, Any]]] = {}
    devices: dict[str, str] = {}
    for raw, voucher in records:
        device_id = str(raw["device_id"])
        where = f"record {raw['chain_index']} of log {raw['log_id']} (session {raw['session_id']})"
        plate = registry.plates.get(device_id)
        if plate is None:
            return VoucherRefusal(
                f"plate {device_id} is not registered with this clinic; register the plate's key "
                f"with 'liv clinic plate add {device_id} KEYHEX', then import the file again, "
                "only if the clinic dispensed this plate and with the key read from the plate "
                "itself (a key taken from this file or the patient's computer could be any "
                "program's)",
                "unregistered",
            )
        if voucher is None:
            return VoucherRefusal(
                f"{where} carries no countersignature of plate {device_id}: the plate never "
                "vouched for it (written without the plate, or forged)",
                "unvouched",
            )
        if voucher.device_key != plate.device_key:
            return VoucherRefusal(
                f"{where} is vouched for by plate key {key_name(voucher.device_key)}, not by the "
                f"key registered for plate {device_id} ({plate.key_id}): signed by another plate",
                "unvouched",
            )
        devices[voucher.device_key] = device_id
        by_key.setdefault(voucher.device_key, []).append(
            (
                voucher,
                str(raw["record_hash"]),
                device_id,
                str(raw["session_id"]),
                raw["chain_index"],
            )
        )
    for key, rows in sorted(by_key.items()):
        rows.sort(key=lambda row: row[0].counter)
        device_id = devices[key]
        plate = registry.plates[device_id]
        held = registry.held(key, [row[0].counter for row in rows])
        for voucher, digest, _, session_id, _ in rows:
            mine = held.get(voucher.counter)
            if mine is not None and mine[0] != digest:
                return VoucherRefusal(
                    f"session {session_id} (counter {voucher.counter} of plate {device_id}) "
                    "conflicts with the clinic's record of that counter: the plate vouched for "
                    "another record there (a rolled-back or forked log)",
                    "conflict",
                )
        first = rows[0][0]
        start = plate.first_counter
        last_held = registry.last_below(key, first.counter)
        if last_held is not None and last_held[0] >= start:
            # the file continues the records of this plate the clinic holds: from the next
            # counter, after the head the clinic holds (else check_vouchers names the gap)
            start = last_held[0] + 1
            if first.counter == start and first.prev_head != last_held[1]:
                return VoucherRefusal(
                    f"plate {device_id}: counter {first.counter} does not follow the plate's "
                    f"record {last_held[0]} the clinic holds (heads differ)",
                    "gap",
                )
        result = TrustResult()
        check_vouchers(rows, {device_id: Pin(device_id, key, start)}, result)
        if not result.ok:
            problem = result.problems[0]
            gap = "missing" in problem or "repeats" in problem
            more = (
                f" (and {result.problem_count - 1} more problem(s))"
                if result.problem_count > 1
                else ""
            )
            return VoucherRefusal(
                f"plate {device_id}: {problem}{more}", "gap" if gap else "unvouched"
            )
    return None
