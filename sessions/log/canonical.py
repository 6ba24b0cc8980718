"""Canonical JSON and the record hash, as documented for auditors in docs/log-format.md."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

from sessions.log.records import HASH_EXCLUDED, MAX_SAFE_INTEGER, OPTIONAL_FIELDS

# --- canonical JSON and the hash -----------------------------------------------------------------


def number_text(value: float) -> str:
    """A number as the hash sees it: six decimals, trailing zeros and point removed, no -0."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} is too large to be logged (limit 2**53)")
        return str(value)
    return _float_text(value)


def _float_text(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not a finite number")
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def canonical_json(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, numbers by :func:`number_text`, UTF-8 text."""
    parts: list[str] = []
    _canon(value, parts)
    return "".join(parts)


def _safe_int(value: Any) -> bool:
    """An int (not a bool) that :func:`number_text` writes as it is: within 2**53, where its
    float is exact, so '.6f' stripped gives its digits too."""
    return type(value) is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER


def _float_pairs(value: list[Any] | tuple[Any, ...]) -> str | None:
    """``value`` as canonical JSON if it is a list of pairs of numbers (an envelope: thousands
    of points in a finished record; read back from JSON, its whole numbers are ints), else None
    (the general path writes it, or refuses it).

    The text is :func:`number_text`'s for every number, written without a call per number: a
    non-finite float (its text holds an "n": nan, inf) is left to the general path, which
    refuses it; a -0 can only stand first or second in a pair, where it is made 0.
    """
    out: list[str] = []
    append = out.append
    for pair in value:
        kind = type(pair)
        if (kind is not list and kind is not tuple) or len(pair) != 2:
            return None
        a, b = pair
        if (type(a) is not float and not _safe_int(a)) or (
            type(b) is not float and not _safe_int(b)
        ):
            return None
        append(f"[{f'{a:.6f}'.rstrip('0').rstrip('.')},{f'{b:.6f}'.rstrip('0').rstrip('.')}]")
    text = "[" + ",".join(out) + "]"
    if "n" in text:
        return None
    return text.replace("[-0,", "[0,").replace(",-0]", ",0]")


def _canon(value: Any, parts: list[str]) -> None:
    kind = type(value)
    if kind is float:
        parts.append(_float_text(value))
    elif (kind is list or kind is tuple) and all(type(item) is float for item in value):
        parts.append("[" + ",".join(map(_float_text, value)) + "]")  # fast path: envelopes
    elif kind is list or kind is tuple:
        first = type(value[0]) if len(value) > 1 else None
        pairs = _float_pairs(value) if first is list or first is tuple else None
        if pairs is not None:
            parts.append(pairs)
            return
        parts.append("[")
        for i, item in enumerate(value):
            if i:
                parts.append(",")
            _canon(item, parts)
        parts.append("]")
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int | float):
        parts.append(number_text(value))
    elif isinstance(value, str):
        parts.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, list | tuple):
        _canon(list(value), parts)
    elif isinstance(value, dict):
        parts.append("{")
        for i, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise TypeError(f"object key {key!r} is not text")
            if i:
                parts.append(",")
            parts.append(json.dumps(key, ensure_ascii=False))
            parts.append(":")
            _canon(value[key], parts)
        parts.append("}")
    else:
        raise TypeError(f"{type(value).__name__} cannot be written to the log")


def hash_body(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields a record's hash covers: all but both hashes, and an optional field
    (``OPTIONAL_FIELDS``) only when it holds a value, so records written before it was added
    hash as they always did."""
    return {
        k: v
        for k, v in record.items()
        if k not in HASH_EXCLUDED and not (v is None and k in OPTIONAL_FIELDS)
    }


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """sha256 (lowercase hex) of UTF-8 ``prev_hash + canonical_json(hash_body(record))``."""
    body = hash_body(record)
    return hashlib.sha256((prev_hash + canonical_json(body)).encode("utf-8")).hexdigest()
