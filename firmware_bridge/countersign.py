"""The bytes a plate signs when it vouches for a session record (docs/protocol.md 6, 7, 9.8).

Pure functions over bytes, shared by the simulated firmware, the host client and the session
log's verifier, so that all three hash and sign exactly the same byte strings. Ed25519 comes
from the maintained ``cryptography`` package; nothing here is hand-written crypto.

- ``next_head(prev_head, counter, digest)`` = SHA-256(``HEAD_DOMAIN`` | prev_head | counter
  u32 LE | digest): the device's chain head after it countersigned ``digest`` as ``counter``.
- ``signed_bytes(device_id_raw, counter, digest, prev_head, new_head)`` = ``SIGN_DOMAIN`` |
  device_id_raw (16) | counter u32 LE | digest | prev_head | new_head: the Ed25519 message.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

HEAD_DOMAIN = b"LIV-HEAD-v1\x00"
SIGN_DOMAIN = b"LIV-COUNTERSIGN-v1\x00"
GENESIS_HEAD = bytes(32)  # the head of a device that has countersigned nothing (counter 0)
KEY_LEN = 32
DIGEST_LEN = 32
SIGNATURE_LEN = 64
MAX_COUNTER = 0xFFFFFFFF
_U32 = struct.Struct("<I")


def next_head(prev_head: bytes, counter: int, digest: bytes) -> bytes:
    """The device's chain head after countersigning ``digest`` as number ``counter``."""
    return hashlib.sha256(HEAD_DOMAIN + prev_head + _U32.pack(counter) + digest).digest()


def signed_bytes(
    device_id_raw: bytes, counter: int, digest: bytes, prev_head: bytes, new_head: bytes
) -> bytes:
    """The exact byte string a COUNTERSIGNATURE's Ed25519 signature covers."""
    return SIGN_DOMAIN + device_id_raw + _U32.pack(counter) + digest + prev_head + new_head


def key_id(public_key: bytes) -> str:
    """A short printable name of a device key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def valid_public_key(public_key: bytes) -> bool:
    """True if ``public_key`` is the 32-byte encoding of an Ed25519 public key."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return False
    return True


def signature_problem(
    public_key: bytes,
    device_id_raw: bytes,
    counter: int,
    digest: bytes,
    prev_head: bytes,
    new_head: bytes,
    signature: bytes,
) -> str | None:
    """Why this countersignature does not hold, or None when it does."""
    if len(public_key) != KEY_LEN or len(signature) != SIGNATURE_LEN:
        return "the key or the signature has the wrong length"
    if len(digest) != DIGEST_LEN or len(prev_head) != 32 or len(new_head) != 32:
        return "a digest or head has the wrong length"
    if not 1 <= counter <= MAX_COUNTER:
        return f"counter {counter} is outside 1..{MAX_COUNTER}"
    if next_head(prev_head, counter, digest) != new_head:
        return "the new head does not follow from the previous head and the digest"
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, signed_bytes(device_id_raw, counter, digest, prev_head, new_head))
    except (InvalidSignature, ValueError):
        return "the device's signature does not verify"
    return None
