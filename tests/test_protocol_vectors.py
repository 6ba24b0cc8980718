"""docs/protocol.md agrees with the code: its test vectors, layouts, code tables and constants.

The vectors are fenced code blocks (info string ``vector``) whose format is described in
section 13.1 of the document. Each one must encode and decode exactly as stated, and every
message type in ``MESSAGE_TYPES`` needs at least one, so the document cannot fall behind.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cobs import cobs

from firmware_bridge.codec import (
    MAX_ENCODED_LEN,
    MAX_RAW_LEN,
    MIN_RAW_LEN,
    FrameDecoder,
    LinkStats,
    crc16,
)
from firmware_bridge.dose_limits import DOSE_LIMITS
from firmware_bridge.protocol import (
    FAULT_TEXT,
    HELLO_RANGES,
    MESSAGE_TYPES,
    NAK_TEXT,
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    SAMPLES_HEADER,
    Capability,
    DeviceState,
    FaultCode,
    Hello,
    Message,
    NakReason,
    Samples,
    check_hello,
    decode_message,
    drive_to_q16,
    encode_message,
    ramp_samples,
)

ROOT = Path(__file__).resolve().parents[1]
DOC_PATH = ROOT / "docs" / "protocol.md"
DEVICE_SOURCE = ROOT / "firmware_bridge" / "sim" / "device.py"
DOC = DOC_PATH.read_text(encoding="utf-8")
FLAT_DOC = " ".join(DOC.split())

# ---- parsing the document ------------------------------------------------------------------


def fenced_blocks(info: str) -> list[dict[str, str]]:
    """Key/value blocks fenced with ``info``; indented lines continue the previous value."""
    blocks = []
    for body in re.findall(rf"^```{re.escape(info)}\n(.*?)^```$", DOC, re.MULTILINE | re.DOTALL):
        values: dict[str, str] = {}
        key = None
        for line in body.splitlines():
            if line.startswith("  ") and key is not None:
                values[key] += " " + line.strip()
            elif line.strip():
                key, sep, value = line.partition(":")
                assert sep, f"line without 'key:' in a {info} block: {line!r}"
                assert key not in values, f"key {key!r} twice in a {info} block"
                values[key] = value.strip()
        blocks.append(values)
    return blocks


def section(heading: str) -> str:
    """Text from the heading that starts with ``heading`` up to the next heading."""
    match = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#)", DOC, re.MULTILINE | re.DOTALL)
    assert match, f"docs/protocol.md has no section {heading!r}"
    return match.group(1)


def hex_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def wire_name(cls: type[Message]) -> str:
    """``SetFrequency`` -> ``SET_FREQUENCY``, the name the document uses."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()


@dataclasses.dataclass(frozen=True)
class Vector:
    name: str
    message: str
    frame_type: int
    seq: int
    fields: dict[str, Any]
    raw: bytes
    wire: bytes


def load_vectors() -> list[Vector]:
    vectors = []
    for block in fenced_blocks("vector"):
        assert set(block) == {"name", "message", "type", "seq", "fields", "raw", "wire"}, block
        vectors.append(
            Vector(
                name=block["name"],
                message=block["message"],
                frame_type=int(block["type"], 16),
                seq=int(block["seq"]),
                fields=json.loads(block["fields"]),
                raw=hex_bytes(block["raw"]),
                wire=hex_bytes(block["wire"]),
            )
        )
    return vectors


VECTORS = load_vectors()


def build(vector: Vector) -> Message:
    """The message a vector describes, from its JSON fields."""
    cls = MESSAGE_TYPES[vector.frame_type]
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    assert list(vector.fields) == names, f"{vector.name}: fields must be {names} in this order"
    values: list[Any] = []
    for value in vector.fields.values():
        if isinstance(value, str):
            values.append(bytes.fromhex(value))
        elif isinstance(value, list):
            values.append(np.array(value, dtype=np.int16))
        else:
            values.append(value)
    return cls(*values)


def as_json(message: Message) -> dict[str, Any]:
    """A decoded message in the vector's JSON representation."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, np.ndarray):
            value = [int(v) for v in value]
        out[f.name] = value
    return out


# ---- the vectors -----------------------------------------------------------------------------


def test_document_has_vectors() -> None:
    assert len(VECTORS) >= len(MESSAGE_TYPES)


def test_every_message_type_has_a_vector() -> None:
    covered = {v.frame_type for v in VECTORS}
    missing = sorted(set(MESSAGE_TYPES) - covered)
    assert not missing, f"docs/protocol.md lacks vectors for types {[hex(t) for t in missing]}"


def test_every_vector_is_a_known_message_type() -> None:
    unknown = [v.name for v in VECTORS if v.frame_type not in MESSAGE_TYPES]
    assert not unknown


def test_vector_names_are_unique() -> None:
    names = [v.name for v in VECTORS]
    assert len(names) == len(set(names))


def test_some_vector_shows_cobs_stuffing() -> None:
    assert any(0 in v.raw for v in VECTORS)
    assert any(0 not in v.raw for v in VECTORS), "one vector without a zero shows a single group"


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector_header(vector: Vector) -> None:
    assert vector.message == wire_name(MESSAGE_TYPES[vector.frame_type])
    assert 0 <= vector.seq <= 0xFFFF
    assert vector.raw[0] == vector.frame_type
    assert vector.raw[1:3] == struct.pack("<H", vector.seq)
    assert MIN_RAW_LEN <= len(vector.raw) <= MAX_RAW_LEN


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector_crc(vector: Vector) -> None:
    assert crc16(vector.raw[:-2]) == struct.unpack("<H", vector.raw[-2:])[0]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector_wire_is_cobs_of_raw_plus_delimiter(vector: Vector) -> None:
    assert vector.wire.endswith(b"\x00")
    assert vector.wire.count(0) == 1
    assert cobs.encode(vector.raw) + b"\x00" == vector.wire
    assert cobs.decode(vector.wire[:-1]) == vector.raw
    assert len(vector.wire) - 1 <= MAX_ENCODED_LEN


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector_encodes_to_its_wire_bytes(vector: Vector) -> None:
    assert encode_message(build(vector), vector.seq) == vector.wire


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_vector_decodes_to_its_fields(vector: Vector) -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(vector.wire)
    assert decoder.stats == LinkStats(frames=1, bytes_received=len(vector.wire))
    assert len(frames) == 1
    frame = frames[0]
    assert (frame.frame_type, frame.seq) == (vector.frame_type, vector.seq)
    assert frame.payload == vector.raw[3:-2]
    message = decode_message(frame)
    assert type(message) is MESSAGE_TYPES[vector.frame_type]
    assert as_json(message) == vector.fields


def test_all_vectors_decode_as_one_stream() -> None:
    decoder = FrameDecoder()
    stream = b"".join(v.wire for v in VECTORS)
    frames = [f for i in range(0, len(stream), 7) for f in decoder.feed(stream[i : i + 7])]
    assert [(f.frame_type, f.seq) for f in frames] == [(v.frame_type, v.seq) for v in VECTORS]
    assert decoder.stats.damaged_frames == 0


# ---- CRC check value and frames to reject --------------------------------------------------


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x31C3


def test_document_states_the_crc_check_value() -> None:
    (block,) = fenced_blocks("crc")
    assert block["algorithm"] == "CRC-16/XMODEM"
    data = json.loads(block["input"]).encode("ascii")
    assert int(block["check"], 16) == crc16(data) == 0x31C3
    assert data == b"123456789"
    for fact in ("0x31C3", "0x1021", "initial value **0x0000**", "final XOR **0x0000**"):
        assert fact in FLAT_DOC


REJECTS = fenced_blocks("reject")
DAMAGE_COUNTERS = {"crc_errors", "cobs_errors", "short_frames", "overruns"}


def test_document_has_reject_examples() -> None:
    assert {block["counter"] for block in REJECTS} >= {"crc_errors", "cobs_errors", "short_frames"}


@pytest.mark.parametrize("block", REJECTS, ids=lambda b: b["name"])
def test_rejected_frame_is_counted_and_the_next_frame_decodes(block: dict[str, str]) -> None:
    assert block["counter"] in DAMAGE_COUNTERS
    decoder = FrameDecoder()
    assert decoder.feed(hex_bytes(block["wire"])) == []
    for counter in DAMAGE_COUNTERS:
        assert getattr(decoder.stats, counter) == (counter == block["counter"]), counter
    good = VECTORS[0]
    frames = decoder.feed(good.wire)
    assert [(f.frame_type, f.seq) for f in frames] == [(good.frame_type, good.seq)]


# ---- layouts, sizes and code tables ----------------------------------------------------------

STRUCT_TYPES = {"B": "u8", "H": "u16", "I": "u32", "Q": "u64", "h": "i16", "i": "i32"}


def layout_rows(fmt: str) -> list[tuple[int, str]]:
    """(offset, type) of each field of a little-endian struct format, in document notation."""
    assert fmt.startswith("<")
    rows = []
    offset = 0
    for count, code in re.findall(r"(\d*)([A-Za-z])", fmt[1:]):
        if code == "s":
            rows.append((offset, f"char[{count}]"))
            offset += int(count)
            continue
        for _ in range(int(count or 1)):
            rows.append((offset, STRUCT_TYPES[code]))
            offset += struct.calcsize("<" + code)
    return rows


def expected_table(cls: type[Message]) -> list[tuple[int, str, str]]:
    if cls is Samples:
        names = ["first_index", "phase_turns_q32", "freq_mhz", "drive_q16", "n", "counts"]
        rows = [*layout_rows(SAMPLES_HEADER.format), (SAMPLES_HEADER.size, "i16[n]")]
    else:
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        rows = layout_rows(cls.LAYOUT.format)
    assert len(names) == len(rows)
    # fixed-length byte fields: ASCII text (the device id) is char[n], anything else u8[n]
    return [
        (offset, name, kind if name == "device_id_raw" else kind.replace("char[", "u8["))
        for (offset, kind), name in zip(rows, names, strict=True)
    ]


@pytest.mark.parametrize(
    "cls", MESSAGE_TYPES.values(), ids=lambda c: f"0x{c.TYPE:02x}-{c.__name__}"
)
def test_document_layout_table_matches_the_code(cls: type[Message]) -> None:
    text = section(f"0x{cls.TYPE:02x} {wire_name(cls)}")
    rows = [
        (int(offset), name, kind)
        for offset, name, kind in re.findall(
            r"^\| (\d+) \| `(\w+)` \| ([\w\[\]]+) \|", text, re.MULTILINE
        )
    ]
    assert rows == expected_table(cls)
    if not rows:
        assert "Payload: none (0 bytes)" in text


def test_summary_table_lists_every_type_with_its_payload_size() -> None:
    rows = re.findall(
        r"^\| 0x([0-9a-f]{2}) \| ([A-Z_]+) \| [^|]+ \| ([^|]+?) \|",
        section("5. Message summary"),
        re.MULTILINE,
    )
    table = {int(code, 16): (name, size) for code, name, size in rows}
    assert set(table) == set(MESSAGE_TYPES)
    for code, cls in MESSAGE_TYPES.items():
        size = f"{SAMPLES_HEADER.size} + 2n" if cls is Samples else str(cls.LAYOUT.size)
        assert table[code] == (wire_name(cls), size)


def code_table(heading: str) -> set[tuple[int, str, str]]:
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| (.+?) \|$", section(heading), re.MULTILINE)
    return {(int(value), name, text) for value, name, text in rows}


def test_nak_reason_table_matches_the_code() -> None:
    want = {(int(r), r.name, NAK_TEXT[r]) for r in NakReason}
    assert code_table("8.1 NAK reasons") == want


def test_fault_code_table_matches_the_code() -> None:
    want = {(int(c), c.name, FAULT_TEXT[c]) for c in FaultCode}
    assert code_table("8.2 Fault codes") == want


def test_state_table_matches_the_code() -> None:
    got = {(value, name) for value, name, _ in code_table("8.3 Device states")}
    assert got == {(int(s), s.name) for s in DeviceState}


def test_capability_table_matches_the_code() -> None:
    got = {(value, name) for value, name, _ in code_table("8.4 Capability bits")}
    assert got == {(int(c), c.name) for c in Capability}


def test_document_states_version_and_frame_limits() -> None:
    assert DOC.startswith(f"# LIV plate wire protocol, version {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}\n")
    assert f"maximum raw frame is **{MAX_RAW_LEN} bytes**" in FLAT_DOC
    assert f"at most **{MAX_ENCODED_LEN} bytes**" in FLAT_DOC
    most = (MAX_RAW_LEN - MIN_RAW_LEN - SAMPLES_HEADER.size) // 2
    assert f"at most {most} samples" in FLAT_DOC


def device_constants() -> dict[str, float]:
    """Module-level numeric constants of the simulated firmware, read without importing it."""
    tree = ast.parse(DEVICE_SOURCE.read_text(encoding="utf-8"))
    constants: dict[str, float] = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, int | float)
        ):
            constants[node.targets[0].id] = float(node.value.value)
    return constants


def test_safety_constants_match_the_simulated_firmware() -> None:
    rows = re.findall(
        r"^\| `([A-Z_]+)` \| ([0-9.]+) \|", section("10. Safety functions"), re.MULTILINE
    )
    documented = {name: float(value) for name, value in rows}
    actual = device_constants()
    required = {
        "BLOCK_S",
        "WATCHDOG_S",
        "SAFE_RAMP_S",
        "FULL_SCALE_SLEW_S",
        "MAX_DRIVE",
        "MIN_FREQ_HZ",
        "MAX_FREQ_HZ",
        "OVERTEMP_C",
        "ACCEL_WINDOW_BLOCKS",
        "REST_TOLERANCE",
        "REST_BLOCKS",
    }
    assert required <= set(documented)
    for name, value in documented.items():
        assert actual.get(name) == value, (
            f"{name}: document says {value}, device.py {actual.get(name)}"
        )


# ---- rounding, ramp lengths and HELLO ranges -------------------------------------------------


def fraction_value(text: str) -> float:
    """A ``q16`` block's fraction: a decimal, or ``a / b`` computed as the document writes it."""
    num, sep, den = text.partition("/")
    return float(num) / float(den) if sep else float(num)


Q16_BLOCKS = fenced_blocks("q16")
RAMP_BLOCKS = fenced_blocks("ramp")


def test_document_has_rounding_and_ramp_vectors() -> None:
    assert len(Q16_BLOCKS) >= 4
    assert len(RAMP_BLOCKS) >= 6
    # The edges: a half that round() sends to even, an exact full-scale slew, a negative step.
    assert any(
        drive_to_q16(fraction_value(b["fraction"])) != round(fraction_value(b["fraction"]) * 65535)
        for b in Q16_BLOCKS
    )
    assert any(int(b["delta_q16"]) == 65535 and int(b["ramp_ms"]) == 0 for b in RAMP_BLOCKS)
    assert any(int(b["delta_q16"]) < 0 for b in RAMP_BLOCKS)


@pytest.mark.parametrize("block", Q16_BLOCKS, ids=lambda b: b["fraction"])
def test_q16_vector(block: dict[str, str]) -> None:
    assert set(block) == {"fraction", "q16"}
    assert drive_to_q16(fraction_value(block["fraction"])) == int(block["q16"])


@pytest.mark.parametrize(
    "block",
    RAMP_BLOCKS,
    ids=lambda b: f"{b['delta_q16']}q16-{b['ramp_ms']}ms-{b['sample_rate_hz']}Hz",
)
def test_ramp_vector(block: dict[str, str]) -> None:
    assert set(block) == {"delta_q16", "ramp_ms", "sample_rate_hz", "slew_full_scale_ms", "n"}
    n = ramp_samples(
        int(block["delta_q16"]),
        int(block["ramp_ms"]),
        int(block["sample_rate_hz"]),
        int(block["slew_full_scale_ms"]),
    )
    assert n == int(block["n"])


def test_hello_range_table_matches_the_code() -> None:
    rows = re.findall(
        r"^\| `(\w+)` \| (\d+) \| (\d+) \| ([^|]*?) \|", section("0x81 HELLO"), re.MULTILINE
    )
    documented = {name: (int(lo), int(hi), unit.strip()) for name, lo, hi, unit in rows}
    assert documented == HELLO_RANGES


def test_fault_during_a_stop_is_stated_once() -> None:
    """1.0 said "restart the ramp" in section 10 and "keep the ramp" in section 12."""
    assert "restarts it from the amplitude reached" not in FLAT_DOC
    assert "keeps that ramp (and its earlier end)" not in FLAT_DOC
    assert FLAT_DOC.count("never lengthens the time to zero") == 1
    assert "section 10" in section("12. Settled points")


def test_the_reference_ceiling_is_stated_as_the_dose_table_holds_it() -> None:
    """Section 10 gives the reference device's ceiling; it comes from the dose table."""
    row = re.search(
        r"^\| HELLO `ceiling_mg` \| (\d+) \| mg \|", section("10. Safety functions"), re.M
    )
    assert row, "section 10 does not state the reference device's ceiling_mg"
    assert int(row.group(1)) == round(DOSE_LIMITS.firmware_ceiling_g * 1000)
    boot = next(v for v in VECTORS if v.name == "hello-boot")
    assert boot.fields["ceiling_mg"] == int(row.group(1))


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if v.message == "HELLO"], ids=lambda v: v.name
)
def test_every_hello_vector_is_one_a_host_accepts(vector: Vector) -> None:
    hello = build(vector)
    assert isinstance(hello, Hello)
    check_hello(hello)


# ---- 2.1: identity and countersignatures ------------------------------------------------------


def _vector(name: str) -> Vector:
    return next(v for v in VECTORS if v.name == name)


def test_countersignature_vector_verifies_with_the_documented_test_key() -> None:
    """The 2.1 vectors are one consistent exchange: the documented seed gives the IDENTITY's
    key, the heads chain as section 7 says, and the signature verifies over the signed bytes."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from firmware_bridge.countersign import GENESIS_HEAD, next_head, signature_problem

    seed = hashlib.sha256(b"LIV test vector key").digest()
    assert f"`{seed.hex()}`" in DOC
    public = (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )
    identity = _vector("identity").fields
    request = _vector("countersign").fields
    answer = _vector("countersignature").fields
    assert identity["public_key"] == public.hex()
    first = hashlib.sha256(b"first record").digest()
    assert identity["head"] == next_head(GENESIS_HEAD, 1, first).hex()
    assert request["digest"] == hashlib.sha256(b"record").digest().hex() == answer["digest"]
    assert answer["counter"] == request["expected_counter"] == identity["counter"] + 1
    assert answer["prev_head"] == identity["head"]
    device_id_raw = b"SIM-0001".ljust(16, b"\x00")
    args = [bytes.fromhex(answer[k]) for k in ("digest", "prev_head", "new_head", "signature")]
    assert signature_problem(public, device_id_raw, answer["counter"], *args) is None
    tampered = bytearray(args[0])
    tampered[0] ^= 1
    assert signature_problem(public, device_id_raw, answer["counter"], bytes(tampered), *args[1:])


def test_document_states_the_signing_prefixes() -> None:
    from firmware_bridge.countersign import HEAD_DOMAIN, SIGN_DOMAIN

    assert f'"{SIGN_DOMAIN[:-1].decode()}" 0x00' in DOC
    assert f'"{HEAD_DOMAIN[:-1].decode()}" 0x00' in DOC
