"""Device identity and countersignatures (protocol 2.1, docs/protocol.md 9.8).

What any plate that announces COUNTERSIGN must show before it may vouch for session records:
a stable identity, a counter that only moves forward, signatures that verify, an idempotent
answer to a repeated request, and a refusal of a wrong expected counter. The plate never moves.

Each run consumes a few of the plate's counter values (the digests signed here are test
digests): qualify a plate before it is paired with a home (docs/hil.md).
"""

from __future__ import annotations

import hashlib
import os

import pytest

from firmware_bridge.client import DeviceClient
from firmware_bridge.countersign import signature_problem
from firmware_bridge.errors import CommandRefusedError
from firmware_bridge.protocol import NakReason
from hil_tests.report import QualificationReport

pytestmark = pytest.mark.needs_capability("COUNTERSIGN")


def _digest() -> bytes:
    """A test digest never signed before (the plate's counter keeps everything it signs)."""
    return hashlib.sha256(b"LIV qualification " + os.urandom(16)).digest()


def _device_id_raw(client: DeviceClient) -> bytes:
    return client.info.device_id.encode("ascii").ljust(16, b"\x00")


@pytest.mark.timeout(30)
def test_identity_is_stable_across_reconnects(
    device_url: str, qualification: QualificationReport
) -> None:
    with DeviceClient.open(device_url) as client:
        first = client.identity()
    with DeviceClient.open(device_url) as client:
        second = client.identity()
    check = qualification.expect(
        "countersign.identity_stable",
        "the device key is the same after a reconnect",
        "same" if second.public_key == first.public_key else "changed",
        "same",
    )
    assert check.passed, check.describe()
    moved = qualification.check(
        "countersign.counter_kept",
        "counter across a reconnect, minus before (never goes back)",
        second.counter - first.counter,
        0,
        ">=",
    )
    assert moved.passed, moved.describe()


@pytest.mark.timeout(30)
def test_counter_is_monotonic_and_signatures_verify(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    identity = device.identity()
    counter, head = identity.counter, identity.head
    for _ in range(3):
        voucher = device.countersign(_digest(), counter + 1, identity.public_key)
        problem = signature_problem(
            identity.public_key,
            _device_id_raw(device),
            voucher.counter,
            voucher.digest,
            voucher.prev_head,
            voucher.new_head,
            voucher.signature,
        )
        verified = qualification.expect(
            "countersign.signature",
            "signature verifies with the device key over the documented bytes",
            problem or "verifies",
            "verifies",
        )
        assert verified.passed, verified.describe()
        assert voucher.prev_head == head, "prev_head is not the head the device had"
        counter, head = voucher.counter, voucher.new_head
    after = device.identity()
    step = qualification.check(
        "countersign.counter_monotonic",
        "counter gained per countersignature over 3 (exactly one each)",
        after.counter - identity.counter,
        3,
        "==",
    )
    assert step.passed, step.describe()
    assert after.head == head


@pytest.mark.timeout(30)
def test_a_repeated_request_is_answered_alike(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    identity = device.identity()
    digest = _digest()
    first = device.countersign(digest, identity.counter + 1, identity.public_key)
    repeat = device.countersign(digest, identity.counter + 1, identity.public_key)
    check = qualification.expect(
        "countersign.idempotent",
        "a repeated COUNTERSIGN (answer lost) gets the same answer and signs nothing new",
        "same" if repeat == first and device.identity().counter == first.counter else "differs",
        "same",
    )
    assert check.passed, check.describe()


@pytest.mark.timeout(30)
def test_a_wrong_expected_counter_is_refused(
    device: DeviceClient, qualification: QualificationReport
) -> None:
    identity = device.identity()
    if identity.counter == 0:  # so that a counter behind the device's exists
        device.countersign(_digest(), 1, identity.public_key)
        identity = device.identity()
    outcomes = []
    for expected in (identity.counter + 2, identity.counter):
        try:
            device.countersign(_digest(), expected, identity.public_key)
        except CommandRefusedError as exc:
            outcomes.append(NakReason(exc.reason_code).name)
        else:
            outcomes.append("signed")
    check = qualification.expect(
        "countersign.wrong_counter",
        "COUNTERSIGN with a counter ahead or behind the device's next is refused",
        ",".join(outcomes),
        "COUNTER_MISMATCH,COUNTER_MISMATCH",
    )
    assert check.passed, check.describe()
    assert device.identity().counter == identity.counter
