"""Serve a simulated plate as a separate process behind a pty or a TCP socket.

The device runs at ``speed`` x real time against the wall clock, powered for the lifetime of
the server like a real plate; hosts may connect, leave and reconnect. Over TCP, output produced
while no host listens is discarded, as a UART with nothing attached would; over a pty the kernel
buffers some of it (the server keeps the slave end open), and a host finds it waiting.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
import tty
from collections.abc import Callable

from firmware_bridge.realtime import single_threaded_numerics
from firmware_bridge.sim.config import SimConfig
from firmware_bridge.sim.device import SimulatedDevice

log = logging.getLogger(__name__)

ShouldStop = Callable[[], bool]


class _Pacer:
    """Steps the device to keep pace with the wall clock."""

    def __init__(self, device: SimulatedDevice, speed: float) -> None:
        self.device = device
        self.speed = speed
        self.start = time.monotonic()
        self.origin_s = device.time_s  # a device up before serving (uptime_s) is not at 0

    def catch_up(self) -> bytes:
        target = self.origin_s + (time.monotonic() - self.start) * self.speed
        out = bytearray()
        while self.device.time_s + self.device.block_s <= target:
            self.device.step()
            out += self.device.take_output()
        return bytes(out)

    def wait_s(self) -> float:
        """Wall seconds until the next block is due."""
        due = (self.device.time_s + self.device.block_s - self.origin_s) / self.speed
        return max(0.0, min(0.05, due - (time.monotonic() - self.start)))


def serve_pty(config: SimConfig, on_ready: Callable[[str], None], should_stop: ShouldStop) -> None:
    """Run the device behind a new pseudo-terminal; ``on_ready`` gets the path hosts open."""
    with single_threaded_numerics():
        _serve_pty(config, on_ready, should_stop)


def _serve_pty(config: SimConfig, on_ready: Callable[[str], None], should_stop: ShouldStop) -> None:
    device = SimulatedDevice(config)
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    pacer = _Pacer(device, config.speed or 1.0)
    try:
        on_ready(os.ttyname(slave))
        while not should_stop():
            out = pacer.catch_up()
            if out:
                _write_dropping(master, out)
            readable, _, _ = select.select([master], [], [], pacer.wait_s())
            if readable:
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    continue
                device.receive(data)
    finally:
        device.close()
        os.close(master)
        os.close(slave)


def _write_dropping(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except BlockingIOError:
        log.debug("pty full: %d bytes dropped", len(data))
    except OSError as exc:
        if exc.errno != errno.EIO:
            raise


def serve_tcp(
    config: SimConfig,
    host: str,
    port: int,
    on_ready: Callable[[str], None],
    should_stop: ShouldStop,
) -> None:
    """Run the device behind a TCP listener (one host at a time, like a serial server)."""
    with single_threaded_numerics():
        _serve_tcp(config, host, port, on_ready, should_stop)


def _serve_tcp(
    config: SimConfig,
    host: str,
    port: int,
    on_ready: Callable[[str], None],
    should_stop: ShouldStop,
) -> None:
    device = SimulatedDevice(config)
    pacer = _Pacer(device, config.speed or 1.0)
    with socket.create_server((host, port)) as server:
        server.setblocking(False)
        bound_host, bound_port = server.getsockname()[:2]
        on_ready(f"socket://{bound_host}:{bound_port}")
        conn: socket.socket | None = None
        try:
            while not should_stop():
                out = pacer.catch_up()
                if conn is not None and out:
                    try:
                        conn.sendall(out)
                    except OSError:
                        conn.close()
                        conn = None
                watch = [server] if conn is None else [conn]
                readable, _, _ = select.select(watch, [], [], pacer.wait_s())
                if not readable:
                    continue
                if conn is None:
                    conn, _ = server.accept()
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    continue
                data = conn.recv(4096)
                if not data:
                    conn.close()
                    conn = None
                else:
                    device.receive(data)
        finally:
            if conn is not None:
                conn.close()
            device.close()
