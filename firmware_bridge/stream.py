"""The client's sample readers: blocks one at a time or in batches, and why a wait gave up.

:class:`_Stream` adds to :class:`~firmware_bridge.exchange._Exchange` the reads a host streams
with: ``read_block`` (one block; the closed loop's per-block path) and ``read_blocks`` (runs of
SAMPLES decoded in bulk by ``_pump_batch`` and ``_on_samples_run``; the open loop's), the
queue's bookkeeping (``blocks_waiting``, ``blocks_behind``, ``discard_backlog``,
``take_queued``), the heartbeat while the host is quiet on the device's clock, and the
diagnostics of a wait that gave up (``last_give_up``, ``no_samples_error``, the wait on SAMPLES
refused for their index). The per-block methods keep the bodies they had in one class: every
name they look up per block is an attribute of the client or a global of this module.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import serial

from firmware_bridge.codec import RawFrame, samples_payload_dtype
from firmware_bridge.errors import (
    LinkActivity,
    LinkLostError,
    LinkUnreadableError,
    SampleIndexError,
)
from firmware_bridge.exchange import _Exchange
from firmware_bridge.link import (
    _ACK_TYPE,
    _BAD_INDEX_AT,
    _COUNT_AT,
    _INT16,
    _INT64,
    _SAMPLES_TYPE,
    ACK_LEN,
    HEARTBEAT_S,
    RAD_PER_PHASE_UNIT,
    READ_CHUNK,
    _Counts,
    _frames_per_s,
    _frombuffer,
)
from firmware_bridge.protocol import Q16, Ack, Countersignature, Identity, Status
from firmware_bridge.transport import BAUD_RATE
from firmware_bridge.values import SampleBatch, SampleBlock

log = logging.getLogger("firmware_bridge.client")


class _Stream(_Exchange):
    """Sample readers and their diagnostics (see the module docstring)."""

    @property
    def sample_index(self) -> int:
        """The device's sample clock as last seen (index after the newest block)."""
        return self._device_index

    @property
    def blocks_waiting(self) -> int:
        """Sample blocks already received and decoded but not yet read: more than zero after
        a read means the host is behind the plate's stream (it was late)."""
        return self._blocks_in - self._blocks_out

    @property
    def blocks_behind(self) -> int:
        """Sample blocks the device has sent that the host has not read yet: those decoded
        (:attr:`blocks_waiting`) and the whole SAMPLES frames whose bytes still wait in the
        port. How far the host is behind the plate's clock, in blocks; a host that reads in
        time sees 0 or 1. A transport paced by the reads (``sim://?speed=max``) is never
        behind: its port is not asked (asking would move the device on)."""
        waiting = self._blocks_in - self._blocks_out  # blocks_waiting (asked every block)
        payload = self._samples_payload_len
        if self._paced_by_reads or payload is None:
            return waiting
        raw = 3 + payload + 2  # a SAMPLES frame's bytes, COBS overhead and delimiter added
        return waiting + self._backlog_bytes() // (raw + raw // 254 + 2)

    def read_block(self, timeout_s: float = 1.0) -> SampleBlock | None:
        """Next sample block, or None if none arrived within ``timeout_s`` (of the wall clock,
        or of the device's clock as counted by the SAMPLES refused for their index, whichever
        ends first: :meth:`_on_refused_wait`).

        Raises DeviceFaultError, CommandRefusedError or DeviceResetError when the device
        reports one; sends a heartbeat whenever the host has been quiet for HEARTBEAT_S.
        """
        if not self._blocks:
            deadline = time.monotonic() + timeout_s
            mark: _Counts | None = None
            while not self._blocks:
                if self._faults or self._refusals:
                    self._raise_events()
                expired = time.monotonic() > deadline
                # Read before giving up: data that arrived while this process was not running
                # (stopped, swapped out) still counts, and may hold the device's own fault
                # report.
                self._pump()
                if mark is not None and self.bad_index_frames != mark[_BAD_INDEX_AT]:
                    expired = expired or self._on_refused_wait(mark, timeout_s)
                if expired and not self._blocks:
                    self._raise_events()
                    self._give_up(mark, deadline - timeout_s)
                    return None
                if mark is None:
                    # A read that brought no block: a wait, not the next block's read. What
                    # arrives from here on tells silence from noise if the wait gives up.
                    stats = self._decoder.stats
                    mark = (
                        stats.bytes_received, stats.frames, stats.crc_errors, stats.cobs_errors,
                        stats.short_frames, stats.overruns, self.protocol_errors,
                        self.bad_index_frames,
                    )  # fmt: skip
        if self._faults or self._refusals:
            self._raise_events()
        item = self._blocks.popleft()  # the next block, and a heartbeat if quiet, inlined
        self._blocks_out += 1
        if not isinstance(item, SampleBlock):
            if len(item) > 1:
                self._blocks.appendleft(item.split(1)[1])
            item = item.block(0)
        info = self._info
        if info is not None:
            quiet = (self._device_index - self._last_tx_index) / info.sample_rate_hz
            if quiet >= HEARTBEAT_S:
                self.heartbeat()
        return item

    def read_blocks(self, max_blocks: int, timeout_s: float = 1.0) -> SampleBatch | None:
        """The next 1..``max_blocks`` sample blocks as one :class:`SampleBatch`, or None if none
        arrived within ``timeout_s`` (as :meth:`read_block` counts it).

        For a host that sends nothing while it streams but heartbeats: many blocks per call,
        decoded from one buffer in bulk (``sim://?speed=max`` simulates them in one go). A batch
        never reaches past a device event: the blocks the device sent before a FAULT or NAK are
        returned first and the next call raises it (DeviceFaultError, CommandRefusedError,
        DeviceResetError), so an event is delivered at its sample. A heartbeat goes out whenever
        the host has been quiet for HEARTBEAT_S of the device's clock; at ``speed=max`` a call
        reads no further than the next heartbeat is due, so the device hears the host exactly
        as often as with :meth:`read_block`.
        """
        if max_blocks < 1:
            raise ValueError(f"max_blocks = {max_blocks!r}; allowed: at least 1")
        deadline = time.monotonic() + timeout_s
        mark: _Counts | None = None
        while not self._available():
            self._raise_events()
            expired = time.monotonic() > deadline
            self._pump_batch(max_blocks)
            if mark is not None and self.bad_index_frames != mark[_BAD_INDEX_AT]:
                expired = expired or self._on_refused_wait(mark, timeout_s)
            if expired and not self._available():
                self._raise_events()
                self._give_up(mark, deadline - timeout_s)
                return None
            if mark is None:  # a wait: see read_block
                mark = self._counts()
        take = min(max_blocks, self._available())
        parts: list[SampleBatch] = []
        while take:
            item = self._blocks.popleft()
            batch = SampleBatch.of_block(item) if isinstance(item, SampleBlock) else item
            if parts and batch.counts.shape[1] != parts[0].counts.shape[1]:
                self._blocks.appendleft(item)  # a block of another length starts the next batch
                break
            size = len(batch)
            if size > take:
                batch, rest = batch.split(take)
                self._blocks.appendleft(rest)
                size = take
            parts.append(batch)
            take -= size
            self._blocks_out += size
        self._heartbeat_if_quiet()
        return SampleBatch.join(parts)

    def _heartbeat_if_quiet(self) -> None:
        """A heartbeat if the host has sent nothing for HEARTBEAT_S of the device's clock."""
        info = self._info
        if info is not None:
            quiet = (self._device_index - self._last_tx_index) / info.sample_rate_hz
            if quiet >= HEARTBEAT_S:
                self.heartbeat()

    def _available(self) -> int:
        """Blocks queued that may be handed out before the oldest pending device event."""
        if self._event_barrier is not None and not (self._faults or self._refusals):
            self._event_barrier = None
        limit = self._blocks_in if self._event_barrier is None else self._event_barrier
        return max(0, limit - self._blocks_out)

    def take_queued(self) -> list[SampleBlock]:
        """The blocks already decoded and not yet read, without reading the port."""
        blocks: list[SampleBlock] = []
        for item in self._blocks:
            blocks.extend([item] if isinstance(item, SampleBlock) else item.blocks())
        self._clear_queue()
        return blocks

    def discard_backlog(self, max_blocks: int = 500) -> int:
        """Drop sample blocks already waiting (queued here or in the OS buffer); return how many.

        Saves reading the past block by block before an exposure. It does not make the index
        seen so far the device's present (commands still take round trips): a clock that must
        start now starts at :attr:`output_start_index`. A transport paced by the reads
        themselves (``sim://?speed=max``) never has a backlog.
        """
        dropped = self._clear_queue()
        if getattr(self._port, "paced_by_reads", False):
            return dropped
        for _ in range(max_blocks):
            if not self._waiting():
                break
            self._pump()
            dropped += self._clear_queue()
        return dropped

    def read_for(self, seconds: float, timeout_s: float = 1.0) -> list[SampleBlock]:
        """The blocks covering the next ``seconds`` of the device's sample clock.

        Raises LinkLostError if no samples come for ``timeout_s``: LinkUnreadableError when the
        device kept sending what the host could not use (:meth:`no_samples_error`);
        SampleIndexError when a block goes back or repeats on the device's clock.
        """
        end = self.sample_index + round(seconds * self.info.sample_rate_hz)
        blocks = []
        setbacks = self.index_setbacks
        while self.sample_index < end:
            block = self.read_block(timeout_s)
            if block is None:
                raise self.no_samples_error(timeout_s)
            self.check_clock(setbacks)
            blocks.append(block)
        return blocks

    @property
    def last_give_up(self) -> LinkActivity | None:
        """What arrived during the last wait for samples that gave up (:meth:`read_block` or
        :meth:`read_blocks` returned None), counted from the first read that brought no block;
        None if no wait has given up, or it gave up on its first read."""
        return self._last_give_up

    def no_samples_error(self, timeout_s: float) -> LinkLostError:
        """The error for the wait for samples that just gave up: LinkUnreadableError when the
        device kept sending but nothing of it could be used (damaged or malformed frames, or
        bytes with no frame at all), else LinkLostError (silence, or only frames of other
        kinds: the device's counts are in the message)."""
        activity = self._last_give_up
        if activity is not None and activity.unreadable:
            return LinkUnreadableError(timeout_s, activity, BAUD_RATE)
        detail = f"no samples from the device for {timeout_s:g} s"
        if activity is not None and not activity.silent:
            detail += f" ({activity.describe()})"
        return LinkLostError(detail)

    def _on_refused_wait(self, mark: _Counts, timeout_s: float) -> bool:
        """A wait for samples whose read brought SAMPLES refused for their index: True once the
        device has sent ``timeout_s`` of its clock in them since the counters were ``mark``
        (one block a frame), and a heartbeat when due on that clock. A wait gives up on the
        device's clock as well as the wall clock (as :class:`_Deadline` does). At
        ``sim://?speed=max`` a plate runs faster than the wall clock; without this its
        watchdog fired before the host gave up.

        The heartbeat goes out whenever the host has been quiet for HEARTBEAT_S of that clock
        (docs/protocol.md 11): a wait longer than the plate's watchdog (any caller's, e.g. one
        that does not shorten it as controller/safety.py ``samples_wait_s`` does) ends with the
        host's own error, not with the plate's HOST_WATCHDOG fault blaming a host that was
        waiting."""
        refused = self.bad_index_frames - mark[_BAD_INDEX_AT]
        info = self._info
        rate = _frames_per_s(info)
        if info is not None:
            since = self.bad_index_frames - max(mark[_BAD_INDEX_AT], self._refused_at_tx)
            quiet = (self._device_index - self._last_tx_index) / info.sample_rate_hz
            if quiet + since / rate >= HEARTBEAT_S:
                self.heartbeat()
                self._refused_at_tx = self.bad_index_frames
        return refused >= max(1, round(timeout_s * rate))

    def _give_up(self, mark: _Counts | None, started: float) -> None:
        """A wait for samples gave up: keep what arrived during it, and log it if not silence."""
        if mark is None:
            self._last_give_up = None
            return
        activity = self._last_give_up = self._activity_since(mark, started)
        if not activity.silent:
            log.warning(
                "no samples from %s, though the device sent: %s", self.url, activity.describe()
            )

    def _pump_batch(self, max_blocks: int) -> None:
        """Read and decode like :meth:`_pump`, runs of SAMPLES frames in bulk.

        At ``speed=max`` it asks the port for the bytes of up to ``max_blocks`` SAMPLES frames
        but no further than the next heartbeat is due (the device advances as far as the host
        reads); a real port gives what has arrived.
        """
        info = self._info
        if info is None:
            self._pump()
            return
        n = info.block_samples
        payload_size = self._samples_payload_len  # set with the hello
        assert payload_size is not None
        if self._paced_by_reads:
            quiet = self._device_index - self._last_tx_index
            due = math.ceil((HEARTBEAT_S * info.sample_rate_hz - quiet) / n)
            blocks = max(1, min(max_blocks, due))
            raw = 3 + payload_size + 2
            size = blocks * (raw + raw // 254 + 2)
        else:
            size = 0
        try:
            if not size:
                if self._tcp:
                    size = self._socket_read_size()
                else:
                    size = max(1, min(READ_CHUNK, self._port.in_waiting))
                data = self._port.read(size)
            else:
                # At speed=max a read's timeout is simulated time: let this one span the
                # blocks asked for and the block their last frame leaves after.
                timeout = self._port.timeout
                self._port.timeout = (blocks + 1) * n / info.sample_rate_hz
                try:
                    data = self._port.read(size)
                finally:
                    self._port.timeout = timeout
            if self._paced_by_reads and self._read_buffered is not None:
                # Each read moves the device on by at most the port's timeout (simulated
                # seconds); read on until the blocks came or a read brings nothing, then take
                # the rest of a frame the last read cut.
                while 0 < len(data) < size:
                    more = self._port.read(size - len(data))
                    if not more:
                        break
                    data += more
                data += self._read_buffered()
        except (serial.SerialException, OSError) as exc:
            raise LinkLostError(str(exc)) from None
        if not data:
            return
        run: list[bytes] = []
        for frame in self._decoder.feed(data):
            frame_type, _, payload = frame
            if frame_type == _SAMPLES_TYPE and len(payload) == payload_size:
                # The count byte must agree with the length, as Samples.unpack checks (with
                # the length that of ``n`` samples, the count must be ``n``): one that does
                # not ends the run and is refused as a malformed frame, at its place.
                if payload[_COUNT_AT] == n:
                    run.append(payload)
                    continue
            elif frame_type == _ACK_TYPE and len(payload) == ACK_LEN:
                # An ACK as _pump handles it, after the run only if it starts the output
                # clock (_leaves_run).
                acked = payload[0] | payload[1] << 8
                if run:
                    pending = self._pending.get(acked)
                    if pending is not None and pending.output_on:
                        self._on_samples_run(run, n)
                        run = []
                self._on_ack(acked)
                continue
            if run and not self._leaves_run(frame):
                self._on_samples_run(run, n)
                run = []
            self._dispatch_frame(frame, False)
        if run:
            self._on_samples_run(run, n)

    def _leaves_run(self, frame: RawFrame) -> bool:
        """True for a frame whose handling does not depend on the SAMPLES before it nor change
        those after it: an ACK of anything but SET_OUTPUT on (which starts the output clock),
        a STATUS, IDENTITY or COUNTERSIGNATURE answer. FAULT, NAK, HELLO and the rest end a
        run of SAMPLES so that they are handled at their place in the stream."""
        if frame.frame_type == Ack.TYPE:
            if len(frame.payload) < 2:
                return False
            pending = self._pending.get(frame.payload[0] | frame.payload[1] << 8)
            return pending is None or not pending.output_on
        return frame.frame_type in (Status.TYPE, Identity.TYPE, Countersignature.TYPE)

    def _on_samples_run(self, payloads: list[bytes], n: int) -> None:
        """Queue consecutive SAMPLES payloads of ``n`` samples (count byte checked) as one
        SampleBatch; a block whose indices run past the host's range is refused at its place,
        as _on_samples refuses it."""
        records = _frombuffer(b"".join(payloads), samples_payload_dtype(n))
        blocks = len(payloads)
        firsts = records["first_index"].tolist()  # the wire's u64 as Python integers: exact
        start = firsts[0]
        consecutive = firsts == list(range(start, start + blocks * n, n))
        # Consecutive, the last is the largest (the usual case, without a call).
        if (firsts[-1] if consecutive else max(firsts)) > self._first_index_max:
            self._on_samples_run_past_range(payloads, firsts, n)
            return
        self.sample_frames_seen += blocks
        # Every index and the one after each block (first + n) is at most 2**63 - 1 from here
        # on, so the int64 values and the differences of any two are exact.
        first = records["first_index"].astype(_INT64)
        end = firsts[-1] + n
        expected = start if self._expected_index is None else self._expected_index
        if consecutive and start == expected:  # no gap, the usual case
            missing = np.zeros(blocks, _INT64)
        else:
            before = np.empty_like(first)  # where each block was expected to start
            before[0] = expected
            before[1:] = first[:-1] + n
            missing = np.maximum(first - before, 0)
            # summed as Python integers: several jumps to the top may exceed int64
            self.samples_missing += sum(missing.tolist())
            back = np.flatnonzero(first < before)
            if back.size:
                self.index_setbacks += int(back.size) - 1  # _set_back counts the last
                self._set_back(int(before[back[-1]]), int(first[back[-1]]))
        self._expected_index = self._device_index = end
        if self._output_acked and self._output_start_index is None:
            self._output_start_index = start
        counts = records["counts"].astype(_INT16)
        table = self._accel_table
        if table is None:
            table = self._accel_g_table()
        self._blocks.append(
            SampleBatch(
                first,
                counts,
                table.take(counts),  # accel_g, see _accel_g_table
                records["phase"] * RAD_PER_PHASE_UNIT,  # phase_rad
                records["freq_mhz"] / 1000.0,  # freq_hz
                records["drive_q16"] / Q16,  # drive
                missing,  # missing_before
            )
        )
        self._blocks_in += blocks

    def _on_samples_run_past_range(self, payloads: list[bytes], firsts: list[int], n: int) -> None:
        """A run of SAMPLES payloads (first indices ``firsts``) of which some run past the
        host's range: the others queued in stretches, the past ones dropped as malformed
        between them, each at its place (as _on_samples drops them on the other paths)."""
        first_max = self._first_index_max
        good: list[bytes] = []
        for payload, first in zip(payloads, firsts, strict=True):
            if first <= first_max:
                good.append(payload)
                continue
            if good:
                self._on_samples_run(good, n)
                good = []
            self._refuse_index(first, n)
        if good:
            self._on_samples_run(good, n)

    def check_clock(self, setbacks: int) -> None:
        """Raise SampleIndexError if a block queued since :attr:`index_setbacks` was
        ``setbacks`` went back or repeated on the device's clock: a reader that waits for the
        clock to reach an index would wait for ever (and send no heartbeat meanwhile)."""
        if self.index_setbacks != setbacks:
            raise SampleIndexError(*self._last_setback)
