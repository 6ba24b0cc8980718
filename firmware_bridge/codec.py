"""Frame codec: CRC-16/XMODEM, COBS byte stuffing, 0x00 delimiter, and a streaming decoder.

A raw frame is ``type:u8 | seq:u16 LE | payload | crc:u16 LE`` where the CRC is
CRC-16/XMODEM (poly 0x1021, init 0x0000, no reflection, no final xor; check value 0x31C3 for
ASCII "123456789") over everything before it. On the wire a frame is COBS-encoded and followed
by a single 0x00. See docs/protocol.md.
"""

from __future__ import annotations

import binascii
import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from cobs import cobs

DELIMITER = b"\x00"
_cobs_encode = cobs.encode  # C functions, looked up once (every frame passes through them)
_cobs_decode = cobs.decode
_crc_hqx = binascii.crc_hqx
HEADER = struct.Struct("<BH")
CRC = struct.Struct("<H")
MIN_RAW_LEN = HEADER.size + CRC.size
MAX_RAW_LEN = 250
# COBS adds one overhead byte per started run of 254 bytes (the delimiter is not counted).
MAX_ENCODED_LEN = MAX_RAW_LEN + MAX_RAW_LEN // 254 + 1

# A HELLO (device boot) or HELLO_REQUEST (host opened the link) with seq 0 restarts the
# receiver's sequence count: the sender's counter started again from 0.
SEQUENCE_RESTART_TYPES = frozenset({0x01, 0x81})


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM of ``data`` (check value 0x31C3 for b"123456789")."""
    return binascii.crc_hqx(data, 0)


def encode_frame(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    """Return the wire bytes (COBS-encoded, delimiter included) for one frame."""
    body = HEADER.pack(frame_type, seq & 0xFFFF) + payload
    if len(body) + CRC.size > MAX_RAW_LEN:
        raise ValueError(f"frame of {len(body) + CRC.size} bytes exceeds {MAX_RAW_LEN}")
    encoded: bytes = _cobs_encode(body + CRC.pack(binascii.crc_hqx(body, 0)))
    return encoded + DELIMITER


SAMPLES_TYPE = 0x84  # protocol.Samples.TYPE (the codec does not import the message layer)


# A SAMPLES frame's type, seq and payload head (protocol.SAMPLES_HEADER), packed in one call.
SAMPLES_FRAME_HEAD = struct.Struct("<BHQIIHB")


def encode_samples_frame(
    seq: int,
    first_index: int,
    phase_q32: int,
    freq_mhz: int,
    drive_q16: int,
    counts: npt.NDArray[np.int16],
) -> bytes:
    """The wire bytes of one SAMPLES frame of ``counts`` (shape (n,), int16): those of
    ``encode_frame(SAMPLES_TYPE, seq, Samples(first_index, ...).pack())``, packed in one
    struct call (a simulated plate sends one a block)."""
    body = (
        SAMPLES_FRAME_HEAD.pack(
            SAMPLES_TYPE, seq & 0xFFFF, first_index, phase_q32, freq_mhz, drive_q16, counts.size
        )
        + counts.astype("<i2", copy=False).tobytes()
    )
    if len(body) + CRC.size > MAX_RAW_LEN:
        raise ValueError(f"frame of {len(body) + CRC.size} bytes exceeds {MAX_RAW_LEN}")
    encoded: bytes = _cobs_encode(body + CRC.pack(binascii.crc_hqx(body, 0)))
    return encoded + DELIMITER


@functools.cache
def samples_payload_dtype(n: int) -> np.dtype[np.void]:
    """The payload of a SAMPLES frame of ``n`` samples as one packed numpy record.

    ``first_index:u64 | phase:u32 | freq_mhz:u32 | drive_q16:u16 | n:u8 | counts:n x i16``,
    little-endian (docs/protocol.md, SAMPLES): ``np.frombuffer`` of many payloads joined gives
    every field of every frame as an array, without unpacking frame by frame.
    """
    return np.dtype(_samples_payload_fields(n))


def _samples_payload_fields(n: int) -> list[tuple[Any, ...]]:
    return [
        ("first_index", "<u8"),
        ("phase", "<u4"),
        ("freq_mhz", "<u4"),
        ("drive_q16", "<u2"),
        ("n", "u1"),
        ("counts", "<i2", (n,)),
    ]


@functools.cache
def samples_dtype(n: int) -> np.dtype[np.void]:
    """The raw SAMPLES frame of ``n`` samples without its CRC, as one packed numpy record.

    ``type:u8 | seq:u16 | first_index:u64 | phase:u32 | freq_mhz:u32 | drive_q16:u16 | n:u8 |
    counts:n x i16``, little-endian (docs/protocol.md, SAMPLES): equal to the bytes
    ``HEADER.pack(...) + Samples.pack()`` give.
    """
    return np.dtype([("type", "u1"), ("seq", "<u2"), *_samples_payload_fields(n)])


def samples_records(
    phases_q32: Sequence[int], freq_mhz: int, drive_q16: int, counts: npt.NDArray[np.int16]
) -> npt.NDArray[np.void]:
    """SAMPLES frame bodies (:func:`samples_dtype`) for the rows of ``counts``, all but their
    ``seq`` and ``first_index`` filled in (a sender fills those when the frames leave)."""
    frames, n = counts.shape
    records = np.zeros(frames, dtype=samples_dtype(n))
    records["type"] = SAMPLES_TYPE
    records["phase"] = phases_q32
    records["freq_mhz"] = freq_mhz
    records["drive_q16"] = drive_q16
    records["n"] = n
    records["counts"] = counts
    return records


def encode_samples_records(records: npt.NDArray[np.void]) -> list[bytes]:
    """The wire bytes of each SAMPLES frame body of ``records`` (:func:`samples_dtype`)."""
    frames = records.size
    size = records.dtype.itemsize
    if size + CRC.size > MAX_RAW_LEN:
        raise ValueError(f"frame of {size + CRC.size} bytes exceeds {MAX_RAW_LEN}")
    raw = records.tobytes()
    crc_hqx, pack_crc, encode = binascii.crc_hqx, CRC.pack, cobs.encode
    out = []
    for at in range(0, frames * size, size):
        body = raw[at : at + size]
        out.append(encode(body + pack_crc(crc_hqx(body, 0))) + DELIMITER)
    return out


class RawFrame(NamedTuple):
    """A frame that passed COBS and CRC checks: its type, sequence number and payload.

    A named tuple: one is made for every frame received, and a tuple is the cheapest
    immutable record Python builds.
    """

    frame_type: int
    seq: int
    payload: bytes


# RawFrame's own __new__ is a Python function that calls this: the decoder calls it directly.
_tuple_new = tuple.__new__


@dataclass
class LinkStats:
    """Counters of what arrived on one direction of the link."""

    frames: int = 0
    crc_errors: int = 0
    cobs_errors: int = 0
    short_frames: int = 0
    overruns: int = 0
    lost_frames: int = 0
    bytes_received: int = 0

    @property
    def damaged_frames(self) -> int:
        """Frames that arrived but could not be used."""
        return self.crc_errors + self.cobs_errors + self.short_frames + self.overruns


class FrameDecoder:
    """Turn an arbitrary byte stream into checked frames.

    Survives garbage, partial reads and frames split over any number of reads: bytes are
    buffered up to the next 0x00, and anything that fails COBS, length or CRC checks is counted
    and dropped; decoding resumes at the next delimiter. Sequence gaps count as lost frames.
    Never raises on bad input.
    """

    def __init__(self) -> None:
        self.stats = LinkStats()
        self._buffer = bytearray()
        self._overrun = False
        self._expected_seq: int | None = None

    def feed(self, data: bytes) -> list[RawFrame]:
        """Consume ``data`` and return the complete, valid frames it finished."""
        stats = self.stats
        stats.bytes_received += len(data)
        # Every chunk but the last ends at a delimiter; the last is the start of a frame
        # still to come (empty when ``data`` ends with a delimiter).
        *chunks, rest = data.split(DELIMITER)
        frames: list[RawFrame] = []
        if chunks:
            if self._buffer or self._overrun:
                # The first chunk ends the frame begun by earlier reads.
                head = chunks[0]
                if self._overrun or len(self._buffer) + len(head) > MAX_ENCODED_LEN:
                    stats.overruns += 1
                    chunks[0] = b""
                else:
                    chunks[0] = bytes(self._buffer) + head
                self._buffer.clear()
                self._overrun = False
            # COBS, length, CRC and sequence checks of each chunk in this one loop: cheaper
            # than a method call a frame (every block brings a SAMPLES, most an ACK). The
            # expected sequence number is kept in a local, written back before
            # _count_sequence reads it.
            stats_frames = 0
            expected = self._expected_seq
            for chunk in chunks:
                if len(chunk) > MAX_ENCODED_LEN:
                    stats.overruns += 1
                    continue
                if not chunk:
                    continue
                try:
                    raw: bytes = _cobs_decode(chunk)
                except cobs.DecodeError:
                    stats.cobs_errors += 1
                    continue
                if len(raw) < MIN_RAW_LEN:
                    stats.short_frames += 1
                    continue
                if _crc_hqx(raw[:-2], 0) != raw[-2] | raw[-1] << 8:
                    stats.crc_errors += 1
                    continue
                seq = raw[1] | raw[2] << 8
                if seq == expected and seq:  # the next in sequence (not a restart at 0)
                    expected = (seq + 1) & 0xFFFF
                else:
                    self._expected_seq = expected
                    self._count_sequence(raw[0], seq)
                    expected = self._expected_seq
                stats_frames += 1
                frames.append(_tuple_new(RawFrame, (raw[0], seq, raw[3:-2])))
            self._expected_seq = expected
            stats.frames += stats_frames
        if rest:
            self._append(rest)
        return frames

    def _append(self, part: bytes) -> None:
        if self._overrun:
            return
        self._buffer += part
        if len(self._buffer) > MAX_ENCODED_LEN:
            # Too long to be a frame: drop it now, count it once its delimiter arrives.
            self._buffer.clear()
            self._overrun = True

    def _count_sequence(self, frame_type: int, seq: int) -> None:
        expected = self._expected_seq
        if expected is None or (seq == 0 and frame_type in SEQUENCE_RESTART_TYPES):
            self._expected_seq = (seq + 1) & 0xFFFF
            return
        gap = (seq - expected) & 0xFFFF
        # A gap above half the range is a late or repeated frame: neither a loss nor a reason
        # to move the expectation backwards.
        if gap < 0x8000:
            self.stats.lost_frames += gap
            self._expected_seq = (seq + 1) & 0xFFFF
