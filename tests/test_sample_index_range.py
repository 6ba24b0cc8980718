"""A SAMPLES block whose indices run past 2**63 - 1 is refused on every read path of the host.

The wire's ``first_index`` is a u64 (the message layer decodes it whole), but the host keeps
sample indices as signed 64-bit integers (``SampleBatch.first_index`` is int64): a block is
accepted only when ``first_index + n`` is at most 2**63 - 1 (docs/protocol.md 9.5). A device
that sends more (no plate counts that far: 2**63 samples are 180 million years at 1600 Hz) sent
a malformed frame: it is dropped, counted and logged on the closed-loop path (``read_block``),
the open-loop one (``read_blocks``) and for a block of another length alike, never handed on as
a negative or wrapped index.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from firmware_bridge.codec import FrameDecoder
from firmware_bridge.protocol import SAMPLE_INDEX_MAX, Samples, decode_message
from tests.test_client_fast_path import SAMPLES, N, _client_on, _frames, _read, _run, _samples

LAST = SAMPLE_INDEX_MAX - N  # the last first_index a block of N samples may have


def test_the_message_layer_decodes_the_whole_u64() -> None:
    """The range is the host's: decode_message carries the wire's value as it is."""
    (frame,) = FrameDecoder().feed(_run([2**64 - 1]))
    message = decode_message(frame)
    assert isinstance(message, Samples)
    assert message.first_index == 2**64 - 1


@pytest.mark.parametrize("batched", [False, True], ids=["read_block", "read_blocks"])
@pytest.mark.parametrize("n", [N, 16], ids=["hello's length", "another length"])
def test_the_boundary_is_exact(batched: bool, n: int) -> None:
    """``first_index + n`` = 2**63 - 1 is taken, one more is not."""
    firsts = [SAMPLE_INDEX_MAX - n, SAMPLE_INDEX_MAX - n + 1]
    dev, _ = _client_on(lambda _: _frames([(SAMPLES, _samples(f, n)) for f in firsts]))
    blocks = _read(dev, batched)
    assert [b.first_index for b in blocks] == [SAMPLE_INDEX_MAX - n]
    assert dev.protocol_errors == 1
    assert dev.sample_index == SAMPLE_INDEX_MAX
    dev.close()


@pytest.mark.parametrize("batched", [False, True], ids=["read_block", "read_blocks"])
def test_a_block_past_the_limit_is_dropped_and_counted(
    batched: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="firmware_bridge.client")
    firsts = [0, 32, 2**63, 64, 2**64 - 32, 96, LAST + 1, 128]
    dev, _ = _client_on(lambda _: _run(firsts))
    blocks = _read(dev, batched)
    assert [b.first_index for b in blocks] == [0, 32, 64, 96, 128]
    assert [b.missing_before for b in blocks] == [0] * 5
    assert dev.protocol_errors == 3
    assert dev.sample_frames_seen == 5
    assert dev.samples_missing == 0
    assert dev.sample_index == 160
    dropped = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(dropped) == 3
    assert f"first_index {2**63} " in dropped[0]
    dev.close()


def test_a_batch_never_holds_a_negative_index() -> None:
    """Only refused blocks past the limit: nothing is handed out, nothing wraps."""
    dev, _ = _client_on(lambda _: _run([2**63 + 32 * k for k in range(6)]))
    assert dev.read_blocks(64, timeout_s=0.0) is None
    assert dev.protocol_errors == 6
    assert dev.sample_index >= 0
    dev.close()
    dev, _ = _client_on(lambda _: _run([LAST - 32 * k for k in (3, 2, 1, 0)]))
    batch = dev.read_blocks(64, timeout_s=0.0)
    assert batch is not None
    assert batch.first_index.dtype == np.int64
    assert batch.first_index.tolist() == [LAST - 32 * k for k in (3, 2, 1, 0)]
    assert batch.end_index == 2**63 - 1
    dev.close()
