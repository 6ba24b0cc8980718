"""``liv verify``, ``liv export`` and ``liv import``: the log's integrity and its exchange."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from sessions.adherence import DEMO_LABEL
from sessions.cli.errors import UsageError
from sessions.commands import EXPORT_FORMATS
from sessions.commands.common import ReportError, home_of, open_log, pins_of, print_json
from sessions.home import LivHome, SetupError
from sessions.log import (
    LogError,
    LogErrorReason,
    Pin,
    PlateState,
    SessionLog,
    TrustResult,
    VerifyResult,
)
from sessions.log.clockorder import SetBack, set_back_ids
from sessions.text import echo, terminal_line

_log = logging.getLogger(__name__)

# What no check on the patient's computer alone can see: the log, its pins and its meta rows are
# all the computer's to rewrite (docs/trust.md, "What an attacker ... can still do").
UNSEEN_OFFLINE = (
    "records deleted from the end, or the whole log re-signed after the plate's pairing was "
    "changed, can only be detected with the plate connected, or at the clinic"
)


def _plate_state(args: argparse.Namespace, home: LivHome) -> tuple[PlateState | None, str]:
    """The connected plate's IDENTITY for verify, or None and why not (one phrase)."""
    url = getattr(args, "device", None)
    if not url and not getattr(args, "no_device", False):
        with contextlib.suppress(SetupError, OSError):
            url = home.device()
    if not url:
        return None, "no plate given"
    from firmware_bridge.client import DeviceClient
    from firmware_bridge.errors import BridgeError

    try:
        with DeviceClient.open(url) as device:
            if not device.can_countersign:
                return None, "the plate does not countersign records"
            identity = device.identity()
    except BridgeError as exc:
        if getattr(args, "device", None):
            raise
        _log.info("verify without the plate: %s", exc)
        return None, "the plate is not connected"
    plate = PlateState(
        identity.device_id, identity.public_key.hex(), identity.counter, identity.head.hex()
    )
    return plate, ""


def cmd_verify(args: argparse.Namespace) -> int:
    """Check the hash chains, what the plate vouches for and, connected, the plate's counter."""
    home = home_of(args)
    plate, no_plate = _plate_state(args, home)
    with open_log(args, home, read_only=True) as log:
        result, trust = log_integrity(log, home, plate)
        log_set_back = log.set_back() if result.ok else {}
    if getattr(args, "json", False):
        from sessions.jsonshapes import verification_shape

        ids = set_back_ids(log_set_back) if result.ok else None
        print_json(verification_shape(result, trust, plate is not None, ids))
        return 0 if result.ok and trust is not None and trust.ok else 1
    if home.is_demo:
        echo(DEMO_LABEL.upper())
    if not result.ok:
        bad = result.first_bad
        assert bad is not None
        echo(
            f"LOG CHANGED: record {bad.chain_index} ({terminal_line(bad.session_id)}) of chain "
            f"{terminal_line(bad.chain)}: {terminal_line(bad.what)}",
            file=sys.stderr,
        )
        return 1
    assert trust is not None
    if not trust.ok:
        more = trust.problem_count - 1
        also = f" ({more} more problem{'s' if more != 1 else ''}, see -v)" if more else ""
        for problem in trust.problems:
            _log.warning("verify: %s", problem)
        echo(
            f"LOG NOT VOUCHED FOR BY THE PLATE: {terminal_line(trust.problems[0])}{also}.",
            file=sys.stderr,
        )
        _say_set_back(log_set_back)
        return 1
    parts = [f"log verified: {result.records_checked} finished records, every chain intact"]
    if trust.vouched:
        parts.append(f"{trust.vouched} vouched for by the plate")
    if trust.legacy:
        parts.append(f"{trust.legacy} recorded before device signatures (not vouched for)")
    if plate is not None:
        parts.append(f"the plate's counter {plate.counter} matches the log")
    elif trust.vouched or trust.legacy:
        parts.append(f"{no_plate}: {UNSEEN_OFFLINE} (liv verify --device URL)")
    echo("; ".join(parts))
    _say_set_back(log_set_back)
    return 0


def _say_set_back(found: Mapping[str, SetBack]) -> None:
    """Verify's warning for records dated before one recorded before them (a clock set back):
    the log is intact, so verify still succeeds; what was seen goes to the log (-v) too."""
    if not found:
        return
    ordered = sorted(found.values(), key=lambda b: (b.log_id, b.chain_index or 0))
    for item in ordered:
        _log.warning("verify: %s", item.detail())
    first = ordered[0]
    more = f" and {len(ordered) - 1} more (see -v)" if len(ordered) > 1 else ""
    dated = first.started_utc.isoformat(timespec="minutes")
    earlier = first.earlier_ended_utc.isoformat(timespec="minutes")
    echo(
        f"CLOCK SET BACK: {len(ordered)} session(s) are dated earlier than a session recorded "
        f"before them, so the computer's clock was set back when they ran (first: record "
        f"{first.chain_index}, session {terminal_line(first.session_id)}, dated {dated}, before "
        f"session {terminal_line(first.earlier_session)} ended at {earlier}{more}). They are "
        "kept but not counted for the day they show; set the computer's clock to the right "
        "time (automatic time).",
        file=sys.stderr,
    )


def log_integrity(
    log: SessionLog, home: LivHome, plate: PlateState | None = None
) -> tuple[VerifyResult, TrustResult | None]:
    """The log's hash chains and, when they hold, what the plate vouches for (with ``plate``,
    against its counter and head too): what verify, every report and every export state."""
    pins = pins_of(home).all()
    result = log.verify()
    trust = log.verify_vouchers(pins, plate) if result.ok else None
    if trust is not None and trust.vouched and not pins:
        trust.add("no plate is paired with this home, so nobody vouches for whose key signed")
    return result, trust


def _integrity_ok(result: VerifyResult, trust: TrustResult | None) -> bool:
    return result.ok and (trust is None or trust.ok)


def _integrity_text(result: VerifyResult, trust: TrustResult | None = None) -> str:
    """The log's verification status in one CSV cell."""
    if result.ok and trust is not None and not trust.ok:
        first = trust.problems[0] if trust.problems else "a countersignature does not hold"
        return f"NOT VOUCHED FOR by the plate: {first}"
    if result.ok:
        offline = trust is not None and not trust.plate_checked
        return (
            f"verified{' without the plate' if offline else ''} ({result.records_checked} "
            "records, every chain intact)"
        )
    bad = result.first_bad
    assert bad is not None
    return (
        f"FAILED verification: record {bad.chain_index} ({bad.session_id}) of chain "
        f"{bad.chain}: {bad.what}"
    )


def cmd_export(args: argparse.Namespace) -> int:
    from sessions.jsonshapes import export_shape, verification_shape

    out: Path | None = None
    if args.out:
        out = Path(args.out).expanduser()
        if out.is_dir():  # a folder: the export gets its usual name inside it
            out = out / EXPORT_FORMATS[args.format]
    if args.json and out is None:
        raise UsageError(
            "--json needs --out FILE_OR_DIR: without it the export itself is the output"
        )
    if args.format == "fhir":
        return _export_fhir(args, out)
    home = home_of(args)
    with open_log(args, home, read_only=True) as log:
        # streams, as the export does; its status goes with the data
        integrity, trust = log_integrity(log, home)
        target: TextIO | Path = sys.stdout if out is None else out
        if args.format == "jsonl":
            status = verification_shape(integrity, trust)
            header = {"schema": "liv.export_header/1", "integrity": status}
            count = log.export_jsonl(target, header=header)
        elif args.format == "csv":
            count = log.export_sessions_csv(target, _integrity_text(integrity, trust))
        elif args.format == "csv-records":
            count = log.export_csv(target, _integrity_text(integrity, trust))
        else:
            count = log.export_envelopes_csv(target)
    if args.json:
        print_json(export_shape(args.format, count, str(out), integrity, trust))
    else:
        where = "" if out is None else f" to {out}"
        label = f" ({DEMO_LABEL})" if home.is_demo else ""
        echo(f"exported {count} records{where}{label}", file=sys.stderr)
    if not _integrity_ok(integrity, trust):
        echo(
            "liv: warning: this log FAILED verification ('liv verify' says where); the export "
            "says so too",
            file=sys.stderr,
        )
    return 0


def _export_fhir(args: argparse.Namespace, out: Path | None) -> int:
    """One patient's finished sessions as a FHIR R4 Bundle (docs/fhir.md)."""
    from sessions.clinic.fhir import FhirSession, patient_bundle

    with open_log(args, read_only=True) as log:
        records = [r for r in log.summaries() if r.finished]
    patients = sorted({r.patient_id for r in records})
    patient = args.patient
    if patient is None:
        if len(patients) != 1:
            listed = ", ".join(patients) or "none"
            raise ReportError(f"say which patient with --patient (in this log: {listed})")
        patient = patients[0]
    elif patient not in patients:
        raise ReportError(f"this log holds no finished sessions of patient {patient!r}")
    kinds = [FhirSession(r, str(getattr(r, "kind", "therapy"))) for r in records]
    bundle = patient_bundle(patient, kinds, datetime.now(UTC))
    text = json.dumps(bundle, indent=1, ensure_ascii=False) + "\n"
    if out is not None:  # health data: readable by its owner only, like the JSONL export
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
    else:
        sys.stdout.write(text)
    count = sum(r.patient_id == patient for r in records)
    echo(f"exported {count} sessions of {patient} as FHIR", file=sys.stderr)
    return 0


def _enrolled_plates(args: argparse.Namespace, home: LivHome) -> tuple[dict[str, Pin], list[Pin]]:
    """The plates whose records import accepts: the home's pins, plus ``--device-key``
    keys for the plates whose records in the file they sign (enrolled on success)."""
    pins = pins_of(home).all()
    keys = [str(k).lower() for k in (getattr(args, "device_key", None) or [])]
    new: list[Pin] = []
    if not keys:
        return pins, new
    from sessions.log import Voucher
    from sessions.log.exchange import read_lines, utf8_import_file

    firsts: dict[tuple[str, str], int] = {}
    with utf8_import_file(), open(args.file, "rb") as stream:
        for n, line in enumerate(read_lines(stream), 1):  # the import refuses what this skips
            with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
                try:
                    obj = json.loads(line)
                except RecursionError:
                    raise LogError(
                        f"Refused the whole import file: line {n} is nested too deeply to be a "
                        "session record; nothing was imported.",
                        reason=LogErrorReason.BAD_FILE,
                    ) from None
                voucher = Voucher.from_json(obj.get("device_voucher"))
                if voucher.device_key in keys:
                    place = (str(obj["device_id"]), voucher.device_key)
                    firsts[place] = min(firsts.get(place, voucher.counter), voucher.counter)
    for (device_id, key), first in sorted(firsts.items()):
        pinned = pins.get(device_id)
        if pinned is not None and pinned.device_key != key:
            raise SetupError(
                f"plate {device_id} is already enrolled here with key {pinned.key_id}; nothing "
                "was imported (a replaced plate is paired with 'liv device set URL --re-pair')"
            )
        if pinned is None:
            pin = Pin(device_id, key, first)
            pins[device_id] = pin
            new.append(pin)
    return pins, new


def cmd_import(args: argparse.Namespace) -> int:
    home = home_of(args)
    plates, new = _enrolled_plates(args, home)
    with open_log(args, home) as log:
        result = log.import_jsonl(Path(args.file), plates=plates)
    store = pins_of(home)
    for pin in new:
        store.pin(pin.device_id, bytes.fromhex(pin.device_key), pin.first_counter)
        echo(f"enrolled plate {terminal_line(pin.device_id)} (key {pin.key_id})")
    echo(
        f"imported {result.added} records ({result.skipped_duplicates} already present), "
        f"every one vouched for by its plate"
    )
    if result.clock:
        echo(
            f"{result.clock} of them were recorded while the home computer's clock was wrong "
            "(dated in the future, or ending before they started): set its clock to the right "
            "time (automatic time)"
        )
    return 0
