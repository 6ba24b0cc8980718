"""Frame codec and message layer: round trips, a decoder that survives any byte stream.

The property-based tests compare ``FrameDecoder`` with a small reference model written here from
docs/protocol.md (section 2): its own COBS decoder, its own bitwise CRC-16/XMODEM and its own
sequence-gap rule, so a mistake shared by the codec and its dependencies still shows up.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest
import serial
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.client import DeviceClient
from firmware_bridge.codec import (
    MAX_ENCODED_LEN,
    MAX_RAW_LEN,
    MIN_RAW_LEN,
    SEQUENCE_RESTART_TYPES,
    FrameDecoder,
    LinkStats,
    RawFrame,
    crc16,
    encode_frame,
)
from firmware_bridge.errors import IncompatibleVersionError, InvalidDeviceInfoError, ProtocolError
from firmware_bridge.protocol import (
    COIL_TEMP_UNKNOWN,
    DEVICE_ID_LEN,
    HELLO_RANGES,
    MAX_BLOCK_SAMPLES,
    MESSAGE_TYPES,
    PROTOCOL_MAJOR,
    SAMPLES_HEADER,
    Ack,
    ClearFault,
    Countersign,
    Countersignature,
    Fault,
    FaultCode,
    Heartbeat,
    Hello,
    HelloRequest,
    Identity,
    IdentityRequest,
    Message,
    Nak,
    NakReason,
    Samples,
    SetDrive,
    SetFrequency,
    SetOutput,
    Status,
    StatusRequest,
    check_hello,
    decode_message,
    drive_to_q16,
    encode_message,
    hz_to_mhz,
    phase_to_q32,
    ramp_samples,
)

PROPERTY = settings(max_examples=200, deadline=None)
MAX_SAMPLES = (MAX_RAW_LEN - MIN_RAW_LEN - SAMPLES_HEADER.size) // 2
HELLO_TYPE = Hello.TYPE

# ---- helpers ------------------------------------------------------------------------------


def fields_of(message: Message) -> dict[str, Any]:
    """A message's fields as plain Python values (arrays become lists) for comparison."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, f.name)
        out[f.name] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def assert_same_message(got: Message, want: Message) -> None:
    assert type(got) is type(want)
    assert fields_of(got) == fields_of(want)
    if isinstance(got, Samples):
        assert got.counts.dtype == np.int16


def decode_all(wire: bytes) -> tuple[list[RawFrame], LinkStats]:
    decoder = FrameDecoder()
    frames = decoder.feed(wire)
    return frames, decoder.stats


def frame_wire(frame: RawFrame) -> bytes:
    return encode_frame(frame.frame_type, frame.seq, frame.payload)


def hb(seq: int) -> bytes:
    return encode_frame(Heartbeat.TYPE, seq)


def samples(first: int, counts: list[int], *, drive_q16: int = 0) -> Samples:
    return Samples(first, 0x4000_0000, 30_000, drive_q16, np.array(counts, dtype=np.int16))


HELLO_EXAMPLE = Hello(
    1,
    0,
    1,
    2,
    3,
    b"PLATE-7".ljust(DEVICE_ID_LEN, b"\x00"),
    1600,
    32,
    256,
    58_982,
    20_000,
    150_000,
    500,
    200,
    200,
    100,
    600,
    0b1101,
    1,
)

EXAMPLES: list[Message] = [
    HelloRequest(),
    HelloRequest(255, 254),
    SetFrequency(30_000),
    SetFrequency(0xFFFF_FFFF),
    SetDrive(32_768, 2_000),
    SetDrive(0, 0),
    SetDrive(0xFFFF, 0xFFFF),
    SetOutput(1),
    SetOutput(0),
    Heartbeat(),
    StatusRequest(),
    ClearFault(),
    HELLO_EXAMPLE,
    Hello(
        255,
        255,
        255,
        255,
        255,
        b"\xff" * 16,
        65535,
        255,
        65535,
        65535,
        2**32 - 1,
        2**32 - 1,
        65535,
        65535,
        65535,
        65535,
        65535,
        2**32 - 1,
        255,
    ),
    Ack(65535, 0x03),
    Nak(7, 0x03, int(NakReason.OUT_OF_RANGE)),
    samples(0, [256] * 32),
    samples(2**64 - 1, [-32768, 32767, 0, -1], drive_q16=65535),
    samples(123, []),
    samples(6400, list(range(-56, 57))),  # the largest block that fits a frame
    Status(1, 1, 30_000, 13_107, 19_660, 0, 6_432, 0, 0, 3_650),
    Status(3, 0, 0, 0, 0, int(FaultCode.HOST_WATCHDOG), 2**64 - 1, 65535, 65535, -32768),
    Status(0, 0, 30_000, 0, 0, 0, 0, 0, 0, COIL_TEMP_UNKNOWN),
    Fault(int(FaultCode.HOST_WATCHDOG), 12_800, 520),
    Fault(int(FaultCode.INTERNAL), 0, -(2**31)),
    IdentityRequest(),
    Countersign(b"\x00" * 32, 0),
    Countersign(b"\xff" * 32, 2**32 - 1),
    Identity(b"\x11" * 32, 7, b"\x22" * 32),
    Countersignature(2**32 - 1, b"\x00" * 32, b"\x01" * 32, b"\x02" * 32, b"\xff" * 64),
]


# ---- round trips ---------------------------------------------------------------------------


def test_examples_cover_every_message_type() -> None:
    assert {type(m).TYPE for m in EXAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("seq", [0, 1, 255, 256, 65535])
def test_every_message_type_round_trips(message: Message, seq: int) -> None:
    wire = encode_message(message, seq)
    assert wire.endswith(b"\x00")
    assert wire.count(0) == 1, "COBS output must not contain the delimiter"
    assert len(wire) <= MAX_ENCODED_LEN + 1
    frames, stats = decode_all(wire)
    assert len(frames) == 1
    assert frames[0].frame_type == message.TYPE
    assert frames[0].seq == seq
    assert_same_message(decode_message(frames[0]), message)
    assert stats.frames == 1
    assert stats.damaged_frames == 0


def test_sequence_number_is_taken_modulo_65536() -> None:
    frames, _ = decode_all(encode_frame(Heartbeat.TYPE, 65536 + 9))
    assert frames[0].seq == 9


def test_crc_check_value() -> None:
    assert crc16(b"123456789") == 0x31C3
    assert crc16(b"") == 0x0000


def test_raw_frame_layout_is_little_endian_with_crc_last() -> None:
    wire = encode_frame(0x03, 0x1234, b"\xaa\xbb")
    raw = cobs.decode(wire[:-1])
    assert raw[:5] == bytes([0x03, 0x34, 0x12, 0xAA, 0xBB])
    assert raw[5:] == struct.pack("<H", crc16(raw[:5]))


def test_longest_frame_encodes_and_decodes() -> None:
    payload = bytes(range(1, 256))[: MAX_RAW_LEN - MIN_RAW_LEN]
    wire = encode_frame(0x84, 3, payload)
    assert len(wire) == MAX_ENCODED_LEN + 1
    frames, stats = decode_all(wire)
    assert frames == [RawFrame(0x84, 3, payload)]
    assert stats.overruns == 0


def test_frame_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(0x84, 0, bytes(MAX_RAW_LEN - MIN_RAW_LEN + 1))


def test_largest_sample_block_is_113_samples() -> None:
    assert MAX_SAMPLES == 113
    encode_message(samples(0, [1] * MAX_SAMPLES), 0)
    with pytest.raises(ValueError, match="exceeds"):
        encode_message(samples(0, [1] * (MAX_SAMPLES + 1)), 0)


# ---- message layer errors ------------------------------------------------------------------


def test_unknown_frame_type_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="unknown frame type 0x7f"):
        decode_message(RawFrame(0x7F, 0, b""))


@pytest.mark.parametrize(
    ("cls", "size"),
    [
        (cls, size)
        for cls in MESSAGE_TYPES.values()
        if cls is not Samples
        for size in (cls.LAYOUT.size - 1, cls.LAYOUT.size + 1, 100)
        if size >= 0
    ],
    ids=str,
)
def test_wrong_payload_length_is_a_protocol_error(cls: type[Message], size: int) -> None:
    with pytest.raises(ProtocolError, match="payload is"):
        decode_message(RawFrame(cls.TYPE, 0, bytes(size)))


def test_samples_shorter_than_its_header_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="too short"):
        decode_message(RawFrame(Samples.TYPE, 0, bytes(SAMPLES_HEADER.size - 1)))


@pytest.mark.parametrize("extra", [-2, -1, 1, 2])
def test_samples_count_disagreeing_with_length_is_a_protocol_error(extra: int) -> None:
    payload = samples(0, [1, 2, 3]).pack()
    bad = payload[: len(payload) + extra] if extra < 0 else payload + bytes(extra)
    with pytest.raises(ProtocolError, match="for 3 samples"):
        decode_message(RawFrame(Samples.TYPE, 0, bad))


# ---- FrameDecoder: splits, garbage, damage -------------------------------------------------

THREE = [
    encode_message(SetFrequency(30_000), 10),
    encode_message(SetDrive(19_660, 500), 11),
    encode_message(samples(0, [256, 255, 257, 256]), 12),
]
STREAM = b"".join(THREE)


def expected_three() -> list[RawFrame]:
    return decode_all(STREAM)[0]


def test_stream_of_three_frames_decodes() -> None:
    frames = expected_three()
    assert [f.seq for f in frames] == [10, 11, 12]
    assert [f.frame_type for f in frames] == [0x02, 0x03, 0x84]


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_split_at_every_byte_boundary(cut: int) -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:])
    assert frames == expected_three()
    assert decoder.stats.damaged_frames == 0
    assert decoder.stats.bytes_received == len(STREAM)


def test_byte_by_byte_feeding() -> None:
    decoder = FrameDecoder()
    frames = [f for i in range(len(STREAM)) for f in decoder.feed(STREAM[i : i + 1])]
    assert frames == expected_three()


def test_empty_feeds_and_repeated_delimiters_are_harmless() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"\x00\x00\x00") == []
    frames = decoder.feed(b"\x00".join(THREE))
    assert frames == expected_three()
    assert decoder.stats.damaged_frames == 0


def test_garbage_ended_by_a_delimiter_before_the_frames_costs_nothing_else() -> None:
    frames, stats = decode_all(b"\x13\x37\xff\x42\x00" + STREAM)
    assert frames == expected_three()
    assert stats.damaged_frames == 1


def test_garbage_without_delimiter_swallows_only_the_next_frame() -> None:
    frames, stats = decode_all(b"\x13\x37\xff\x42" + STREAM)
    assert frames == expected_three()[1:]
    assert stats.damaged_frames == 1


def test_garbage_between_frames_resyncs() -> None:
    junk = b"\x55\xaa\x01\x02\x03"
    frames, stats = decode_all(THREE[0] + junk + b"\x00" + THREE[1] + junk + THREE[2])
    assert frames == expected_three()[:2]
    assert stats.damaged_frames == 2
    # The frame after the one that junk merged into decodes again.
    decoder = FrameDecoder()
    decoder.feed(THREE[0] + junk + THREE[1])
    assert decoder.feed(THREE[2]) == expected_three()[2:]


@pytest.mark.parametrize(
    ("position", "xor"),
    [
        (position, xor)
        for position in range(len(THREE[1]) - 1)
        for xor in (0x01, 0x80, 0xFF)
        if THREE[1][position] ^ xor  # a flip to 0x00 is a stray delimiter, tested below
    ],
)
def test_a_corrupted_byte_is_counted_and_the_next_frame_decodes(position: int, xor: int) -> None:
    middle = bytearray(THREE[1])
    middle[position] ^= xor
    frames, stats = decode_all(THREE[0] + bytes(middle) + THREE[2])
    good = expected_three()
    assert frames == [good[0], good[2]]
    assert stats.crc_errors + stats.cobs_errors == 1
    assert stats.short_frames == stats.overruns == 0
    assert stats.frames == 2


@pytest.mark.parametrize("position", range(1, len(THREE[1]) - 1))
def test_a_stray_delimiter_inside_a_frame_is_counted_and_the_next_frame_decodes(
    position: int,
) -> None:
    middle = THREE[1][:position] + b"\x00" + THREE[1][position:]
    frames, stats = decode_all(THREE[0] + middle + THREE[2])
    good = expected_three()
    assert frames == [good[0], good[2]]
    assert stats.damaged_frames == 2


def test_corrupted_crc_counts_a_crc_error() -> None:
    raw = bytearray(cobs.decode(THREE[0][:-1]))
    raw[-1] ^= 0x01
    frames, stats = decode_all(cobs.encode(bytes(raw)) + b"\x00" + THREE[1])
    assert frames == expected_three()[1:2]
    assert stats.crc_errors == 1
    assert stats.damaged_frames == 1


def test_bad_cobs_counts_a_cobs_error() -> None:
    frames, stats = decode_all(b"\x05\x01\x02\x00" + THREE[0])
    assert frames == expected_three()[:1]
    assert stats.cobs_errors == 1
    assert stats.damaged_frames == 1


@pytest.mark.parametrize("raw_len", range(MIN_RAW_LEN))
def test_frame_shorter_than_header_and_crc_counts_a_short_frame(raw_len: int) -> None:
    frames, stats = decode_all(cobs.encode(bytes([0x05, 0x01, 0x00, 0x07])[:raw_len]) + b"\x00")
    assert frames == []
    assert stats.short_frames == 1
    assert stats.damaged_frames == 1


@pytest.mark.parametrize("junk_len", [MAX_ENCODED_LEN + 1, 1000, 10_000])
def test_overlong_junk_counts_one_overrun_and_is_dropped(junk_len: int) -> None:
    junk = bytes((i % 255) + 1 for i in range(junk_len))
    decoder = FrameDecoder()
    # Fed in pieces, so the limit is enforced while bytes arrive, not only at the delimiter.
    for start in range(0, junk_len, 97):
        assert decoder.feed(junk[start : start + 97]) == []
    assert decoder.stats.overruns == 0, "counted when its delimiter arrives"
    frames = decoder.feed(b"\x00" + STREAM)
    assert frames == expected_three()
    assert decoder.stats.overruns == 1
    assert decoder.stats.damaged_frames == 1


def test_endless_junk_does_not_grow_the_buffer() -> None:
    piece = bytes((i % 255) + 1 for i in range(4096))
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        for _ in range(512):  # 2 MiB without a delimiter
            decoder.feed(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert decoder.feed(b"\x00" + THREE[0]) == expected_three()[:1]
    assert decoder.stats.overruns == 1


def test_overrun_swallows_the_frame_it_runs_into_and_the_next_one_decodes() -> None:
    junk = b"\x11" * (MAX_ENCODED_LEN + 5)
    frames, stats = decode_all(junk + STREAM)
    assert frames == expected_three()[1:]
    assert stats.overruns == 1


def test_junk_of_exactly_the_longest_encoded_length_is_not_an_overrun() -> None:
    frames, stats = decode_all(b"\x11" * MAX_ENCODED_LEN + b"\x00" + THREE[0])
    assert frames == expected_three()[:1]
    assert stats.overruns == 0
    assert stats.damaged_frames == 1


# ---- FrameDecoder: sequence numbers -----------------------------------------------------------


def lost_after(frames: list[bytes]) -> int:
    decoder = FrameDecoder()
    for wire in frames:
        decoder.feed(wire)
    assert decoder.stats.frames == len(frames)
    return decoder.stats.lost_frames


def test_first_frame_sets_the_sequence_without_counting() -> None:
    assert lost_after([hb(40_000)]) == 0


def test_consecutive_sequence_numbers_lose_nothing() -> None:
    assert lost_after([hb(s) for s in range(100, 120)]) == 0


def test_sequence_gap_counts_lost_frames() -> None:
    assert lost_after([hb(0), hb(1), hb(2), hb(5), hb(6)]) == 2
    assert lost_after([hb(0), hb(10)]) == 9


def test_wrap_from_65535_to_0_is_not_a_loss() -> None:
    assert lost_after([hb(65534), hb(65535), hb(0), hb(1)]) == 0


def test_gap_across_the_wrap_is_counted() -> None:
    assert lost_after([hb(65534), hb(2)]) == 3


def test_repeated_frame_is_not_a_loss() -> None:
    assert lost_after([hb(7), hb(7)]) == 0


def test_hello_with_seq_0_restarts_the_count() -> None:
    hello = encode_frame(HELLO_TYPE, 0, HELLO_EXAMPLE.pack())
    assert HELLO_TYPE in SEQUENCE_RESTART_TYPES
    # 65001 -> 0 would be a gap of 534 frames; a boot HELLO (seq 0) is a fresh start.
    assert lost_after([hb(65000), hb(65001), hello, hb(1), hb(2)]) == 0
    assert lost_after([hb(65000), hb(65001), hb(0), hb(1), hb(2)]) == 534


def test_hello_request_with_seq_0_restarts_the_count() -> None:
    request = encode_frame(HelloRequest.TYPE, 0, HelloRequest().pack())
    assert lost_after([hb(500), hb(501), request, hb(1), hb(2)]) == 0


def test_a_hello_answer_is_counted_like_any_frame() -> None:
    answer = encode_frame(HELLO_TYPE, 9_000, HELLO_EXAMPLE.pack())
    assert lost_after([hb(3), answer, hb(9_001), hb(9_003)]) == 8996 + 1


def test_late_and_repeated_frames_do_not_move_the_expectation_back() -> None:
    assert lost_after([hb(5), hb(6), hb(7), hb(5), hb(8)]) == 0
    assert lost_after([hb(5), hb(7), hb(6), hb(8)]) == 1


def test_a_damaged_frame_also_shows_as_a_sequence_gap() -> None:
    damaged = bytearray(hb(1))
    damaged[-2] ^= 0x40
    decoder = FrameDecoder()
    for wire in (hb(0), bytes(damaged), hb(2)):
        decoder.feed(wire)
    assert decoder.stats.crc_errors == 1
    assert decoder.stats.lost_frames == 1


# ---- reference model for the property tests --------------------------------------------------


def ref_crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def ref_cobs_decode(chunk: bytes) -> bytes | None:
    out = bytearray()
    i = 0
    while i < len(chunk):
        code = chunk[i]
        end = i + code
        if code == 0 or end > len(chunk):
            return None
        out += chunk[i + 1 : end]
        i = end
        if code < 0xFF and i < len(chunk):
            out.append(0)
    return bytes(out)


def reference_decode(stream: bytes) -> tuple[list[RawFrame], LinkStats]:
    """What docs/protocol.md section 2 says a receiver makes of ``stream``."""
    stats = LinkStats(bytes_received=len(stream))
    frames: list[RawFrame] = []
    expected: int | None = None
    *chunks, _pending = stream.split(b"\x00")
    for chunk in chunks:
        if len(chunk) > MAX_ENCODED_LEN:
            stats.overruns += 1
            continue
        if not chunk:
            continue
        raw = ref_cobs_decode(chunk)
        if raw is None:
            stats.cobs_errors += 1
        elif len(raw) < 5:
            stats.short_frames += 1
        elif ref_crc16(raw[:-2]) != raw[-2] | raw[-1] << 8:
            stats.crc_errors += 1
        else:
            frame_type, seq = raw[0], raw[1] | raw[2] << 8
            if expected is None or (seq == 0 and frame_type in (0x01, 0x81)):
                expected = (seq + 1) % 65536
            else:
                gap = (seq - expected) % 65536
                if gap < 32768:
                    stats.lost_frames += gap
                    expected = (seq + 1) % 65536
            stats.frames += 1
            frames.append(RawFrame(frame_type, seq, raw[3:-2]))
    return frames, stats


def feed_in_pieces(stream: bytes, cuts: list[int]) -> tuple[list[RawFrame], LinkStats]:
    decoder = FrameDecoder()
    frames: list[RawFrame] = []
    start = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        frames += decoder.feed(stream[start:cut])
        start = cut
    return frames, decoder.stats


def check_against_model(stream: bytes, cuts: list[int]) -> list[RawFrame]:
    frames, stats = feed_in_pieces(stream, cuts)
    want_frames, want_stats = reference_decode(stream)
    assert frames == want_frames
    assert stats == want_stats
    for frame in frames:
        # Re-encoding a yielded frame reproduces bytes that were really on the line.
        assert frame_wire(frame) in b"\x00" + stream
        assert len(frame.payload) <= MAX_RAW_LEN - MIN_RAW_LEN
    return frames


def test_reference_model_agrees_with_the_example_stream() -> None:
    assert check_against_model(STREAM, []) == expected_three()


# ---- property-based tests --------------------------------------------------------------------

cuts_st = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@PROPERTY
@given(stream=st.binary(max_size=1500), cuts=cuts_st)
def test_random_bytes_never_raise_and_match_the_model(stream: bytes, cuts: list[int]) -> None:
    check_against_model(stream, cuts)


@PROPERTY
@given(
    stream=st.lists(
        st.sampled_from([b"\x00", b"\x01", b"\x02", b"\x03", b"\xff", b"\x05\x05"]), max_size=400
    ).map(b"".join),
    cuts=cuts_st,
)
def test_delimiter_heavy_streams_never_raise_and_match_the_model(
    stream: bytes, cuts: list[int]
) -> None:
    check_against_model(stream, cuts)


message_st = st.sampled_from(EXAMPLES)
seq_st = st.integers(min_value=0, max_value=65535)
mutation_st = st.tuples(
    st.sampled_from(["flip", "insert", "delete", "truncate"]),
    st.floats(min_value=0.0, max_value=1.0),
    st.integers(min_value=1, max_value=255),
)


def mutate(wire: bytes, kind: str, where: float, value: int) -> bytes:
    pos = min(len(wire) - 1, int(where * len(wire)))
    if kind == "flip":
        return wire[:pos] + bytes([wire[pos] ^ value]) + wire[pos + 1 :]
    if kind == "insert":
        return wire[:pos] + bytes([value % 256 if value % 3 else 0]) + wire[pos:]
    if kind == "delete":
        return wire[:pos] + wire[pos + 1 :]
    return wire[:pos]


@PROPERTY
@given(
    plan=st.lists(
        st.tuples(message_st, seq_st, st.lists(mutation_st, max_size=3), st.binary(max_size=6)),
        min_size=1,
        max_size=8,
    ),
    cuts=cuts_st,
)
def test_mutated_streams_never_raise_and_intact_frames_survive(
    plan: list[tuple[Message, int, list[tuple[str, float, int]], bytes]], cuts: list[int]
) -> None:
    pieces: list[bytes] = []
    intact: list[tuple[int, RawFrame]] = []  # (offset in stream, frame) of unmutated frames
    offset = 0
    for message, seq, mutations, junk in plan:
        wire = encode_message(message, seq)
        for kind, where, value in mutations:
            if wire:
                wire = mutate(wire, kind, where, value)
        if not mutations:
            intact.append((offset, RawFrame(message.TYPE, seq, message.pack())))
        pieces += [wire, junk]
        offset += len(wire) + len(junk)
    stream = b"".join(pieces)
    frames = check_against_model(stream, cuts)
    # An unmutated frame that starts the stream or follows a delimiter must come out as sent,
    # in order, whatever damage surrounds it.
    must = [frame for start, frame in intact if start == 0 or stream[start - 1] == 0]
    it = iter(frames)
    assert all(any(got == want for got in it) for want in must)


@PROPERTY
@given(plan=st.lists(st.tuples(message_st, seq_st), max_size=10), cuts=cuts_st)
def test_unmutated_streams_decode_to_exactly_what_was_sent(
    plan: list[tuple[Message, int]], cuts: list[int]
) -> None:
    stream = b"".join(encode_message(m, s) for m, s in plan)
    frames, stats = feed_in_pieces(stream, cuts)
    assert [(f.frame_type, f.seq) for f in frames] == [(m.TYPE, s) for m, s in plan]
    for frame, (message, _) in zip(frames, plan, strict=True):
        assert_same_message(decode_message(frame), message)
    assert stats.damaged_frames == 0


def layout_strategy(fmt: str) -> st.SearchStrategy[tuple[Any, ...]]:
    """Every value the struct format can carry, field by field."""
    ranges = {"B": (1, False), "H": (2, False), "I": (4, False), "Q": (8, False)}
    ranges |= {"b": (1, True), "h": (2, True), "i": (4, True), "q": (8, True)}
    parts: list[st.SearchStrategy[Any]] = []
    for count, code in re.findall(r"(\d*)([A-Za-z])", struct.Struct(fmt).format.lstrip("<")):
        if code == "s":  # fixed-length bytes: the device id, keys, digests, signatures
            parts.append(st.binary(min_size=int(count), max_size=int(count)))
            continue
        size, signed = ranges[code]
        lo = -(2 ** (8 * size - 1)) if signed else 0
        hi = 2 ** (8 * size - 1) - 1 if signed else 2 ** (8 * size) - 1
        parts.append(st.integers(min_value=lo, max_value=hi))
    return st.tuples(*parts)


samples_st = st.builds(
    Samples,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 65535),
    st.lists(st.integers(-32768, 32767), max_size=MAX_SAMPLES).map(
        lambda c: np.array(c, dtype=np.int16)
    ),
)
any_message_st = st.one_of(
    samples_st,
    *[
        layout_strategy(cls.LAYOUT.format).map(lambda values, cls=cls: cls(*values))
        for cls in MESSAGE_TYPES.values()
        if cls is not Samples
    ],
)


@PROPERTY
@given(message=any_message_st, seq=seq_st)
def test_any_message_round_trips(message: Message, seq: int) -> None:
    frames, _ = decode_all(encode_message(message, seq))
    assert [(f.frame_type, f.seq) for f in frames] == [(message.TYPE, seq)]
    assert_same_message(decode_message(frames[0]), message)


payload_st = st.one_of(
    st.binary(max_size=MAX_RAW_LEN - MIN_RAW_LEN),
    st.sampled_from([cls.LAYOUT.size for cls in MESSAGE_TYPES.values()]).flatmap(
        lambda n: st.binary(min_size=n, max_size=n)
    ),
    st.lists(st.integers(-32768, 32767), max_size=MAX_SAMPLES).flatmap(
        lambda counts: st.binary(
            min_size=SAMPLES_HEADER.size - 1, max_size=SAMPLES_HEADER.size
        ).map(
            lambda head: head[:-1] + bytes([len(counts)]) + struct.pack(f"<{len(counts)}h", *counts)
        )
    ),
)
type_st = st.one_of(st.sampled_from(sorted(MESSAGE_TYPES)), st.integers(0, 255))


@PROPERTY
@given(frame_type=type_st, seq=seq_st, payload=payload_st)
def test_decode_message_raises_only_protocol_error(
    frame_type: int, seq: int, payload: bytes
) -> None:
    frame = RawFrame(frame_type, seq, payload)
    try:
        message = decode_message(frame)
    except ProtocolError:
        cls = MESSAGE_TYPES.get(frame_type)
        if cls is not None and cls is not Samples:
            assert len(payload) != cls.LAYOUT.size
        return
    # Whatever decodes is lossless: packing it again gives the same payload.
    assert isinstance(message, MESSAGE_TYPES[frame_type])
    assert message.pack() == payload


# ---- rounding and ramp lengths (docs/protocol.md 4 and 9.4) --------------------------------


@pytest.mark.parametrize(
    ("fraction", "q16"),
    [
        (0.0, 0),
        (0.5 / 65535, 1),  # a half rounds up (Python's round() would give 0)
        (2.5 / 65535, 3),  # round() would give 2 (half to even)
        (0.3, 19_661),  # 19660.5 rounds up
        (0.5, 32_768),  # 32767.5
        (0.9, 58_982),  # 58981.5: the reference device's max_drive_q16
        (1.0, 65_535),
    ],
)
def test_q16_rounds_half_up(fraction: float, q16: int) -> None:
    assert drive_to_q16(fraction) == q16


@pytest.mark.parametrize(("freq_hz", "mhz"), [(30.0, 30_000), (30.0005, 30_001), (0.0025, 3)])
def test_millihertz_round_half_up(freq_hz: float, mhz: int) -> None:
    assert hz_to_mhz(freq_hz) == mhz


@pytest.mark.parametrize(
    ("turns", "q32"), [(0.0, 0), (0.25, 0x4000_0000), (0.5 / 2**32, 1), (1.0 - 0.4 / 2**32, 0)]
)
def test_phase_rounds_half_up_modulo_one_turn(turns: float, q32: int) -> None:
    assert phase_to_q32(turns) == q32


@pytest.mark.parametrize(
    ("delta_q16", "ramp_ms", "fs", "slew_ms", "n"),
    [
        (0, 0, 1600, 100, 1),  # never shorter than one sample
        (65_535, 0, 1600, 100, 160),  # full scale in exactly the slew time: not 161
        (-65_535, 0, 1600, 100, 160),  # down as up
        (32_768, 0, 1600, 100, 81),  # 80.0012 rounds up
        (409, 0, 1600, 100, 1),  # 0.9985 of a sample's slew: one sample
        (410, 0, 1600, 100, 2),  # just over a sample's slew: two
        (32_768, 2000, 1600, 100, 3200),  # the requested time wins when it is longer
        (1, 1, 1500, 100, 2),  # 1.5 samples rounds half up
        (1, 3, 1500, 100, 5),  # 4.5 samples rounds half up (round() would give 4)
        (1, 65_535, 20_000, 1, 1_310_700),  # longest ramp, integers throughout
    ],
)
def test_ramp_length(delta_q16: int, ramp_ms: int, fs: int, slew_ms: int, n: int) -> None:
    assert ramp_samples(delta_q16, ramp_ms, fs, slew_ms) == n


@given(
    delta_q16=st.integers(-65535, 65535),
    ramp_ms=st.integers(0, 65535),
    fs=st.integers(400, 20_000),
    slew_ms=st.integers(1, 1000),
)
def test_ramp_never_exceeds_the_slew_limit(
    delta_q16: int, ramp_ms: int, fs: int, slew_ms: int
) -> None:
    n = ramp_samples(delta_q16, ramp_ms, fs, slew_ms)
    # Per sample at most full scale in slew_ms (exact rational comparison).
    assert abs(delta_q16) * slew_ms * fs <= 65535 * 1000 * n
    # And no longer than needed: one sample less would break the limit or the requested time.
    if n > 1:
        assert (
            abs(delta_q16) * slew_ms * fs > 65535 * 1000 * (n - 1)
            or (ramp_ms * fs + 500) // 1000 == n
        )


# ---- HELLO ranges (docs/protocol.md 7) -------------------------------------------------------

VALID_HELLO = dataclasses.replace(HELLO_EXAMPLE, protocol_major=PROTOCOL_MAJOR)

# (field, value, other fields that make the edge reachable, accepted?)
HELLO_EDGES: list[tuple[str, Any, dict[str, Any], bool]] = [
    ("sample_rate_hz", 399, {"block_samples": 8}, False),
    ("sample_rate_hz", 400, {"block_samples": 8}, True),
    ("sample_rate_hz", 20_000, {}, True),
    ("sample_rate_hz", 20_001, {}, False),
    ("sample_rate_hz", 0, {}, False),
    ("block_samples", 0, {}, False),
    ("block_samples", 1, {}, True),
    ("block_samples", MAX_BLOCK_SAMPLES, {"sample_rate_hz": 3200}, True),
    ("block_samples", MAX_BLOCK_SAMPLES + 1, {"sample_rate_hz": 3200}, False),
    ("counts_per_g", 31, {}, False),
    ("counts_per_g", 32, {}, True),
    ("counts_per_g", 16_383, {}, True),
    ("counts_per_g", 16_384, {}, False),
    ("max_drive_q16", 0, {}, False),
    ("max_drive_q16", 1, {}, True),
    ("max_drive_q16", 65_535, {}, True),  # the type's maximum (full scale) is allowed
    ("min_freq_mhz", 999, {}, False),
    ("min_freq_mhz", 1_000, {}, True),
    ("min_freq_mhz", 1_000_000, {"max_freq_mhz": 1_000_000, "sample_rate_hz": 3200}, True),
    ("min_freq_mhz", 1_000_001, {"max_freq_mhz": 1_000_000, "sample_rate_hz": 3200}, False),
    ("max_freq_mhz", 999, {}, False),
    ("max_freq_mhz", 1_000, {"min_freq_mhz": 1_000}, True),
    ("max_freq_mhz", 1_000_000, {"sample_rate_hz": 3200}, True),
    ("max_freq_mhz", 1_000_001, {"sample_rate_hz": 3200}, False),
    ("watchdog_ms", 0, {}, False),
    ("watchdog_ms", 199, {}, False),
    ("watchdog_ms", 200, {}, True),
    ("watchdog_ms", 2_000, {}, True),
    ("watchdog_ms", 2_001, {}, False),
    ("watchdog_ms", 60_000, {}, False),
    ("watchdog_ramp_ms", 9, {"slew_full_scale_ms": 1}, False),
    ("watchdog_ramp_ms", 10, {"slew_full_scale_ms": 10}, True),
    ("watchdog_ramp_ms", 1_000, {}, True),
    ("watchdog_ramp_ms", 1_001, {}, False),
    ("stop_ramp_ms", 9, {"slew_full_scale_ms": 1}, False),
    ("stop_ramp_ms", 10, {"slew_full_scale_ms": 10}, True),
    ("stop_ramp_ms", 1_000, {}, True),
    ("stop_ramp_ms", 1_001, {}, False),
    ("slew_full_scale_ms", 0, {}, False),
    ("slew_full_scale_ms", 1, {}, True),
    ("slew_full_scale_ms", 1_000, {"max_drive_q16": 13_107}, True),
    ("slew_full_scale_ms", 1_001, {"max_drive_q16": 13_107}, False),
    ("ceiling_mg", 0, {}, False),
    ("ceiling_mg", 499, {}, False),  # below the supervisor's 0.5 g: the host must trip first
    ("ceiling_mg", 500, {}, True),
    ("ceiling_mg", 1_000, {}, True),  # the hard ceiling of the dose limits
    ("ceiling_mg", 1_001, {}, False),
    ("ceiling_mg", 65_535, {}, False),
    ("boot", 0, {}, True),
    ("boot", 1, {}, True),
    ("boot", 2, {}, False),
    ("device_id_raw", b"P".ljust(16, b"\x00"), {}, True),
    ("device_id_raw", b"PLATE-0123456789", {}, True),
    ("device_id_raw", b"\x00" * 16, {}, False),
    ("device_id_raw", b"PLATE\x00\x007".ljust(16, b"\x00"), {}, False),
    ("device_id_raw", b"PLATE\x07".ljust(16, b"\x00"), {}, False),
]
# Rules between fields, each at its edge.
HELLO_CROSS: list[tuple[str, dict[str, Any], bool]] = [
    ("min_freq_mhz", {"min_freq_mhz": 150_000, "max_freq_mhz": 150_000}, True),
    ("min_freq_mhz", {"min_freq_mhz": 150_001, "max_freq_mhz": 150_000}, False),
    ("max_freq_mhz", {"max_freq_mhz": 799_999}, True),  # below half of 1600 Hz
    ("max_freq_mhz", {"max_freq_mhz": 800_000}, False),
    ("block_samples", {"block_samples": 80}, True),  # 50 ms at 1600 Hz
    ("block_samples", {"block_samples": 81}, False),
    ("slew_full_scale_ms", {"max_drive_q16": 65_535, "slew_full_scale_ms": 200}, True),
    ("slew_full_scale_ms", {"max_drive_q16": 65_535, "slew_full_scale_ms": 201}, False),
    (
        "slew_full_scale_ms",
        {"stop_ramp_ms": 50, "max_drive_q16": 65_535, "slew_full_scale_ms": 51},
        False,
    ),
]


def test_the_example_hello_is_valid() -> None:
    check_hello(VALID_HELLO)


@pytest.mark.parametrize(
    ("field", "value", "others", "accepted"),
    HELLO_EDGES,
    ids=[f"{f}={v!r}" for f, v, _, _ in HELLO_EDGES],
)
def test_hello_field_ranges(field: str, value: Any, others: dict[str, Any], accepted: bool) -> None:
    hello = dataclasses.replace(VALID_HELLO, **others, **{field: value})
    if accepted:
        check_hello(hello)
        return
    with pytest.raises(InvalidDeviceInfoError) as err:
        check_hello(hello)
    assert err.value.field == field
    shown = value.hex() if isinstance(value, bytes) else str(value)
    assert f"{field} = {shown}" in str(err.value)
    if field in HELLO_RANGES:
        lo, hi, _ = HELLO_RANGES[field]
        assert f"{lo}..{hi}" in str(err.value)


@pytest.mark.parametrize(("field", "values", "accepted"), HELLO_CROSS)
def test_hello_rules_between_fields(field: str, values: dict[str, Any], accepted: bool) -> None:
    hello = dataclasses.replace(VALID_HELLO, **values)
    if accepted:
        check_hello(hello)
        return
    with pytest.raises(InvalidDeviceInfoError) as err:
        check_hello(hello)
    assert err.value.field == field


def test_every_ranged_hello_field_has_both_edges_tested() -> None:
    tested = {(f, ok) for f, _, _, ok in HELLO_EDGES}
    for name in HELLO_RANGES:
        assert (name, True) in tested, name
        assert (name, False) in tested, name


def _client_with_hello(payload: bytes) -> DeviceClient:
    port = serial.serial_for_url("loop://", timeout=0.01)
    port.write(encode_frame(Hello.TYPE, 0, payload))
    return DeviceClient(port, "loop://")


def test_client_refuses_an_impossible_hello_and_names_the_field() -> None:
    bad = dataclasses.replace(VALID_HELLO, counts_per_g=0)
    client = _client_with_hello(bad.pack())
    with pytest.raises(InvalidDeviceInfoError) as err:
        client.handshake(timeout_s=1.0)
    client.port.close()
    assert err.value.field == "counts_per_g"
    assert "counts_per_g = 0" in str(err.value)
    assert "32..16383" in str(err.value)


def test_client_refuses_another_major_version_by_its_first_bytes() -> None:
    """A 1.0 HELLO is 44 bytes and does not decode as 2.0; its version bytes still do."""
    client = _client_with_hello(bytes([1, 0]) + bytes(42))
    with pytest.raises(IncompatibleVersionError) as err:
        client.handshake(timeout_s=1.0)
    client.port.close()
    assert (err.value.device_major, err.value.host_major) == (1, PROTOCOL_MAJOR)


def test_client_encodes_drive_and_ramp_time_half_up() -> None:
    port = serial.serial_for_url("loop://", timeout=0.01)
    client = DeviceClient(port, "loop://")
    client.set_drive(0.3, 0.0025, wait=False)  # 19660.5 counts and 2.5 ms: both round up
    (frame,) = FrameDecoder().feed(port.read(64))
    port.close()
    assert decode_message(frame) == SetDrive(19_661, 3)
