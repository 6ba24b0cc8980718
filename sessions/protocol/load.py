"""The ways in: a protocol from YAML text, a file's bytes, a path, or a logged dict."""

from __future__ import annotations

import pathlib
import stat
from typing import Any

from sessions.protocol.check import _checked_fields
from sessions.protocol.model import PatientProtocol
from sessions.protocol.problems import ProtocolFileError, ProtocolProblem, _Problems
from sessions.protocol.yamltree import _compose, _tree_from_node, _tree_from_python

MAX_TEXT_CHARS = 100_000  # a protocol is a page of text; anything larger is not one


def parse_protocol(text: str, source: str = "<protocol>") -> PatientProtocol:
    """Read and check a protocol from YAML text; ProtocolFileError lists every problem."""
    problems = _Problems()
    if len(text) > MAX_TEXT_CHARS:
        problems.add(
            None, "", f"the text is longer than {MAX_TEXT_CHARS} characters: not a protocol"
        )
        raise ProtocolFileError(source, problems.items)
    root = _compose(text, problems)
    tree = None if root is None else _tree_from_node(root, "", problems)
    return PatientProtocol(**_checked_fields(tree, source, problems))


def read_protocol_bytes(path: pathlib.Path | str) -> bytes:
    """The bytes of a protocol file, read once; ProtocolFileError says why it cannot be read.

    What is checked (signature, fields) and what is installed are these same bytes, so a file
    that changes while it is read cannot slip a different text between the two.
    """
    path = pathlib.Path(path)
    source = str(path)

    def refuse(message: str) -> ProtocolFileError:
        return ProtocolFileError(source, [ProtocolProblem(None, "", message)])

    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise refuse(
                "this is a folder, not a prescription file: give the signed prescription file "
                "in it (its name ends in .yaml)"
            )
        if not stat.S_ISREG(mode):
            raise refuse("this is not a regular file")
        with path.open("rb") as stream:
            data = stream.read(MAX_TEXT_CHARS * 4 + 1)
    except FileNotFoundError:
        raise refuse(
            "the prescription file does not exist: check its name and the folder it is in, or "
            "ask your clinic to send it again"
        ) from None
    except PermissionError:
        raise refuse("the protocol file cannot be read: permission denied") from None
    except OSError as exc:
        raise refuse(f"the protocol file cannot be read: {exc.strerror or exc}") from None
    if len(data) > MAX_TEXT_CHARS * 4:
        raise refuse("the file is far too large to be a protocol")
    return data


def protocol_from_bytes(data: bytes, source: str = "<protocol>") -> PatientProtocol:
    """Read and check a protocol from a file's bytes (UTF-8, an optional BOM)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problem = ProtocolProblem(
            line, "", f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8"
        )
        raise ProtocolFileError(source, [problem]) from None
    return parse_protocol(text, source)


def load_protocol(path: pathlib.Path | str) -> PatientProtocol:
    """Read and check a protocol file (UTF-8 YAML); ProtocolFileError says what is wrong."""
    return protocol_from_bytes(read_protocol_bytes(path), str(pathlib.Path(path)))


def protocol_from_dict(data: dict[str, Any]) -> PatientProtocol:
    """The protocol ``PatientProtocol.to_dict`` wrote (e.g. into a session log), checked again."""
    source = "protocol record"
    problems = _Problems()
    if not isinstance(data, dict):
        problems.add(None, "", f"a protocol record is a dict, not a {type(data).__name__}")
        raise ProtocolFileError(source, problems.items)
    tree = _tree_from_python(data, "", problems)
    return PatientProtocol(**_checked_fields(tree, source, problems))
