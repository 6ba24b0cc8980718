"""The same client code runs a plate over sim://, a pty and TCP (simulator in its own process)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.openloop import drive_open_loop
from firmware_bridge.client import DeviceClient
from firmware_bridge.errors import (
    DeviceBusyError,
    HandshakeTimeoutError,
    IncompatibleVersionError,
)
from firmware_bridge.protocol import PROTOCOL_MAJOR, PROTOCOL_MINOR


def _serve(*where: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sessions.cli", "sim", "serve", *where, "--sim", "sim://?speed=2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        address = proc.stdout.readline().strip()
        assert address, proc.stderr.read() if proc.stderr else "server printed nothing"
        yield address
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err


@pytest.fixture(params=["sim", "pty", "tcp"])
def device_url(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "sim":
        yield "sim://?speed=max"
    elif request.param == "pty":
        yield from _serve("--pty")
    else:
        yield from _serve("--tcp", "127.0.0.1:0")


def test_same_client_everywhere(device_url: str) -> None:
    if device_url.startswith("/dev/"):
        assert "pts" in device_url
    with DeviceClient.open(device_url) as dev:
        assert dev.info.device_id == "SIM-0001"
        result = drive_open_loop(dev, 45.0, 0.3, 1.0, ramp_up_s=0.3, ramp_down_s=0.2)
    assert 0.05 < result.peak_g < 1.0
    assert abs(result.dc_g - 1.0) < 0.05
    assert result.crc_errors == 0
    assert result.lost_frames == 0


@pytest.fixture(scope="module")
def served_pty() -> Iterator[str]:
    yield from _serve("--pty")


def test_spy_url_dumps_the_traffic(served_pty: str, tmp_path: Path) -> None:
    dump = tmp_path / "traffic.txt"
    with DeviceClient.open(f"spy://{served_pty}?file={dump}") as dev:
        assert dev.info.device_id == "SIM-0001"
    text = dump.read_text()
    assert "TX" in text
    assert "RX" in text


def test_a_second_controller_is_told_the_plate_is_busy(served_pty: str) -> None:
    with DeviceClient.open(served_pty) as first:
        assert first.info.device_id
        with pytest.raises(DeviceBusyError, match="in use by another program"):
            DeviceClient.open(served_pty)


def test_a_port_with_no_firmware_times_out_the_handshake() -> None:
    master, slave = os.openpty()
    try:
        with pytest.raises(HandshakeTimeoutError, match="no hello"):
            DeviceClient.open(os.ttyname(slave), hello_timeout_s=0.6)
    finally:
        os.close(master)
        os.close(slave)


def test_another_major_protocol_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import firmware_bridge.sim.device

    other = PROTOCOL_MAJOR + 1
    monkeypatch.setattr(firmware_bridge.sim.device, "PROTOCOL_MAJOR", other)
    minor = PROTOCOL_MINOR
    with pytest.raises(IncompatibleVersionError, match=rf"device speaks protocol {other}\.{minor}"):
        DeviceClient.open("sim://?speed=max")
