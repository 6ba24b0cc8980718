"""The second clean-room plate (hil_tests/cleanroom2/device.py) against the product, in CI.

The plate runs in its own process behind a pty, as ``python -m hil_tests.cleanroom2.device
--pty`` (it never resets when a host opens the path), with replies sent before the finished
block's SAMPLES and limits unlike the reference plate's. Through the public command line and the
qualification suite: the handshake, 3 s of stream, and one short closed-loop ``liv run``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil_tests.cleanroom2.device import Receiver, Settings, cobs_encode, crc16

ROOT = Path(__file__).resolve().parents[1]
LIV = [sys.executable, "-m", "sessions.cli"]


def test_framing_matches_the_documents_vectors() -> None:
    assert crc16(b"123456789") == 0x31C3
    raw = bytes.fromhex("0505000514")  # vector heartbeat, docs/protocol.md 13.3
    assert cobs_encode(raw) + b"\x00" == bytes.fromhex("03050503051400")
    assert Receiver().feed(bytes.fromhex("03050503051400")) == [(0x05, 5, b"")]
    bad = Receiver()
    assert bad.feed(bytes.fromhex("03050503051500")) == []  # vector bad-crc
    assert bad.crc_errors == 1


def _serve(nv: Path, *settings: str) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "hil_tests.cleanroom2.device", "--pty", "--nv", str(nv)]
    for item in settings:
        args += ["--set", item]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    path = proc.stdout.readline().strip()
    assert path.startswith("/dev/"), path
    return proc, path


@pytest.fixture
def plate(tmp_path: Path) -> Iterator[str]:
    proc, path = _serve(tmp_path / "nv")
    try:
        yield path
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _liv(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LIV_HOME=str(home))
    return subprocess.run(
        [*LIV, *args], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )


def test_handshake_and_stream_through_the_suite(plate: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    info = _liv("device", "info", "--device", plate, "--json", home=home)
    assert info.returncode == 0, info.stderr
    hello = json.loads(info.stdout)
    defaults = Settings()
    assert hello["sample_rate_hz"] == defaults.sample_rate_hz
    assert hello["block_samples"] == defaults.block_samples
    assert hello["counts_per_g"] == defaults.counts_per_g
    suite = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "hil_tests/test_link.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "--device-url",
            plate,
            "--no-motion",
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert suite.returncode == 0, suite.stdout[-3000:]
    assert "PASS" in suite.stdout or "INCOMPLETE" in suite.stdout


@pytest.mark.timeout(110)
def test_a_short_closed_loop_run(plate: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    cal = _liv("calibrate", "--engineer", "--device", plate, "--home", str(home), home=home)
    assert cal.returncode == 0, cal.stderr
    run = _liv(
        "run",
        "--engineer",
        "--device",
        plate,
        "--home",
        str(home),
        "--freq",
        "45",
        "--seconds",
        "3",
        "--json",
        home=home,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert "completed" in json.dumps(result)
