"""The clinic's key pair, and signing prescriptions with it.

``liv clinic init`` makes an Ed25519 key pair in the clinic's data directory
(``sessions.clinic.paths.clinic_root``)::

    clinic-private.pem   the signing key (PKCS#8, mode 600): it never leaves the clinic
    clinic-public.pem    the public key, given to every home at enrolment ('liv enroll FILE')

``liv protocol sign`` checks a protocol with the same parser and dose limits as every other
command and signs its exact bytes (sessions/prescription.py gives the format). The key is made
and used only through the ``cryptography`` package.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controller.privatefiles import PRIVATE_FILE_MODE, ensure_private_dir, write_new_file
from firmware_bridge.errors import LivError
from sessions.clinic.paths import PRIVATE_KEY_NAME
from sessions.prescription import (
    SignatureStatus,
    check_signature,
    fingerprint,
    public_key_pem,
    sign_protocol_bytes,
    signature_lines,
)
from sessions.protocol import PatientProtocol, protocol_from_bytes, read_protocol_bytes

PUBLIC_KEY_NAME = "clinic-public.pem"
_MAX_KEY_FILE_BYTES = 16_384


class ClinicKeyError(LivError):
    """A clinic key that cannot be made or used; the message says what to do."""


@dataclass(frozen=True)
class ClinicKeyFiles:
    """Where a clinic's key pair is, and the public key's fingerprint."""

    private_key: Path
    public_key: Path
    fingerprint: str


def key_files(root: Path) -> tuple[Path, Path]:
    """The private and public key files of the clinic directory ``root``."""
    return root / PRIVATE_KEY_NAME, root / PUBLIC_KEY_NAME


def init_clinic_key(root: Path) -> ClinicKeyFiles:
    """Make the clinic's key pair in ``root`` (created mode 700); never overwrites a key."""
    private_path, public_path = key_files(root)
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise ClinicKeyError(
                f"{path} already exists: this clinic already has a key, and replacing it would "
                "make every home refuse the prescriptions signed with it; move it away first "
                "if you really mean to make a new one"
            )
    ensure_private_dir(root)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        write_new_file(private_path, pem, PRIVATE_FILE_MODE)
        write_new_file(public_path, public_key_pem(key.public_key()), 0o644)
    except FileExistsError as exc:
        raise ClinicKeyError(f"{exc.filename} appeared while the key was made; try again") from None
    return ClinicKeyFiles(private_path, public_path, fingerprint(key.public_key()))


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The clinic's private key; refused when other users could read it."""
    try:
        info = path.stat()
        with path.open("rb") as stream:
            data = stream.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ClinicKeyError(
            f"{path} does not exist: make the clinic's key with 'liv clinic init', or give "
            "--key FILE"
        ) from None
    except OSError as exc:
        raise ClinicKeyError(f"{path}: the clinic key cannot be read: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ClinicKeyError(
            f"{path} can be read by other users (mode {stat.S_IMODE(info.st_mode):o}), so it "
            f"may no longer be the clinic's secret: run 'chmod 600 {path}' and make sure "
            "nobody copied it"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise ClinicKeyError(
            f"{path} is not a clinic private key (an unencrypted Ed25519 PEM key from "
            "'liv clinic init')"
        )
    return key


@dataclass(frozen=True)
class SignedProtocol:
    """A protocol the clinic signed: its checked contents and the signed file's bytes."""

    protocol: PatientProtocol
    data: bytes
    fingerprint: str


def sign_protocol_file(source: Path, key: Ed25519PrivateKey) -> SignedProtocol:
    """Check the protocol file ``source`` whole, then sign its bytes.

    The signer refuses whatever the parser refuses (ProtocolFileError lists every problem),
    and a file that is already signed.
    """
    data = read_protocol_bytes(source)
    if signature_lines(data):
        raise ClinicKeyError(
            f"{source} is already signed: sign the protocol file without its signature line "
            "(or record it with --record-signed, if this clinic signed it)"
        )
    protocol = protocol_from_bytes(data, str(source))
    return SignedProtocol(protocol, sign_protocol_bytes(data, key), fingerprint(key.public_key()))


def check_own_signed_file(source: Path, key: Ed25519PrivateKey) -> SignedProtocol:
    """A prescription file this clinic already signed (before it recorded what it signs): the
    file checked whole, its signature intact and made with ``key``'s public half.

    Raises ClinicKeyError for a file that is not signed, altered since signing, or signed with
    another key: only the clinic's own signature may be recorded as its prescription.
    """
    data = read_protocol_bytes(source)
    check = check_signature(data, key.public_key())
    if check.status is not SignatureStatus.VALID:
        why = {
            SignatureStatus.UNSIGNED: "is not signed",
            SignatureStatus.ALTERED: "was changed after it was signed (its signature does not "
            "match its text)",
            SignatureStatus.OTHER_KEY: f"is signed with another key ({check.signer_fingerprint}),"
            " not this clinic's",
        }[check.status]
        raise ClinicKeyError(
            f"{source} {why}: only a prescription signed with this clinic's key "
            f"({fingerprint(key.public_key())}) can be recorded; nothing was recorded"
        )
    protocol = protocol_from_bytes(data, str(source))
    return SignedProtocol(protocol, data, fingerprint(key.public_key()))


def default_signed_path(source: Path) -> Path:
    """Where ``liv protocol sign`` writes by default: NAME.signed.yaml beside NAME.yaml."""
    stem = source.name.removesuffix(".yaml").removesuffix(".yml")
    return source.with_name(f"{stem}.signed.yaml")
