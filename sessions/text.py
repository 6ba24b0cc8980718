"""Text for a terminal: what the log or a device stored is shown, never obeyed.

Stored text (a patient id, an override reason, a device id, a safety event's detail, a line of
an imported log) can hold escape sequences (ESC, CSI), other C0 and C1 control characters and
bidirectional overrides. Written raw, they could clear the screen, retitle the window, rewrite
an earlier line or reorder what a clinician reads. Every human-readable output of ``liv``
passes through here: each such character is shown as a visible escape (``\\x1b``, ``\\u202e``)
instead. Layout is kept: ``terminal_text`` keeps newlines, tabs and the CR of a CRLF.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import TextIO

# Cc: C0, DEL and C1 controls; Cf: format characters (bidi embeddings, overrides and isolates,
# zero-width characters); Cs: lone surrogates; Zl, Zp: line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_LAYOUT_RE = re.compile(r"\r\n|[\n\t]")


def _visible(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _is_unsafe(char: str) -> bool:
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def terminal_line(value: object) -> str:
    """``value`` as one line of safe text: every control or format character made visible."""
    text = str(value)
    if text.isprintable():  # the common case, and a fast one
        return text
    return "".join(_visible(c) if _is_unsafe(c) else c for c in text)


def terminal_text(text: str) -> str:
    """Like ``terminal_line``, but newlines, tabs and CRLF line ends are kept as layout."""
    parts: list[str] = []
    end = 0
    for match in _LAYOUT_RE.finditer(text):
        parts.append(terminal_line(text[end : match.start()]))
        parts.append(match.group())
        end = match.end()
    parts.append(terminal_line(text[end:]))
    return "".join(parts)


def echo(text: str = "", *, file: TextIO | None = None, end: str = "\n") -> None:
    """Print ``text`` for a person to read, made safe for a terminal."""
    stream = sys.stdout if file is None else file
    stream.write(terminal_text(text) + end)
