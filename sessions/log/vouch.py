"""What the plate vouches for: device key pins, countersignature rows and their verification.

A finished record's ``record_hash`` is the digest the plate countersigns (protocol 2.1,
docs/protocol.md 9.8). The countersignature is kept beside the record (table ``vouchers``, never
part of the record's own hash) and checked here:

- each signature verifies over the record's current ``record_hash`` with the key it names, so an
  edited or re-chained record is caught even when its hash chain was recomputed;
- per device key the counters run on without a gap from the first one the home paired at, and
  each ``prev_head`` is the head before it, so a record deleted from the middle is caught;
- the key is the one this home pinned for the plate (``device_keys.json`` in the home), so a log
  vouched by another plate (a replaced log, a fabricated import) is caught;
- with the plate connected, the log's last counter and head equal the plate's, so deleting the
  last records, truncating, emptying or rolling back the log is caught.

docs/trust.md, "The session record" says what this proves and what it cannot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.privatefiles import write_private_file
from firmware_bridge.countersign import (
    GENESIS_HEAD,
    key_id,
    signature_problem,
)
from sessions.log.records import _HEX64, LogError, LogErrorReason

_log = logging.getLogger(__name__)

AWAITING_REASON = "awaiting the plate's countersignature (recorded, not yet vouched for)"
LEGACY_TEXT = "not vouched for (recorded before device signatures)"
PINS_FILE = "device_keys.json"
GENESIS_HEX = GENESIS_HEAD.hex()
MAX_PROBLEMS = 20  # problems listed by a verification; the count goes on beyond


def device_id_raw(device_id: str) -> bytes:
    """The 16-byte HELLO form of a device id, as the plate signs it."""
    return device_id.encode("ascii", errors="replace")[:16].ljust(16, b"\x00")


@dataclass(frozen=True)
class Voucher:
    """One record's countersignature as stored: the plate's key, counter, heads, signature."""

    device_key: str  # hex of the Ed25519 public key
    counter: int
    prev_head: str  # hex
    head: str  # hex
    signature: str  # hex

    def to_json(self) -> dict[str, Any]:
        return {
            "device_key": self.device_key,
            "counter": self.counter,
            "prev_head": self.prev_head,
            "head": self.head,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Voucher:
        """A voucher from an import file; ValueError naming what is wrong."""
        if not isinstance(obj, dict) or set(obj) != {
            "device_key",
            "counter",
            "prev_head",
            "head",
            "signature",
        }:
            raise ValueError(
                "device_voucher must be an object with device_key, counter, prev_head, head and "
                "signature"
            )
        counter = obj["counter"]
        if type(counter) is not int or not 1 <= counter <= 0xFFFFFFFF:
            raise ValueError(f"device_voucher counter {counter!r} is not a whole number 1..2**32-1")
        for name in ("device_key", "prev_head", "head"):
            if not isinstance(obj[name], str) or not _HEX64.fullmatch(obj[name]):
                raise ValueError(f"device_voucher {name} must be 64 lowercase hex digits")
        signature = obj["signature"]
        if not isinstance(signature, str) or len(signature) != 128 or not _is_hex(signature):
            raise ValueError("device_voucher signature must be 128 lowercase hex digits")
        return cls(obj["device_key"], counter, obj["prev_head"], obj["head"], signature)

    def problem(self, record_hash: str, device_id: str) -> str | None:
        """Why this voucher does not vouch for a record with ``record_hash``, or None."""
        try:
            digest = bytes.fromhex(record_hash)
        except ValueError:
            return "its record_hash is not hexadecimal"
        return signature_problem(
            bytes.fromhex(self.device_key),
            device_id_raw(device_id),
            self.counter,
            digest,
            bytes.fromhex(self.prev_head),
            bytes.fromhex(self.head),
            bytes.fromhex(self.signature),
        )


def key_name(device_key: str) -> str:
    """The short printable id of a hex device key (sessions show it, pins name it)."""
    return key_id(bytes.fromhex(device_key))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Pin:
    """The key a home paired with a plate, and the first counter it expects in its log."""

    device_id: str
    device_key: str  # hex
    first_counter: int

    @property
    def key_id(self) -> str:
        return key_id(bytes.fromhex(self.device_key))


class DevicePins:
    """The plates' public keys a home trusts: ``device_keys.json``, private to the user.

    Pinned at first use (``liv device set``, the first session, ``liv import --device-key``);
    a different key for the same plate is refused until re-paired explicitly.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> dict[str, Pin]:
        if not self.path.exists():
            return {}
        try:
            obj = json.loads(self.path.read_text(encoding="utf-8"))
            return {
                device_id: Pin(device_id, str(v["device_key"]), int(v["first_counter"]))
                for device_id, v in obj.items()
            }
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise LogError(
                f"The paired plates' keys in {self.path} cannot be read ({exc}); re-pair the "
                "plate with 'liv device set URL --re-pair'.",
                reason=LogErrorReason.CORRUPT,
                path=self.path,
            ) from None

    def get(self, device_id: str) -> Pin | None:
        return self.all().get(device_id)

    def pin(self, device_id: str, device_key: bytes, first_counter: int) -> Pin:
        pins = self.all()
        pin = Pin(device_id, device_key.hex(), first_counter)
        pins[device_id] = pin
        data = {
            p.device_id: {"device_key": p.device_key, "first_counter": p.first_counter}
            for p in pins.values()
        }
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private_file(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        _log.info("pinned plate %s key %s", device_id, pin.key_id)
        return pin


@dataclass(frozen=True)
class PlateState:
    """What a connected plate's IDENTITY said."""

    device_id: str
    device_key: str  # hex
    counter: int
    head: str  # hex


@dataclass
class TrustResult:
    """Outcome of checking what the plate vouches for (:meth:`SessionStore.verify_vouchers`)."""

    problems: list[str] = field(default_factory=list)
    problem_count: int = 0
    vouched: int = 0
    legacy: int = 0
    unvouched: int = 0
    last: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (counter, head)
    plate_checked: bool = False

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, problem: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(problem)


def check_vouchers(
    rows: Iterable[tuple[Voucher, str, str, str, Any]],
    pins: dict[str, Pin],
    result: TrustResult,
) -> None:
    """Check vouchers ordered by (device_key, counter); rows are (voucher, record_hash,
    device_id, session_id, chain_index). Streams: one row at a time, per key only the last."""
    key: str | None = None
    expected = 0
    head = GENESIS_HEAD.hex()
    pinned_keys = {p.device_key: p for p in pins.values()}
    for voucher, digest, device_id, session_id, chain_index in rows:
        where = f"record {chain_index} (session {session_id})"
        if voucher.device_key != key:
            key = voucher.device_key
            pin = pinned_keys.get(key)
            expected = pin.first_counter if pin is not None else 1
            # a plate paired after it vouched for another home's records: its first head here
            # is whatever it had then
            head = voucher.prev_head if expected > 1 else GENESIS_HEAD.hex()
        result.vouched += 1
        problem = voucher.problem(digest, device_id)
        if problem is not None:
            result.add(f"{where}: {problem} (the record was changed after the plate signed it)")
        pin = pins.get(device_id)
        if pins and (pin is None or pin.device_key != voucher.device_key):
            result.add(
                f"{where} is vouched for by plate key {key_id(bytes.fromhex(voucher.device_key))}"
                f", which this home never paired with {device_id} (a replaced or foreign log)"
            )
        if voucher.counter < expected:
            result.add(f"{where} repeats the plate's counter {voucher.counter}")
        elif voucher.counter > expected:
            missing = (
                f"{expected}"
                if voucher.counter == expected + 1
                else f"{expected}-{voucher.counter - 1}"
            )
            result.add(
                f"the plate's record(s) {missing} before {where} are missing from the log (deleted)"
            )
        elif voucher.prev_head != head:
            result.add(f"{where} does not follow the plate's previous head (records swapped)")
        expected = voucher.counter + 1
        head = voucher.head
        result.last[key] = (voucher.counter, voucher.head)


def check_plate(plate: PlateState, pins: dict[str, Pin], result: TrustResult) -> None:
    """Compare the log's last counter and head for this plate with the plate's own."""
    result.plate_checked = True
    pin = pins.get(plate.device_id)
    if pin is not None and pin.device_key != plate.device_key:
        result.add(
            f"the plate connected ({plate.device_id}, key "
            f"{key_id(bytes.fromhex(plate.device_key))}) is not the one this home paired with "
            f"(key {pin.key_id})"
        )
        return
    first = pin.first_counter if pin is not None else 1
    counter, head = result.last.get(plate.device_key, (first - 1, GENESIS_HEAD.hex()))
    if plate.counter > counter:
        held = "none" if counter < first else f"up to {counter}"
        result.add(
            f"the plate has vouched for records up to {plate.counter} but the log holds {held}: "
            "the last records were deleted, or the log was emptied, replaced or restored from an "
            "older copy"
        )
    elif plate.counter < counter:
        result.add(
            f"the log holds records numbered up to {counter}, beyond the plate's counter "
            f"{plate.counter} (forged records)"
        )
    elif counter >= first and head != plate.head:
        result.add("the log's last vouched record is not the plate's last (heads differ)")
