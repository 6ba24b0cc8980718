"""Signed prescriptions: the file format, and the check a patient's home makes of it.

A signed protocol file is the protocol's YAML text, byte for byte as the clinic signed it,
followed by one last line that holds the signature. That line is a YAML comment, so the
protocol parser reads a signed file like any other (``liv protocol check`` still describes it)::

    # liv-signature: ed25519 key=<public key, base64> sig=<signature, base64>

The signature is Ed25519 (RFC 8032, through the ``cryptography`` package) over
``SIGNED_CONTEXT`` followed by every byte before that line: every field, every comment, every
space. Changing one byte of the text makes the signature fail. The public key in the line only
names who signed; a home trusts a prescription only when that key is the clinic key it was
enrolled with (``sessions.home.LivHome.enrol``). The signing side is ``sessions.clinic.keys``;
the patient's computer holds no secret (docs/trust.md).

Errors::

    LivError (firmware_bridge.errors)
    └── PrescriptionError   a prescription the home must refuse; the message is the patient's
                            sentence, ``check`` says why in detail
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_bridge.errors import LivError
from sessions.wording import say

__all__ = [
    "NOT_SIGNED_SENTENCE",
    "SIGNATURE_MARK",
    "SIGNED_CONTEXT",
    "PrescriptionError",
    "SignatureCheck",
    "SignatureStatus",
    "check_signature",
    "fingerprint",
    "public_key_from_pem",
    "public_key_pem",
    "read_public_key",
    "sign_protocol_bytes",
]

_log = logging.getLogger(__name__)

# What the patient reads when a prescription cannot be trusted, whatever the reason.
NOT_SIGNED_SENTENCE = say("setup.not_signed")
# Signed before the protocol's bytes, so that a signature made for anything else (a log record,
# another format version) can never pass as a prescription's.
SIGNED_CONTEXT = b"liv prescription v1\n"
SIGNATURE_MARK = b"# liv-signature:"
_SIGNATURE_LINE_RE = re.compile(
    rb"# liv-signature: ed25519 key=([A-Za-z0-9+/]{43}=) sig=([A-Za-z0-9+/]{86}==)\n"
)
_MAX_KEY_FILE_BYTES = 16_384


class PrescriptionError(LivError):
    """A prescription that must be refused; ``str()`` is the one sentence the patient reads."""

    def __init__(self, sentence: str, check: SignatureCheck | None = None) -> None:
        self.check = check
        super().__init__(sentence)


class SignatureStatus(enum.Enum):
    """What the signature of a protocol file shows (the first that applies)."""

    UNSIGNED = "unsigned"  # no signature line
    ALTERED = "altered"  # a signature that does not match the text: changed after signing
    OTHER_KEY = "other_key"  # intact, but signed by a key the home is not enrolled with
    VALID = "valid"  # intact and signed by the enrolled clinic key (or any key, when unchecked)


@dataclass(frozen=True)
class SignatureCheck:
    """The signature of one protocol file: its status, and the signer's key when it names one."""

    status: SignatureStatus
    signer_fingerprint: str | None = None
    enrolled_fingerprint: str | None = None

    @property
    def trusted(self) -> bool:
        """Signed, intact, by the enrolled clinic key."""
        return self.status is SignatureStatus.VALID and self.enrolled_fingerprint is not None

    def describe(self) -> str:
        """One line for ``liv protocol check`` and ``liv status``."""
        if self.status is SignatureStatus.UNSIGNED:
            return (
                "not signed: a template until a clinic signs it ('liv protocol sign'); "
                "a home refuses to install it"
            )
        if self.status is SignatureStatus.ALTERED:
            return "INVALID: the file was changed after it was signed; a home refuses it"
        signer = f"clinic key {self.signer_fingerprint}"
        if self.enrolled_fingerprint is None:
            return f"valid, by {signer}; this home is not enrolled with a clinic"
        if self.status is SignatureStatus.OTHER_KEY:
            return (
                f"valid, by {signer}, but this home is enrolled with clinic key "
                f"{self.enrolled_fingerprint}: it refuses this file"
            )
        return f"valid, by {signer}, the clinic this home is enrolled with"


def fingerprint(key: Ed25519PublicKey) -> str:
    """The key's id as people compare it: SHA-256 of its 32 raw bytes, hex, in groups of 4."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return ":".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    """The public key as a PEM file holds it (SubjectPublicKeyInfo)."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def public_key_from_pem(data: bytes, source: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM text; LivError names the file when it holds none."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        _log.warning("%s holds no Ed25519 public key in PEM (liv clinic init makes one)", source)
        raise LivError(say("enroll.not_a_key", path=source))
    return key


def read_public_key(path: Path) -> Ed25519PublicKey:
    """A clinic public key file (PEM); LivError says what is wrong with it."""
    try:
        with path.open("rb") as stream:
            data = stream.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise LivError(say("enroll.missing", path=path)) from None
    except IsADirectoryError:
        raise LivError(say("enroll.folder", path=path)) from None
    except OSError as exc:
        _log.warning("cannot read the clinic key file %s: %s", path, exc.strerror)
        raise LivError(say("enroll.unreadable", path=path)) from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise LivError(say("enroll.too_large", path=path))
    return public_key_from_pem(data, str(path))


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def signature_lines(data: bytes) -> list[int]:
    """The offsets of every line of ``data`` that starts with the signature mark."""
    offsets = []
    start = 0
    for line in data.splitlines(keepends=True):
        if line.startswith(SIGNATURE_MARK):
            offsets.append(start)
        start += len(line)
    return offsets


def sign_protocol_bytes(body: bytes, key: Ed25519PrivateKey) -> bytes:
    """``body`` (a protocol file's bytes) with its signature line appended.

    A body without a final newline gets one first (it is then part of what is signed). A body
    that already holds a signature line is refused: sign the unsigned text.
    """
    if signature_lines(body):
        raise ValueError("the file is already signed: sign the protocol without its signature")
    if body and not body.endswith(b"\n"):
        body += b"\n"
    signature = key.sign(SIGNED_CONTEXT + body)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    line = SIGNATURE_MARK + b" ed25519 key=" + _b64(public) + b" sig=" + _b64(signature) + b"\n"
    return body + line


def check_signature(data: bytes, enrolled: Ed25519PublicKey | None) -> SignatureCheck:
    """What the signature of the file ``data`` shows, against the enrolled clinic key.

    With ``enrolled`` None (no home, or a home not enrolled) an intact signature is VALID but
    never ``trusted``.
    """
    enrolled_fp = None if enrolled is None else fingerprint(enrolled)
    marks = signature_lines(data)
    if not marks:
        return SignatureCheck(SignatureStatus.UNSIGNED, None, enrolled_fp)
    last = marks[-1]
    match = _SIGNATURE_LINE_RE.fullmatch(data, last)
    if len(marks) > 1 or match is None:  # a second, moved or mangled signature line
        return SignatureCheck(SignatureStatus.ALTERED, None, enrolled_fp)
    try:
        raw_key = base64.b64decode(match.group(1), validate=True)
        signature = base64.b64decode(match.group(2), validate=True)
        signer = Ed25519PublicKey.from_public_bytes(raw_key)
    except (ValueError, binascii.Error):
        return SignatureCheck(SignatureStatus.ALTERED, None, enrolled_fp)
    if _b64(raw_key) != match.group(1) or _b64(signature) != match.group(2):
        # base64 ignores the unused bits of its last character: a changed byte there would
        # decode to the same key or signature, so only the one canonical spelling is accepted
        return SignatureCheck(SignatureStatus.ALTERED, None, enrolled_fp)
    signer_fp = fingerprint(signer)
    try:
        signer.verify(signature, SIGNED_CONTEXT + data[:last])
    except InvalidSignature:
        return SignatureCheck(SignatureStatus.ALTERED, signer_fp, enrolled_fp)
    if enrolled is not None and not _same_key(signer, enrolled):
        return SignatureCheck(SignatureStatus.OTHER_KEY, signer_fp, enrolled_fp)
    return SignatureCheck(SignatureStatus.VALID, signer_fp, enrolled_fp)


def require_trusted(data: bytes, enrolled: Ed25519PublicKey | None, source: str) -> None:
    """Refuse ``data`` unless the enrolled clinic key signed it, byte for byte."""
    check = check_signature(data, enrolled)
    if check.trusted:
        return
    _log.warning(
        "%s refused: signature %s (signer %s, enrolled %s)",
        source,
        check.status.value,
        check.signer_fingerprint,
        check.enrolled_fingerprint,
    )
    raise PrescriptionError(NOT_SIGNED_SENTENCE, check)


def _same_key(a: Ed25519PublicKey, b: Ed25519PublicKey) -> bool:
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return a.public_bytes(*raw) == b.public_bytes(*raw)
