"""Device identity and countersignatures (protocol 2.1, docs/protocol.md 9.8) on the simulator.

The simulated firmware keeps a device key, a non-volatile counter and a head per device id in
``sim://?nv=DIR`` (else ``$LIV_SIM_STATE_DIR``, which tests/conftest.py points at a fresh
directory per test); these tests judge what is in that memory as well as what the host hears.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from firmware_bridge.client import DeviceClient
from firmware_bridge.countersign import GENESIS_HEAD, next_head, signature_problem
from firmware_bridge.errors import CommandRefusedError, InvalidDeviceInfoError
from firmware_bridge.protocol import (
    Countersign,
    Countersignature,
    Identity,
    NakReason,
    check_countersignature,
    check_identity,
)
from firmware_bridge.sim.config import SimConfig
from firmware_bridge.sim.device import SimulatedDevice
from firmware_bridge.sim.nvstore import ENV_STATE_DIR, device_dir_name, state_root

FAST = "sim://?speed=max"


def digest_of(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def test_identity_is_stable_and_the_counter_survives_reconnects(tmp_path: Path) -> None:
    url = f"{FAST}&nv={tmp_path}&device_id=PLATE-7"
    with DeviceClient.open(url) as device:
        first = device.identity()
        assert (first.counter, first.head) == (0, GENESIS_HEAD)
        voucher = device.countersign(digest_of("a"), 1, first.public_key)
    with DeviceClient.open(url) as device:  # a new run of the plate: memory kept
        again = device.identity()
    assert again.public_key == first.public_key
    assert (again.counter, again.head) == (1, voucher.new_head)
    assert voucher.new_head == next_head(GENESIS_HEAD, 1, digest_of("a"))
    folder = tmp_path / "PLATE-7"
    key_mode = stat.S_IMODE((folder / "device_key").stat().st_mode)
    assert key_mode == 0o600
    state = json.loads((folder / "counter.json").read_text())
    assert (state["counter"], state["head"]) == (1, voucher.new_head.hex())


def test_each_device_id_has_its_own_key_and_counter(tmp_path: Path) -> None:
    keys = []
    for device_id in ("PLATE-A", "PLATE-B"):
        with DeviceClient.open(f"{FAST}&nv={tmp_path}&device_id={device_id}") as device:
            identity = device.identity()
            keys.append(identity.public_key)
            assert identity.counter == 0
    assert keys[0] != keys[1]


def test_the_state_dir_comes_from_the_url_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert state_root(str(tmp_path / "x")) == tmp_path / "x"
    monkeypatch.setenv(ENV_STATE_DIR, str(tmp_path / "env"))
    assert state_root(None) == tmp_path / "env"
    monkeypatch.delenv(ENV_STATE_DIR)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_root(None) == tmp_path / "xdg" / "liv" / "sim"
    assert device_dir_name("SIM-0001") == "SIM-0001"
    assert device_dir_name("../evil") == "hex-" + b"../evil".hex()


def test_tests_never_touch_the_users_state_dir() -> None:
    assert os.environ[ENV_STATE_DIR]
    assert ".local/state" not in os.environ[ENV_STATE_DIR]


def test_counter_is_monotonic_and_signatures_verify() -> None:
    with DeviceClient.open(FAST) as device:
        identity = device.identity()
        head = identity.head
        for n in range(1, 4):
            voucher = device.countersign(digest_of(f"r{n}"), n, identity.public_key)
            assert voucher.counter == n
            assert voucher.prev_head == head
            problem = signature_problem(
                identity.public_key,
                b"SIM-0001".ljust(16, b"\x00"),
                n,
                voucher.digest,
                voucher.prev_head,
                voucher.new_head,
                voucher.signature,
            )
            assert problem is None
            head = voucher.new_head
        assert device.identity().counter == 3


def test_a_repeated_request_is_answered_alike_and_signs_nothing_new() -> None:
    with DeviceClient.open(FAST) as device:
        key = device.identity().public_key
        first = device.countersign(digest_of("x"), 1, key)
        repeat = device.countersign(digest_of("x"), 1, key)
        assert repeat == first
        assert device.identity().counter == 1


@pytest.mark.parametrize(
    ("digest", "expected"),
    [("y", 1), ("y", 3), ("x", 0)],
    ids=["old-counter-other-digest", "skips-ahead", "counter-zero"],
)
def test_a_wrong_expected_counter_is_refused(digest: str, expected: int) -> None:
    with DeviceClient.open(FAST) as device:
        key = device.identity().public_key
        device.countersign(digest_of("x"), 1, key)
        with pytest.raises(CommandRefusedError) as refused:
            device.countersign(digest_of(digest), expected, key)
        assert refused.value.reason_code == NakReason.COUNTER_MISMATCH
        assert device.identity().counter == 1


def test_a_lost_answer_is_asked_again_and_gets_the_same_signature() -> None:
    """The host's first COUNTERSIGN is lost on the way back; its repeat gets the same answer."""
    device = SimulatedDevice(SimConfig())
    try:
        device.step()
        device.step()
        device.take_output()
        request = Countersign(digest_of("lost"), 1)
        from firmware_bridge.codec import FrameDecoder, encode_frame
        from firmware_bridge.protocol import decode_message

        answers = []
        for seq in (1, 2):
            device.receive(encode_frame(request.TYPE, seq, request.pack()))
            for _ in range(3):
                device.step()
            decoder = FrameDecoder()
            for frame in decoder.feed(device.take_output()):
                message = decode_message(frame)
                if isinstance(message, Countersignature):
                    answers.append(message)
        assert len(answers) == 2
        assert answers[0] == answers[1]
        assert device.nv.state.counter == 1
    finally:
        device.close()


def test_untrusted_identity_and_countersignature_are_refused() -> None:
    with DeviceClient.open(FAST) as device:
        identity = device.identity()
        check_identity(Identity(identity.public_key, 0, GENESIS_HEAD))
        with pytest.raises(InvalidDeviceInfoError, match="head"):
            check_identity(Identity(identity.public_key, 2, GENESIS_HEAD))
        voucher = device.countersign(digest_of("z"), 1, identity.public_key)
    answer = Countersignature(
        voucher.counter, voucher.digest, voucher.prev_head, voucher.new_head, voucher.signature
    )
    args = {
        "public_key": identity.public_key,
        "device_id_raw": b"SIM-0001".ljust(16, b"\x00"),
        "digest": digest_of("z"),
        "expected_counter": 1,
    }
    check_countersignature(answer, **args)  # type: ignore[arg-type]
    forged = Countersignature(1, digest_of("z"), voucher.prev_head, voucher.new_head, bytes(64))
    with pytest.raises(InvalidDeviceInfoError, match="signature"):
        check_countersignature(forged, **args)  # type: ignore[arg-type]
    with pytest.raises(InvalidDeviceInfoError, match="counter"):
        check_countersignature(answer, **{**args, "expected_counter": 2})  # type: ignore[arg-type]
    with pytest.raises(InvalidDeviceInfoError, match="digest"):
        check_countersignature(answer, **{**args, "digest": digest_of("q")})  # type: ignore[arg-type]


def test_liv_sim_serve_keeps_the_plates_memory_across_runs(tmp_path: Path) -> None:
    """A plate served from its own process (``liv sim serve``) keeps key and counter too."""
    import subprocess
    import sys

    def serve() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "sessions.cli", "sim", "serve", "--tcp", "127.0.0.1:0",
             "--sim", f"sim://?speed=4&nv={tmp_path}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    seen = []
    for _ in range(2):
        proc = serve()
        try:
            assert proc.stdout is not None
            address = proc.stdout.readline().strip()
            with DeviceClient.open(address) as device:
                identity = device.identity()
                seen.append(identity)
                device.countersign(digest_of(f"run {len(seen)}"), identity.counter + 1,
                                   identity.public_key)  # fmt: skip
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    assert seen[1].public_key == seen[0].public_key
    assert (seen[0].counter, seen[1].counter) == (0, 1)
    assert (tmp_path / "SIM-0001" / "device_key").exists()
