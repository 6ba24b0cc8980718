"""A second clean-room plate firmware, written from docs/protocol.md (2.1) alone.

    python -m hil_tests.cleanroom2.device --pty [--nv DIR] [--set KEY=VALUE ...]

It serves one simulated plate over a pseudo-terminal, the way a USB serial plate looks: it
prints the slave path (``/dev/pts/N``) on its first line of stdout and a host opens that path
as its device URL. The plate never resets when a host opens or closes the path (docs/protocol.md
9.7): it streams from its own boot onwards whether anybody reads or not, keeps its sample index,
phase, frequency, sequence number and any latched fault across hosts, and what no host reads
piles up in the pty and in a transmit backlog of ``tx_backlog`` bytes (frames that do not fit
are dropped whole), to be delivered to the next host that opens the path.

Where the document leaves a choice open, this firmware takes the branch a reference
implementation would least naturally take: a boundary's replies go out before the finished
block's SAMPLES (``order=replies_first``, or ``alternate`` / ``samples_first``), every limit is
a setting anywhere inside the HELLO ranges, capabilities are optional (no coil temperature, not
SIMULATED unless asked), the protocol minor version is a setting, the default frequency is not
30 Hz, and ``uptime_s`` / ``prev_host`` make a host meet a plate that has been running for a
long time, possibly with a HOST_WATCHDOG fault latched by the previous host.

The plate is a second-order system (a moving mass on a suspension, driven by a force
proportional to the drive signal) that a patient loads with ``load_kg`` (an effective fraction
of the body moves with the plate); its accelerometer adds gravity, a calibration residual and
white noise. Only the standard library, numpy and ``cryptography`` are used.
"""

from __future__ import annotations

import argparse
import binascii
import collections
import contextlib
import hashlib
import json
import math
import os
import select
import signal
import struct
import sys
import termios
import time
import tty
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

G = 9.80665

# message types
HELLO_REQUEST, SET_FREQUENCY, SET_DRIVE, SET_OUTPUT = 0x01, 0x02, 0x03, 0x04
HEARTBEAT, STATUS_REQUEST, CLEAR_FAULT, IDENTITY_REQUEST, COUNTERSIGN = 0x05, 0x06, 0x07, 0x08, 0x09
HELLO, ACK, NAK, SAMPLES, STATUS, FAULT, IDENTITY, COUNTERSIGNATURE = range(0x81, 0x89)
PAYLOAD_LEN = {0x01: 2, 0x02: 4, 0x03: 4, 0x04: 1, 0x05: 0, 0x06: 0, 0x07: 0, 0x08: 0, 0x09: 36}

# NAK reasons
BAD_LENGTH, UNKNOWN_TYPE, OUT_OF_RANGE, OUTPUT_OFF, FAULT_LATCHED, BUSY = 1, 2, 3, 4, 5, 6
COUNTER_MISMATCH, STORAGE = 7, 8

# fault codes
HOST_WATCHDOG, COIL_OVERTEMP, OVER_ACCELERATION, SENSOR_REST = 1, 2, 6, 7

# states
IDLE, RUNNING, STOPPING, FAULTED = 0, 1, 2, 3

# capability bits
CAP_COIL_TEMPERATURE, CAP_SIMULATED, CAP_COUNTERSIGN = 1, 4, 16

ACCEL_WINDOW_BLOCKS = 3
REST_BLOCKS = 4
REST_TOLERANCE = 0.03
OVERTEMP_CENTI_C = 12000
MAX_ENCODED = 251


@dataclass
class Settings:
    """Every choice the document leaves to the firmware; ``--set KEY=VALUE`` changes one."""

    sample_rate_hz: int = 1250
    block_samples: int = 25
    counts_per_g: int = 4096
    max_drive_q16: int = 52428  # 0.8 of full scale
    min_freq_mhz: int = 25000
    max_freq_mhz: int = 120000
    watchdog_ms: int = 300
    watchdog_ramp_ms: int = 150
    stop_ramp_ms: int = 250
    slew_full_scale_ms: int = 50
    ceiling_mg: int = 700
    protocol_minor: int = 1
    fw: str = "0.3.1"
    device_id: str = "CR2-PLATE-0042"
    order: str = "replies_first"  # replies_first | samples_first | alternate
    countersign: int = 1
    simulated: int = 0
    coil_temp: int = 0
    default_freq_mhz: int = 41000
    boot_ms: int = 150
    load_kg: float = 0.0
    noise_g: float = 0.003
    cal_residual: float = 0.004  # sensitivity left over after the device's own calibration
    uptime_s: float = 0.0
    prev_host: int = 0  # the previous host left the drive on and went away: watchdog latched
    tx_backlog: int = 65536
    seed: int = 2
    reboot_at_s: float = 0.0  # > 0: a reset (brown-out, watchdog of the MCU) this long after start
    trace: int = 0  # 1: one line on stderr per host frame handled and per FAULT sent

    def check(self) -> None:
        fs, n = self.sample_rate_hz, self.block_samples
        ok = (
            400 <= fs <= 20000
            and 1 <= n <= 113
            and 32 <= self.counts_per_g <= 16383
            and 1 <= self.max_drive_q16 <= 65535
            and 1000 <= self.min_freq_mhz <= self.max_freq_mhz <= 1000000
            and 2 * self.max_freq_mhz < 1000 * fs
            and n * 1000 <= 50 * fs
            and 200 <= self.watchdog_ms <= 2000
            and 10 <= self.watchdog_ramp_ms <= 1000
            and 10 <= self.stop_ramp_ms <= 1000
            and 1 <= self.slew_full_scale_ms <= 1000
            and 500 <= self.ceiling_mg <= 1000
            and self.max_drive_q16 * self.slew_full_scale_ms
            <= 65535 * min(self.stop_ramp_ms, self.watchdog_ramp_ms)
            and self.min_freq_mhz <= self.default_freq_mhz <= self.max_freq_mhz
            and 1 <= len(self.device_id) <= 16
            and self.order in ("replies_first", "samples_first", "alternate")
        )
        if not ok:
            raise SystemExit(f"settings outside docs/protocol.md section 7: {self}")


PRESETS: dict[str, dict[str, str]] = {
    # the slowest plate the HELLO ranges allow, near enough: 400 Hz, 50 ms blocks, 2 s watchdog
    "slow": {
        "sample_rate_hz": "400",
        "block_samples": "20",
        "counts_per_g": "32",
        "max_drive_q16": "65535",
        "min_freq_mhz": "1000",
        "max_freq_mhz": "150000",
        "watchdog_ms": "2000",
        "watchdog_ramp_ms": "1000",
        "stop_ramp_ms": "1000",
        "slew_full_scale_ms": "1000",
        "ceiling_mg": "1000",
        "protocol_minor": "9",
        "order": "alternate",
        "countersign": "0",
        "default_freq_mhz": "90000",
    },
    # the fastest: 20 kHz, 113-sample (250-byte) frames, 200 ms watchdog, 10 ms ramps
    "fast": {
        "sample_rate_hz": "20000",
        "block_samples": "113",
        "counts_per_g": "16383",
        "max_drive_q16": "58982",
        "min_freq_mhz": "20000",
        "max_freq_mhz": "1000000",
        "watchdog_ms": "200",
        "watchdog_ramp_ms": "10",
        "stop_ramp_ms": "11",
        "slew_full_scale_ms": "11",
        "ceiling_mg": "500",
        "simulated": "1",
        "coil_temp": "1",
    },
}


def parse_settings(pairs: list[str]) -> Settings:
    s = Settings()
    known = {f.name: f for f in fields(Settings)}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if key == "preset":
            for k, v in PRESETS[value].items():
                setattr(s, k, type(getattr(s, k))(v))
            continue
        if not sep or key not in known:
            raise SystemExit(f"--set {pair}: unknown setting; known: {', '.join(known)}")
        setattr(s, key, type(getattr(s, key))(value))
    s.check()
    return s


# ---- framing ---------------------------------------------------------------------------------


def crc16(data: bytes) -> int:
    return binascii.crc_hqx(data, 0)


def cobs_encode(raw: bytes) -> bytes:
    out = bytearray()
    group = bytearray()
    for b in raw:
        if b == 0:
            out.append(len(group) + 1)
            out += group
            group.clear()
        else:
            group.append(b)
            if len(group) == 254:
                out.append(255)
                out += group
                group.clear()
    out.append(len(group) + 1)
    out += group
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    out = bytearray()
    i = 0
    while i < len(data):
        code = data[i]
        if code == 0 or i + code > len(data):
            return None
        out += data[i + 1 : i + code]
        i += code
        if code < 255 and i < len(data):
            out.append(0)
    return bytes(out)


class Receiver:
    """Section 2.4: chunks between delimiters, damage counted and dropped."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.overrun = False
        self.crc_errors = 0
        self.overruns = 0

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        frames = []
        for b in data:
            if b != 0:
                if len(self.buf) >= MAX_ENCODED:
                    self.overrun = True
                else:
                    self.buf.append(b)
                continue
            chunk, over = bytes(self.buf), self.overrun
            self.buf.clear()
            self.overrun = False
            if over:
                self.overruns += 1
                continue
            if not chunk:
                continue
            raw = cobs_decode(chunk)
            if raw is None:
                self.crc_errors += 1  # rx_crc_errors counts COBS errors too (9.6)
                continue
            if len(raw) < 5:
                continue
            if crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
                self.crc_errors += 1
                continue
            frames.append((raw[0], int.from_bytes(raw[1:3], "little"), raw[3:-2]))
        return frames


# ---- the link: a pseudo-terminal that never resets the device --------------------------------


class PtyLink:
    def __init__(self, backlog: int) -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        tty.setraw(slave)
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        # keep one slave descriptor open ourselves: a host that closes the path is then not a
        # hang-up, and what nobody reads stays queued for the next host
        self.keep = slave
        os.set_blocking(self.master, False)
        self.pending = bytearray()
        self.backlog = backlog
        self.dropped = 0

    def read(self) -> bytes:
        chunks = []
        while True:
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def write(self, frame: bytes) -> None:
        if not self.pending:
            try:
                sent = os.write(self.master, frame)
            except (BlockingIOError, OSError):
                sent = 0
            if sent:
                self.pending += frame[sent:]  # the rest of a frame begun is always sent
                return
        if len(self.pending) + len(frame) > self.backlog:
            self.dropped += 1  # what does not fit is dropped whole
            return
        self.pending += frame
        self.flush()

    def flush(self) -> None:
        while self.pending:
            try:
                n = os.write(self.master, self.pending)
            except (BlockingIOError, OSError):
                return
            if n <= 0:
                return
            del self.pending[:n]


# ---- non-volatile memory for COUNTERSIGN ----------------------------------------------------


class NvStore:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        key_path = root / "device-key.bin"
        if not key_path.exists():
            tmp = root / "device-key.tmp"
            tmp.write_bytes(Ed25519PrivateKey.generate().private_bytes_raw())
            os.replace(tmp, key_path)
        self.key = Ed25519PrivateKey.from_private_bytes(key_path.read_bytes())
        self.public = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        state_path = root / "counter.json"
        if state_path.exists():
            st = json.loads(state_path.read_text())
        else:
            st = {"counter": 0, "head": "00" * 32, "last": None}
        self.counter: int = st["counter"]
        self.head = bytes.fromhex(st["head"])
        self.last: dict[str, str] | None = st["last"]

    def commit(self, counter: int, head: bytes, last: dict[str, str]) -> None:
        tmp = self.root / "counter.tmp"
        tmp.write_text(json.dumps({"counter": counter, "head": head.hex(), "last": last}))
        os.replace(tmp, self.root / "counter.json")  # all or nothing
        self.counter, self.head, self.last = counter, head, last


# ---- the plate -------------------------------------------------------------------------------


class Plate:
    """Moving mass on a suspension, force proportional to the drive signal."""

    PLATE_KG = 20.0
    LOAD_SHARE = 0.3  # of a standing body, the share that moves with the plate
    FORCE_N = 20.0 * 4.0 * G  # an empty plate: 4 g per unit drive above its resonance
    F0_EMPTY_HZ = 12.0
    ZETA = 0.15

    def __init__(self, fs: int, load_kg: float) -> None:
        m_empty = self.PLATE_KG
        k = m_empty * (2 * math.pi * self.F0_EMPTY_HZ) ** 2
        c = 2 * self.ZETA * math.sqrt(k * m_empty)
        self.m = m_empty + self.LOAD_SHARE * load_kg
        self.k, self.c = k, c
        a = np.array([[0.0, 1.0], [-k / self.m, -c / self.m]])
        big = np.zeros((3, 3))
        big[:2, :2] = a / fs
        big[1, 2] = self.FORCE_N / self.m / fs
        # ZOH discretisation through a 3x3 exponential, done with the 2x2 routine's method
        e = np.eye(3)
        term = np.eye(3)
        norm = float(np.abs(big).sum())
        sq = max(0, math.ceil(math.log2(norm)) + 4) if norm > 0 else 0
        small = big / (2**sq)
        for i in range(1, 16):
            term = term @ small / i
            e = e + term
        for _ in range(sq):
            e = e @ e
        self.phi = [[float(e[0, 0]), float(e[0, 1])], [float(e[1, 0]), float(e[1, 1])]]
        self.gam = [float(e[0, 2]), float(e[1, 2])]
        self.x = 0.0
        self.v = 0.0

    def accel(self, u: list[float]) -> np.ndarray:
        """Plate accelerations (m/s^2) at each sample, drive held over each sample period."""
        if not any(u) and abs(self.x) < 1e-13 and abs(self.v) < 1e-11:
            self.x = self.v = 0.0
            return np.zeros(len(u))
        p00, p01 = self.phi[0]
        p10, p11 = self.phi[1]
        g0, g1 = self.gam
        f_m, k_m, c_m = self.FORCE_N / self.m, self.k / self.m, self.c / self.m
        x, v = self.x, self.v
        out = []
        for uk in u:
            out.append(f_m * uk - k_m * x - c_m * v)
            x, v = p00 * x + p01 * v + g0 * uk, p10 * x + p11 * v + g1 * uk
        self.x, self.v = x, v
        return np.array(out)


# ---- the firmware ----------------------------------------------------------------------------


class Firmware:
    def __init__(self, s: Settings, link: PtyLink, nv: NvStore | None) -> None:
        self.s = s
        self.link = link
        self.nv = nv if s.countersign else None
        self.rng = np.random.default_rng(s.seed)
        self.plate = Plate(s.sample_rate_hz, s.load_kg)
        self.rx = Receiver()
        fw = [int(p) for p in s.fw.split(".")]
        self.fw = [*fw, 0, 0, 0][:3]
        self.boot()

    # -- state ------------------------------------------------------------------------------

    def boot(self) -> None:
        self.output_on = False
        self.ramp_d0 = 0.0
        self.ramp_target = 0.0
        self.ramp_target_q16 = 0
        self.ramp_n = 1
        self.ramp_k = 1
        self.ramp_kind = ""  # "", "stop" or "fault"
        self.fault_code = 0
        self.fault_index = 0
        self.fault_detail = 0
        self.index = 0
        self.tx_seq = 0
        self.rx_expected: int | None = None
        self.rx_lost = 0
        self.freq_mhz = self.s.default_freq_mhz
        self.phase_units = 0  # phase in 1 / (1000 * fs) turns: exact
        self.last_rx_index = 0
        self.window: collections.deque[tuple[np.ndarray, np.ndarray]] = collections.deque(
            maxlen=ACCEL_WINDOW_BLOCKS
        )
        self.rest: collections.deque[float] = collections.deque(maxlen=REST_BLOCKS)
        self.held: bytes | None = None
        self.boundaries = 0
        self.coil_centi = 3100

    def amp_next(self) -> float:
        if self.ramp_k >= self.ramp_n:
            return self.ramp_target
        return self.ramp_d0 + (self.ramp_target - self.ramp_d0) * self.ramp_k / self.ramp_n

    def ramp_length(self, target_q16: int, ramp_ms: int) -> int:
        d0 = self.amp_next()
        x = d0 * 65535
        nearest = math.floor(x + 0.5)
        if abs(x - nearest) < 1e-6:
            d0q = nearest
        elif target_q16 >= x:
            d0q = math.floor(x)
        else:
            d0q = math.ceil(x)
        fs = self.s.sample_rate_hz
        n_time = (ramp_ms * fs + 500) // 1000
        n_slew = (abs(target_q16 - d0q) * self.s.slew_full_scale_ms * fs + 65534999) // 65535000
        return max(1, n_time, n_slew)

    def start_ramp(self, target_q16: int, ramp_ms: int, kind: str) -> None:
        d0 = self.amp_next()
        target = target_q16 / 65535
        n = self.ramp_length(target_q16, ramp_ms)
        if target == d0:
            self.ramp_d0, self.ramp_n, self.ramp_k = target, 1, 1
        else:
            self.ramp_d0, self.ramp_n, self.ramp_k = d0, n, 0
        self.ramp_target, self.ramp_target_q16 = target, target_q16
        self.ramp_kind = kind

    def ramping_down(self) -> bool:
        return self.output_on and self.ramp_kind in ("stop", "fault")

    def state(self) -> int:
        if self.fault_code:
            return FAULTED
        if self.output_on and self.ramp_kind == "stop":
            return STOPPING
        return RUNNING if self.output_on else IDLE

    # -- sending -----------------------------------------------------------------------------

    def send(self, mtype: int, payload: bytes) -> None:
        raw = bytes([mtype]) + struct.pack("<H", self.tx_seq) + payload
        raw += struct.pack("<H", crc16(raw))
        self.tx_seq = (self.tx_seq + 1) & 0xFFFF
        self.link.write(cobs_encode(raw) + b"\x00")

    def hello_payload(self, boot: int) -> bytes:
        s = self.s
        caps = 0
        if s.coil_temp:
            caps |= CAP_COIL_TEMPERATURE
        if s.simulated:
            caps |= CAP_SIMULATED
        if self.nv is not None:
            caps |= CAP_COUNTERSIGN
        return struct.pack(
            "<BBBBB16sHBHHIIHHHHHIB",
            2,
            s.protocol_minor,
            *self.fw,
            s.device_id.encode("ascii"),
            s.sample_rate_hz,
            s.block_samples,
            s.counts_per_g,
            s.max_drive_q16,
            s.min_freq_mhz,
            s.max_freq_mhz,
            s.watchdog_ms,
            s.watchdog_ramp_ms,
            s.stop_ramp_ms,
            s.slew_full_scale_ms,
            s.ceiling_mg,
            caps,
            boot,
        )

    def trip(self, code: int, detail: int) -> None:
        """Latch a fault at the present boundary, ramp to zero (section 10), send FAULT."""
        self.fault_code, self.fault_index, self.fault_detail = code, self.index, detail
        if self.output_on:
            if self.amp_next() == 0.0:
                self.output_on = False
                self.ramp_kind = ""
                self.ramp_d0 = self.ramp_target = 0.0
                self.ramp_target_q16, self.ramp_n, self.ramp_k = 0, 1, 1
            elif self.ramp_kind == "stop":
                stop_left = self.ramp_n - self.ramp_k
                fault_n = self.ramp_length(0, self.s.watchdog_ramp_ms)
                if fault_n < stop_left:
                    self.start_ramp(0, self.s.watchdog_ramp_ms, "fault")
                else:
                    self.ramp_kind = "fault"  # keep the stop ramp's end; refuse as for a fault
            else:
                self.start_ramp(0, self.s.watchdog_ramp_ms, "fault")
        if self.s.trace:
            print(f"{self.index} FAULT {code} detail {detail}", file=sys.stderr, flush=True)
        self.send(FAULT, struct.pack("<BQi", code, self.index, detail))

    # -- a block boundary (section 9.2) ------------------------------------------------------

    def boundary(self, incoming: bytes) -> None:
        if self.ramping_down() and self.ramp_k >= self.ramp_n and self.ramp_target == 0.0:
            self.output_on = False
            self.ramp_kind = ""
        order = self.s.order
        samples_first = order == "samples_first" or (
            order == "alternate" and self.boundaries % 2 == 1
        )
        self.boundaries += 1
        if samples_first and self.held is not None:
            self.send(SAMPLES, self.held)
            self.held = None
        # 1. the acceleration ceiling over the blocks that end here
        if self.output_on and not self.fault_code and self.window:
            peak_mg = self.measured_peak_mg()
            if peak_mg > self.s.ceiling_mg:
                self.trip(OVER_ACCELERATION, peak_mg)
        # 2. host frames, in arrival order
        for mtype, seq, payload in self.rx.feed(incoming):
            self.handle(mtype, seq, payload)
        # 3. watchdog and coil temperature
        if self.output_on and not self.fault_code:
            silence_ms = (self.index - self.last_rx_index) * 1000 // self.s.sample_rate_hz
            if silence_ms > self.s.watchdog_ms:
                self.trip(HOST_WATCHDOG, silence_ms)
            elif self.s.coil_temp and self.coil_centi > OVERTEMP_CENTI_C:
                self.trip(COIL_OVERTEMP, self.coil_centi)
        if not samples_first and self.held is not None:
            self.send(SAMPLES, self.held)
            self.held = None
        # 4. the block that starts here
        self.held = self.generate()

    def measured_peak_mg(self) -> int:
        blocks = list(self.window)
        g = np.concatenate([b[0] for b in blocks])
        ph = np.concatenate([b[1] for b in blocks])
        cols = [np.cos(2 * np.pi * ph), np.sin(2 * np.pi * ph)]
        for j, b in enumerate(blocks):
            c = np.zeros(len(g))
            start = sum(len(x[0]) for x in blocks[:j])
            c[start : start + len(b[0])] = 1.0
            cols.append(c)
        coef, *_ = np.linalg.lstsq(np.column_stack(cols), g, rcond=None)
        return math.floor(math.hypot(coef[0], coef[1]) * 1000 + 0.5)

    def generate(self) -> bytes:
        s = self.s
        n, fs = s.block_samples, s.sample_rate_hz
        modulus = 1000 * fs
        first_units = self.phase_units
        phase_q32 = ((first_units << 33) + modulus) // (2 * modulus) & 0xFFFFFFFF
        drive_q16 = math.floor(self.amp_next() * 65535 + 0.5) if self.output_on else 0
        phases = (first_units + self.freq_mhz * np.arange(n, dtype=np.int64)) % modulus / modulus
        u = []
        for k in range(n):
            d = self.amp_next() if self.output_on else 0.0
            if self.ramp_k < self.ramp_n:
                self.ramp_k += 1
            u.append(d * math.sin(2 * math.pi * float(phases[k])))
        self.phase_units = (first_units + self.freq_mhz * n) % modulus
        accel = self.plate.accel(u) / G
        corrected = (accel + 1.0) * (1.0 + s.cal_residual) + self.rng.normal(0.0, s.noise_g, n)
        counts = np.clip(np.floor(corrected * s.counts_per_g + 0.5), -32768, 32767).astype(int)
        self.window.append((corrected, phases))
        if not self.output_on:
            self.rest.append(float(corrected.mean()))
        if s.coil_temp:
            heat = 3100 + int(4000 * (drive_q16 / 65535) ** 2)
            self.coil_centi += (heat - self.coil_centi) // 50
        payload = struct.pack("<QIIHB", self.index, phase_q32, self.freq_mhz, drive_q16, n)
        payload += struct.pack(f"<{n}h", *counts.tolist())
        self.index += n
        return payload

    # -- commands (section 9.6) -------------------------------------------------------------

    def handle(self, mtype: int, seq: int, payload: bytes) -> None:
        if self.s.trace:
            print(
                f"{self.index} rx {mtype:#04x} seq {seq} {payload.hex()} state {self.state()}"
                f" amp {self.amp_next():.4f} kind {self.ramp_kind or '-'}",
                file=sys.stderr,
                flush=True,
            )
        if mtype in (HELLO_REQUEST,) and seq == 0:
            self.rx_expected = 1
        elif self.rx_expected is None:
            self.rx_expected = (seq + 1) & 0xFFFF
        else:
            gap = (seq - self.rx_expected) & 0xFFFF
            if gap < 32768:
                self.rx_lost = min(65535, self.rx_lost + gap)
                self.rx_expected = (seq + 1) & 0xFFFF
        self.last_rx_index = self.index
        known = set(PAYLOAD_LEN) if self.nv is not None else set(range(1, 8))
        if mtype not in known:
            self.nak(seq, mtype, UNKNOWN_TYPE)
            return
        if len(payload) != PAYLOAD_LEN[mtype]:
            self.nak(seq, mtype, BAD_LENGTH)
            return
        if mtype == HELLO_REQUEST:
            self.send(HELLO, self.hello_payload(0))
        elif mtype == STATUS_REQUEST:
            self.send(STATUS, self.status_payload())
        elif mtype == HEARTBEAT:
            self.ack(seq, mtype)
        elif mtype == SET_FREQUENCY:
            (f,) = struct.unpack("<I", payload)
            if not self.s.min_freq_mhz <= f <= self.s.max_freq_mhz:
                self.nak(seq, mtype, OUT_OF_RANGE)
            else:
                self.freq_mhz = f
                self.ack(seq, mtype)
        elif mtype == SET_DRIVE:
            q, ramp_ms = struct.unpack("<HH", payload)
            if self.fault_code:
                self.nak(seq, mtype, FAULT_LATCHED)
            elif self.ramping_down():
                self.nak(seq, mtype, BUSY)
            elif not self.output_on:
                self.nak(seq, mtype, OUTPUT_OFF)
            elif q > self.s.max_drive_q16:
                self.nak(seq, mtype, OUT_OF_RANGE)
            else:
                self.start_ramp(q, ramp_ms, "")
                self.ack(seq, mtype)
        elif mtype == SET_OUTPUT:
            self.set_output(seq, payload[0])
        elif mtype == CLEAR_FAULT:
            if self.ramping_down():
                self.nak(seq, mtype, BUSY)
            else:
                self.fault_code = self.fault_index = self.fault_detail = 0
                self.ack(seq, mtype)
        elif mtype == IDENTITY_REQUEST:
            assert self.nv is not None
            self.send(IDENTITY, self.nv.public + struct.pack("<I", self.nv.counter) + self.nv.head)
        elif mtype == COUNTERSIGN:
            self.countersign(seq, payload)

    def set_output(self, seq: int, enable: int) -> None:
        if enable > 1:
            self.nak(seq, SET_OUTPUT, OUT_OF_RANGE)
        elif enable == 0:
            if self.output_on and not self.ramping_down():
                if self.amp_next() > 0 or self.ramp_target > 0:
                    self.start_ramp(0, self.s.stop_ramp_ms, "stop")
                else:
                    self.output_on = False
            self.ack(seq, SET_OUTPUT)
        elif self.fault_code:
            self.nak(seq, SET_OUTPUT, FAULT_LATCHED)
        elif self.ramping_down():
            self.nak(seq, SET_OUTPUT, BUSY)
        elif self.output_on:
            self.ack(seq, SET_OUTPUT)
        else:
            reading = float(np.mean(self.rest)) if self.rest else None
            if reading is None or abs(reading - 1.0) > REST_TOLERANCE:
                self.trip(SENSOR_REST, 0 if reading is None else math.floor(reading * 1000 + 0.5))
                self.nak(seq, SET_OUTPUT, FAULT_LATCHED)
                return
            self.output_on = True
            self.ramp_d0 = self.ramp_target = 0.0
            self.ramp_target_q16, self.ramp_n, self.ramp_k, self.ramp_kind = 0, 1, 1, ""
            self.ack(seq, SET_OUTPUT)

    def status_payload(self) -> bytes:
        on = self.output_on
        return struct.pack(
            "<BBIHHBQHHhQi",
            self.state(),
            int(on),
            self.freq_mhz,
            math.floor(self.amp_next() * 65535 + 0.5) if on else 0,
            self.ramp_target_q16 if on else 0,
            self.fault_code,
            self.index,
            min(65535, self.rx.crc_errors),
            self.rx_lost,
            self.coil_centi if self.s.coil_temp else 0x7FFF,
            self.fault_index,
            self.fault_detail,
        )

    def countersign(self, seq: int, payload: bytes) -> None:
        nv = self.nv
        assert nv is not None
        digest, expected = payload[:32], struct.unpack("<I", payload[32:])[0]
        last = nv.last
        if last is not None and expected == nv.counter and digest.hex() == last["digest"]:
            self.send(COUNTERSIGNATURE, bytes.fromhex(last["frame"]))
            return
        if expected != nv.counter + 1 or nv.counter == 0xFFFFFFFF:
            self.nak(seq, COUNTERSIGN, COUNTER_MISMATCH)
            return
        counter_le = struct.pack("<I", expected)
        prev = nv.head
        new = hashlib.sha256(b"LIV-HEAD-v1\x00" + prev + counter_le + digest).digest()
        dev_id = self.s.device_id.encode("ascii").ljust(16, b"\x00")
        signed = b"LIV-COUNTERSIGN-v1\x00" + dev_id + counter_le + digest + prev + new
        frame = counter_le + digest + prev + new + nv.key.sign(signed)
        try:
            nv.commit(expected, new, {"digest": digest.hex(), "frame": frame.hex()})
        except OSError:
            self.nak(seq, COUNTERSIGN, STORAGE)
            return
        self.send(COUNTERSIGNATURE, frame)

    def ack(self, seq: int, mtype: int) -> None:
        self.send(ACK, struct.pack("<HB", seq, mtype))

    def nak(self, seq: int, mtype: int, reason: int) -> None:
        self.send(NAK, struct.pack("<HBB", seq, mtype, reason))

    # -- running ------------------------------------------------------------------------------

    def start(self) -> None:
        """Boot: drive off, HELLO seq 0 boot 1, then the stream from index 0 (section 9.1)."""
        self.send(HELLO, self.hello_payload(1))
        if self.s.prev_host:
            # a previous host switched on, asked for a drive and vanished: the watchdog latches
            self.output_on = True
            self.start_ramp(6554, 500, "")
            self.last_rx_index = 0
        blocks = int(self.s.uptime_s * self.s.sample_rate_hz) // self.s.block_samples
        for _ in range(blocks):
            self.boundary(b"")
            self.link.flush()

    def run_forever(self) -> None:
        s = self.s
        block_s = s.block_samples / s.sample_rate_hz
        t0 = time.monotonic()
        n = 0
        reboot_at = t0 + s.reboot_at_s if s.reboot_at_s > 0 else math.inf
        while True:
            if time.monotonic() >= reboot_at:
                reboot_at = math.inf
                self.boot()  # drive off first, state cleared (section 9.1)
                time.sleep(s.boot_ms / 1000)
                self.rx = Receiver()
                self.send(HELLO, self.hello_payload(1))
                t0, n = time.monotonic(), 0
            self.link.flush()
            self.boundary(self.link.read())
            self.link.flush()
            n += 1
            delay = t0 + n * block_s - time.monotonic()
            while delay > 0:
                # keep the link busy until the next boundary: drain the backlog as fast as the
                # reader takes it (a device server or USB stack does not wait for a block)
                want_write = [self.link.master] if self.link.pending else []
                select.select([], want_write, [], delay)
                self.link.flush()
                delay = t0 + n * block_s - time.monotonic()
                if not self.link.pending and delay > 0:
                    time.sleep(delay)
                    break
            if delay < -1.0:  # fell far behind (machine busy): do not burst to catch up
                t0 = time.monotonic() - n * block_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pty", action="store_true", required=True, help="serve over a pty")
    parser.add_argument("--nv", type=Path, default=None, help="directory of the device's key")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    settings = parse_settings(args.set)
    nv = None
    if settings.countersign:
        root = args.nv or Path(os.environ.get("TMPDIR", "/tmp")) / f"cr2-nv-{settings.device_id}"
        nv = NvStore(root)
    link = PtyLink(settings.tx_backlog)
    print(link.path, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(settings.boot_ms / 1000)
    fw = Firmware(settings, link, nv)
    fw.start()
    with contextlib.suppress(KeyboardInterrupt):
        fw.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
