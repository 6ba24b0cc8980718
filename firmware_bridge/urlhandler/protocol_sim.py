"""pyserial handler for ``sim://?...``: a simulated plate behind the ordinary Serial API.

``serial.serial_for_url("sim://?mass=90&seed=1&speed=max")`` once
``firmware_bridge.urlhandler`` is in ``serial.protocol_handler_packages``
(``firmware_bridge.transport.open_port`` does that).

Pacing: with ``speed=max`` the device advances only when the host reads, as far as the read
asks (several blocks in one ``SimulatedDevice.step_many`` call when the host reads several
frames' bytes), so a run is deterministic for a given seed and as fast as the host can
consume; a read timeout is counted in simulated seconds. With ``speed=F`` the device keeps
F x real time against the wall clock.
"""

from __future__ import annotations

import math
import time

import serial

from firmware_bridge.errors import UnknownUrlError
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.sim.device import SimulatedDevice


class Serial(serial.SerialBase):
    """A SerialBase whose far end is a SimulatedDevice."""

    _device: SimulatedDevice | None = None

    def open(self) -> None:
        if self.port is None:
            raise serial.SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise serial.SerialException("Port is already open.")
        url = str(self.portstr)
        config = parse_sim_url(url)
        try:
            self._device = SimulatedDevice(config)
        except (ValueError, OSError) as exc:
            raise UnknownUrlError(url, str(exc)) from None
        self._buffer = bytearray()
        # Fixed for the device's life: read once, not on every call (a read per block).
        self._speed = config.speed
        self._can_disconnect = config.disconnect_at_s is not None
        self._frame_bytes = self._device.samples_frame_bytes
        self._block_s = self._device.block_s
        self._wall_start = time.monotonic()
        self._sim_start_s = self._device.time_s  # not 0 for a device that was up (uptime_s)
        self.is_open = True

    def _reconfigure_port(self) -> None:
        """Baud rate and framing do not matter to a simulated link."""

    def close(self) -> None:
        if self.is_open and self._device is not None:
            self.is_open = False
            device, self._device = self._device, None
            device.close()

    @property
    def paced_by_reads(self) -> bool:
        """True at ``speed=max``: the device advances only when read, so nothing waits."""
        return self.device.config.speed is None

    @property
    def device(self) -> SimulatedDevice:
        """The simulated plate behind this port (for tests and tools)."""
        if self._device is None:
            raise serial.PortNotOpenError()
        return self._device

    def _check_link(self) -> SimulatedDevice:
        device = self._device
        if device is None:
            raise serial.PortNotOpenError()
        if self._can_disconnect and device.disconnected:
            raise serial.SerialException("device disconnected (simulated cable pull)")
        return device

    def _advance(self, want_bytes: int, max_sim_s: float) -> None:
        """Move the device forward.

        ``speed=max``: step until ``want_bytes`` are buffered or ``max_sim_s`` of simulated time
        has passed (at least one block). Otherwise: step up to where the wall clock says.
        """
        device = self._check_link()
        buffer = self._buffer
        speed = self._speed
        if speed is None:
            if len(buffer) >= want_bytes:
                return
            block_s = self._block_s
            now = device.time_s
            end = now + max(max_sim_s, block_s) - 1e-12
            frame = self._frame_bytes
            can_disconnect = self._can_disconnect
            while len(buffer) < want_bytes and now < end:
                # Never more blocks than the bytes asked for can hold (one at least), nor past
                # ``end``: never more than stepping one block at a time would have run (each
                # frame leaves a block after its own), and a host that asks for one frame's
                # bytes gets the device stepped once.
                blocks = max(1, -(-(want_bytes - len(buffer)) // frame))
                left = math.ceil((end - now) / block_s)
                device.step_many(max(1, min(blocks, left)))
                buffer += device.take_output()
                if can_disconnect:  # nothing else can break a simulated link
                    self._check_link()
                now = device.time_s
        else:
            target = self._sim_start_s + (time.monotonic() - self._wall_start) * speed
            while device.time_s + device.block_s <= target:
                device.step()
                self._buffer += device.take_output()
                self._check_link()

    @property
    def in_waiting(self) -> int:
        if not self._buffer:
            self._advance(1, 0.0)
        return len(self._buffer)

    def read(self, size: int = 1) -> bytes:
        device = self._check_link()
        speed = self._speed
        if speed is None:
            if len(self._buffer) < size:  # else _advance would return at once
                budget = 3600.0 if self.timeout is None else self.timeout
                self._advance(size, budget)
        else:
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            while True:
                self._advance(size, 0.0)
                if len(self._buffer) >= size:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                nap = device.block_s / speed
                time.sleep(nap if remaining is None else min(nap, remaining))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def read_buffered(self) -> bytes:
        """The bytes the device has already sent, without moving it on (``speed=max`` hosts
        that read in batches take the rest of a frame with it)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        device = self._check_link()
        if self._speed is not None:
            self._advance(0, 0.0)
        payload = bytes(data)
        device.receive(payload)
        return len(payload)

    def reset_input_buffer(self) -> None:
        self._buffer.clear()

    def reset_output_buffer(self) -> None:
        """Nothing is buffered on the way out: writes reach the device at once."""

    @property
    def out_waiting(self) -> int:
        return 0
