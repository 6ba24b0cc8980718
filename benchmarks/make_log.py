"""Write a realistic big session log: N years of twice-daily 10-minute sessions.

    python benchmarks/make_log.py OUT.db [--years 1] [--seed 1] [--points-per-s 10]

Each day has two completed sessions (about 08:00 and 18:00 local time) of one patient, with
the envelope the runner writes (one point every ``ENVELOPE_EVERY_S`` = 0.1 s over the whole
session, ramps included: about 6000 points, 96 kB of JSON) and the protocol snapshot of
``liv demo``. Rows go in through a fast path, one transaction, that builds each record exactly
as ``SessionStore.start_session`` + ``finish_session`` would (same quantisation, same
canonical JSON, same hash chain); ``SessionStore.verify`` passes on the result, which
``tests/test_log_scale.py`` checks. About 10 s per year of log on the development machine.

With ``--nv DIR`` the generator also acts as the simulated plate ``SIM-BENCH`` whose
non-volatile memory is in DIR (firmware_bridge/sim/nvstore.py): it countersigns every record as
that plate would (protocol 2.1) and leaves the plate's counter and head at the log's last, so
``liv verify`` checks a signature per record, as it does on a real home's log.
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from firmware_bridge.countersign import next_head, signed_bytes
from firmware_bridge.sim.nvstore import DeviceNv, LastSignature, NvState
from sessions.log import GENESIS_HASH, SessionStore, record_hash
from sessions.log.fields import _columns_from_raw, _iso
from sessions.protocol import MAX_STUDY_DAYS, PatientProtocol, protocol_from_dict

PATIENT_ID = "BENCH-001"
DEVICE_ID = "SIM-BENCH"
ZONE = "Europe/Berlin"
SESSION_MIN = 10.0
RAMP_UP_S = 2.0
RAMP_DOWN_S = 1.0


def bench_protocol(first_day: date, days: int) -> dict[str, Any]:
    """The prescription the generated sessions ran under.

    Its study covers every generated day and, within the longest study a protocol allows,
    goes on after them, so ``liv status`` and ``liv start`` have a session due today.
    """
    span = min(days + 30, MAX_STUDY_DAYS) - 1
    return {
        "patient_id": PATIENT_ID,
        "target_g": 0.3,
        "frequency_hz": 30.0,
        "minutes_per_session": SESSION_MIN,
        "sessions_per_day": 2,
        "min_gap_hours": 3.0,
        "daily_windows": [],
        "study_start": first_day.isoformat(),
        "study_end": (first_day + timedelta(days=span)).isoformat(),
        "timezone": ZONE,
        "dose_tolerance": 0.1,
    }


def envelope_points(rng: random.Random, points_per_s: float, target_g: float) -> list[list[float]]:
    """(t_s, amplitude_g) as the runner records it: ramp up, hold with noise, ramp down."""
    hold_s = SESSION_MIN * 60.0
    total_s = RAMP_UP_S + hold_s + RAMP_DOWN_S
    count = int(total_s * points_per_s)
    points: list[list[float]] = []
    for i in range(1, count + 1):
        t = i / points_per_s
        if t < RAMP_UP_S:
            level = t / RAMP_UP_S
        elif t > RAMP_UP_S + hold_s:
            level = max(0.0, (total_s - t) / RAMP_DOWN_S)
        else:
            level = 1.0
        amplitude = target_g * level * (1.0 + rng.gauss(0.0, 0.01))
        g = round(amplitude, 5)
        points.append([round(t, 3), 0.0 if g == 0 else g])
    return points


def completed_record(
    *,
    log_id: str,
    chain_index: int,
    prev_hash: str,
    session_id: str,
    device_id: str,
    firmware_version: str,
    protocol: PatientProtocol,
    started: datetime,
    ended: datetime,
    slot: int,
    mean_error_pct: float,
    p95_abs_error_pct: float,
    envelope: list[list[float]],
    freq_hz: float = 30.0,
    changes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One completed therapy record, every field as the log stores and exports it.

    A finished record (``SessionStore.finish_session``): the whole prescribed time at dose, at
    ``protocol``'s target and ``freq_hz``, in its time zone, hashed onto ``prev_hash``.
    ``changes`` replace fields before the hash (a test's tampered or odd record). The
    benchmark's logs (``make_log``) and the tests' exports are built by this one function.
    """
    zone = protocol.zone
    minutes = protocol.minutes_per_session
    raw: dict[str, Any] = {
        "log_id": log_id,
        "chain_index": chain_index,
        "prev_hash": prev_hash,
        "record_hash": None,
        "session_id": session_id,
        "patient_id": protocol.patient_id,
        "device_id": device_id,
        "firmware_version": firmware_version,
        "protocol_sha256": protocol.sha256,
        "protocol_json": protocol.canonical_json(),
        "started_utc": _iso(started),
        "started_local": _iso(started.astimezone(zone)),
        "ended_utc": _iso(ended),
        "ended_local": _iso(ended.astimezone(zone)),
        "timezone": protocol.timezone,
        "local_date": started.astimezone(zone).date().isoformat(),
        "slot": slot,
        "status": "completed",
        "reason": "",
        "override": False,
        "override_reason": None,
        "resumed_from": None,
        "minutes_prescribed": minutes,
        "minutes_at_dose": minutes,
        "target_g": protocol.target_g,
        "freqs_hz": [freq_hz],
        "mean_error_pct": mean_error_pct,
        "p95_abs_error_pct": p95_abs_error_pct,
        "safety_events": [],
        "exposure": {"a8_m_s2": 0.129, "a_w_m_s2": 0.891, "vdv_m_s1_75": 4.112},
        "envelope": envelope,
        "last_checkpoint_utc": _iso(ended),
    }
    raw.update(changes or {})
    raw["record_hash"] = record_hash(prev_hash, raw)
    return raw


def make_log(
    path: Path,
    *,
    years: float,
    seed: int = 1,
    points_per_s: float = 10.0,
    nv: Path | None = None,
) -> int:
    """Write ``years`` of sessions ending yesterday into a new log at ``path``; the count.

    With ``nv``, every record is countersigned by the simulated plate whose memory is there.
    """
    plate = DeviceNv(nv, DEVICE_ID) if nv is not None else None
    state = plate.state if plate is not None else None
    device_id_raw = DEVICE_ID.encode("ascii").ljust(16, b"\x00")
    if path.exists():
        raise FileExistsError(f"{path} exists: make_log writes a new log only")
    rng = random.Random(seed)
    days = max(1, min(round(years * 365), MAX_STUDY_DAYS - 2))
    zone = ZoneInfo(ZONE)
    last_day = datetime.now(UTC).astimezone(zone).date() - timedelta(days=1)
    first_day = last_day - timedelta(days=days - 1)
    protocol = protocol_from_dict(bench_protocol(first_day, days))
    envelope_cache = [envelope_points(rng, points_per_s, protocol.target_g) for _ in range(16)]
    with SessionStore(path) as store, store._write() as tx:
        log_id = store.log_id
        prev_hash = GENESIS_HASH
        index = 0
        for day_number in range(days):
            day = first_day + timedelta(days=day_number)
            for slot, hour in ((1, 8), (2, 18)):
                local_start = datetime(
                    day.year, day.month, day.day, hour, rng.randrange(60), rng.randrange(60),
                    rng.randrange(1000) * 1000, tzinfo=zone,
                )  # fmt: skip
                started = local_start.astimezone(UTC)
                ended = started + timedelta(seconds=SESSION_MIN * 60 + RAMP_UP_S + RAMP_DOWN_S)
                raw = completed_record(
                    log_id=log_id,
                    chain_index=index,
                    prev_hash=prev_hash,
                    session_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    device_id=DEVICE_ID,
                    firmware_version="sim-1.0",
                    protocol=protocol,
                    started=started,
                    ended=ended,
                    slot=slot,
                    mean_error_pct=round(rng.gauss(0.0, 0.5), 6),
                    p95_abs_error_pct=round(abs(rng.gauss(2.0, 0.3)), 6),
                    envelope=envelope_cache[index % len(envelope_cache)],
                )
                prev_hash = raw["record_hash"]
                index += 1
                columns = _columns_from_raw(raw)
                tx.execute(
                    f"INSERT INTO sessions ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})",
                    list(columns.values()),
                )
                if plate is not None and state is not None:
                    digest = bytes.fromhex(raw["record_hash"])
                    counter = state.counter + 1
                    head = next_head(state.head, counter, digest)
                    signature = plate.key.sign(
                        signed_bytes(device_id_raw, counter, digest, state.head, head)
                    )
                    tx.execute(
                        "INSERT INTO vouchers (session_id, device_key, counter, prev_head, "
                        "head, signature) VALUES (?, ?, ?, ?, ?, ?)",
                        (raw["session_id"], plate.public_key.hex(), counter, state.head.hex(),
                         head.hex(), signature.hex()),
                    )  # fmt: skip
                    state = NvState(counter, head, LastSignature(digest, state.head, signature))
    if plate is not None and state is not None:
        plate.commit(state)
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--years", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--points-per-s", type=float, default=10.0)
    parser.add_argument("--nv", type=Path, help="countersign as the simulated plate kept here")
    args = parser.parse_args(argv)
    count = make_log(
        args.out,
        years=args.years,
        seed=args.seed,
        points_per_s=args.points_per_s,
        nv=args.nv,
    )
    print(f"wrote {count} sessions to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
