"""Non-volatile memory of a simulated plate: its device key, session counter and chain head.

A real plate keeps these in a secure element (docs/protocol.md 9.8); the simulator keeps them
in files, one directory per device id, so that they survive across runs and a test can find
(and tamper with) them. The directory is, first match wins:

1. ``sim://?nv=DIR``;
2. ``$LIV_SIM_STATE_DIR``;
3. ``$XDG_STATE_HOME/liv/sim`` (when ``XDG_STATE_HOME`` is an absolute path);
4. ``~/.local/state/liv/sim``.

Files of ``DIR/<device id>/``: ``device_key`` (the Ed25519 private key, 32 raw bytes, mode
600) and ``counter.json`` (counter, head and the last countersignature, for an idempotent
re-answer), each written to a temporary file, fsynced and renamed over the old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from firmware_bridge.countersign import GENESIS_HEAD
from firmware_bridge.userdirs import user_state_dir

ENV_STATE_DIR = "LIV_SIM_STATE_DIR"
KEY_FILE = "device_key"
STATE_FILE = "counter.json"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def state_root(explicit: str | None = None) -> Path:
    """Where simulated plates keep their non-volatile memory (see the module docstring)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_STATE_DIR, "")
    if env:
        return Path(env).expanduser()
    return user_state_dir("liv", "sim")


def device_dir_name(device_id: str) -> str:
    """A file name for a device id: the id itself when it is plain, else ``hex-`` and its hex."""
    if _SAFE_NAME.fullmatch(device_id):
        return device_id
    return "hex-" + device_id.encode("utf-8").hex()


@dataclass(frozen=True)
class LastSignature:
    """The device's last countersignature, kept to answer a repeated request identically."""

    digest: bytes
    prev_head: bytes
    signature: bytes


@dataclass(frozen=True)
class NvState:
    counter: int
    head: bytes
    last: LastSignature | None


def _write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class DeviceNv:
    """One simulated plate's non-volatile memory, read lazily at first use."""

    def __init__(self, root: Path, device_id: str) -> None:
        self.path = root / device_dir_name(device_id)
        self._key: Ed25519PrivateKey | None = None
        self._state: NvState | None = None

    def _ensure_dir(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def key(self) -> Ed25519PrivateKey:
        """The device key; created (mode 600) the first time the plate needs it."""
        if self._key is None:
            self._ensure_dir()
            key_path = self.path / KEY_FILE
            if not key_path.exists():
                seed = Ed25519PrivateKey.generate().private_bytes_raw()
                with contextlib.suppress(FileExistsError):
                    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        os.write(fd, seed)
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            self._key = Ed25519PrivateKey.from_private_bytes(key_path.read_bytes())
        return self._key

    @property
    def public_key(self) -> bytes:
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def state(self) -> NvState:
        if self._state is None:
            state_path = self.path / STATE_FILE
            if not state_path.exists():
                self._state = NvState(0, GENESIS_HEAD, None)
            else:
                obj = json.loads(state_path.read_text(encoding="utf-8"))
                last = obj.get("last")
                self._state = NvState(
                    int(obj["counter"]),
                    bytes.fromhex(obj["head"]),
                    None
                    if last is None
                    else LastSignature(
                        bytes.fromhex(last["digest"]),
                        bytes.fromhex(last["prev_head"]),
                        bytes.fromhex(last["signature"]),
                    ),
                )
        return self._state

    def commit(self, state: NvState) -> None:
        """Replace counter, head and last signature in one atomic, durable write."""
        self._ensure_dir()
        last = state.last
        obj = {
            "counter": state.counter,
            "head": state.head.hex(),
            "last": None
            if last is None
            else {
                "digest": last.digest.hex(),
                "prev_head": last.prev_head.hex(),
                "signature": last.signature.hex(),
            },
        }
        _write_atomically(self.path / STATE_FILE, json.dumps(obj, indent=1).encode("utf-8"))
        self._state = state
