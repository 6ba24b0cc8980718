"""Hash-chain verification, shared by verify and import."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sessions.log.canonical import canonical_json, hash_body
from sessions.log.records import GENESIS_HASH, BadRecord

# --- chain verification (shared by verify and import) --------------------------------------------


@dataclass
class _Entry:
    """One chained record as found (in the database or an import file)."""

    session_id: str
    chain_index: Any
    raw: dict[str, Any] | None
    problem: str | None = None  # why raw could not be built
    where: str = ""  # ' (line N)' for import files
    sound: bool = False  # content already shown to hash to record_hash (_fast_content_ok)
    voucher: Any = None  # an import line's device_voucher (sessions/log/vouch.py Voucher)


def _content_problem(raw: Mapping[str, Any]) -> str | None:
    """Why this record does not hash to its own record_hash, or None if it does."""
    body = hash_body(raw)
    prev_hash = raw.get("prev_hash")
    stated = raw.get("record_hash")
    if not isinstance(prev_hash, str) or not isinstance(stated, str):
        return "prev_hash or record_hash is missing"
    try:
        text = canonical_json(body)
        digest = hashlib.sha256((prev_hash + text).encode("utf-8")).hexdigest()
    except (TypeError, ValueError) as exc:
        return f"a field holds a value that cannot be hashed ({exc})"
    if json.loads(text) != body:
        return "a number is not in canonical form (six decimals): the field was edited"
    if digest != stated:
        return "the content does not match its record_hash: a field was edited"
    return None


def _index_key(entry: _Entry) -> tuple[int, int, str]:
    index = entry.chain_index
    if type(index) is int:
        return (0, index, entry.session_id)
    return (1, 0, f"{index!r}")


def _bad(chain: str, entry: _Entry, what: str) -> BadRecord:
    index = entry.chain_index if type(entry.chain_index) is int else None
    return BadRecord(chain, index, entry.session_id, what + entry.where)


def _content_bad(chain: str, ordered: list[_Entry]) -> BadRecord | None:
    """First record of a chain that does not hash to its own record_hash."""
    for entry in ordered:
        if entry.raw is None:
            return _bad(chain, entry, entry.problem or "the record cannot be read")
        if entry.sound:
            continue
        problem = _content_problem(entry.raw)
        if problem is not None:
            return _bad(chain, entry, problem)
    return None


def _link_bad(
    chain: str, ordered: list[_Entry], expected: int = 0, prev_hash: str = GENESIS_HASH
) -> BadRecord | None:
    """First record of a chain out of sequence: a gap, a duplicate, or a broken prev link.

    ``expected`` and ``prev_hash`` continue a chain checked in parts (streaming verify).
    """
    for entry in ordered:
        assert entry.raw is not None  # content checked first
        index = entry.chain_index
        if type(index) is not int:
            return _bad(chain, entry, f"chain_index {index!r} is not an integer")
        if index < expected:
            return _bad(chain, entry, f"chain_index {index} appears twice (inserted record)")
        if index > expected:
            missing = f"{expected}" if index == expected + 1 else f"{expected}-{index - 1}"
            return _bad(chain, entry, f"record {missing} before it is missing (deleted)")
        if entry.raw["prev_hash"] != prev_hash:
            return _bad(
                chain,
                entry,
                "prev_hash does not match the record before it (record inserted, replaced or "
                "reordered)",
            )
        prev_hash = entry.raw["record_hash"]
        expected = index + 1
    return None


def _verify_chains(
    chains: Sequence[tuple[str, Iterable[_Entry]]],
) -> tuple[BadRecord | None, dict[str, str]]:
    """Check every chain from its genesis: (first bad record, head hash of each sound chain).

    Content is checked in every chain before any link, so an edited record is named itself
    rather than the gap its edit leaves (an edited chain_index or log_id leaves one).
    """
    ordered = [(chain, sorted(entries, key=_index_key)) for chain, entries in chains]
    content = [_content_bad(chain, entries) for chain, entries in ordered]
    links = [
        _link_bad(chain, entries) if bad is None else None
        for (chain, entries), bad in zip(ordered, content, strict=True)
    ]
    heads: dict[str, str] = {}
    for (chain, entries), bad_content, bad_link in zip(ordered, content, links, strict=True):
        if bad_content is None and bad_link is None and entries:
            assert entries[-1].raw is not None
            heads[chain] = str(entries[-1].raw["record_hash"])
    first = next((b for b in content if b is not None), None)
    return first or next((b for b in links if b is not None), None), heads


# --- fast path for stored records (verify and export) --------------------------------------------

# A stored envelope is the canonical JSON of [[t_s, amplitude_g], ...]. When its text is
# already canonical it can be hashed (and exported) as stored, without parsing 12 000 numbers
# and formatting them back: that is what makes verifying years of log take seconds. The check
# below accepts only texts that are certainly canonical (non-negative numbers below 1e9, at
# most six decimals, no trailing zeros, no leading zeros); anything else takes the exact slow
# path, so the outcome is the same either way.
_IDENTITY = bytes(range(256))
_SHAPE = bytes.maketrans(b"123456789,;", b"111111111||")  # digits 0 or 1; one separator
# A canonical number below 1e9 in that shape: no leading zero, at most six decimals, the last
# one not zero.
_CANONICAL_SHAPE = re.compile(rb"(?:0|1[01]{0,8})(?:\.[01]{0,5}1)?")


def _canonical_pairs(text: str) -> bool:
    """True only if ``text`` is canonical JSON of a list of pairs of non-negative numbers.

    Whole-string byte operations, then one check per distinct number shape (a few dozen),
    never per number: a year of envelopes (9 million numbers) is checked in about a second.
    """
    if text == "[]":
        return True
    if not (text.startswith("[[") and text.endswith("]]")) or not text.isascii() or ";" in text:
        return False
    items = text[2:-2].replace("],[", ";").encode("ascii")
    if items.translate(_IDENTITY, b"0123456789.,;"):  # brackets left, a minus, a space ...
        return False
    separators = items.translate(_IDENTITY, b"0123456789.")
    if separators != b",;" * separators.count(b";") + b",":  # two numbers per pair
        return False
    shapes = set(items.translate(_SHAPE).split(b"|"))
    return all(_CANONICAL_SHAPE.fullmatch(shape) for shape in shapes)


def _spliced_json(raw: Mapping[str, Any], stored: Mapping[str, str]) -> str:
    """canonical_json of ``raw`` plus fields given as their canonical text (``stored``)."""
    parts = []
    for key in sorted([*raw, *stored]):
        value = stored[key] if key in stored else canonical_json(raw[key])
        parts.append(f"{json.dumps(key, ensure_ascii=False)}:{value}")
    return "{" + ",".join(parts) + "}"


def _fast_content_ok(raw: Mapping[str, Any], envelope_text: Any) -> bool:
    """True if a stored record (``raw`` without its envelope) hashes to its record_hash.

    False means "not shown here": the caller runs :func:`_content_problem` on the parsed
    record, which names the problem (or finds none, for a non-canonical but equal text).
    """
    if not isinstance(envelope_text, str) or not _canonical_pairs(envelope_text):
        return False
    prev_hash, stated = raw.get("prev_hash"), raw.get("record_hash")
    if not isinstance(prev_hash, str) or not isinstance(stated, str):
        return False
    body = {k: v for k, v in hash_body(raw).items() if k != "envelope"}
    try:
        parts = {k: f"{json.dumps(k, ensure_ascii=False)}:{canonical_json(body[k])}" for k in body}
    except (TypeError, ValueError):
        return False
    if json.loads("{" + ",".join(parts.values()) + "}") != body:  # every number canonical
        return False
    parts["envelope"] = f'"envelope":{envelope_text}'
    text = "{" + ",".join(parts[k] for k in sorted(parts)) + "}"
    return hashlib.sha256((prev_hash + text).encode("utf-8")).hexdigest() == stated


# --- streaming check of an import file -----------------------------------------------------------

ORDER_FAULT = (
    "the file lists it after record {later} of its log, but an export lists every log's records "
    "in chain order (the file was reordered or spliced)"
)


@dataclass
class _ChainRun:
    """What checking one chain of a file needs from the records before the next one."""

    expected: int = 0
    prev_hash: str = GENESIS_HASH
    top: int = -1  # the highest chain_index seen so far in the file
    hashes: dict[int, str] = field(default_factory=dict)  # index -> record_hash (repeats)
    content_bad: BadRecord | None = None
    link_bad: BadRecord | None = None
    order_bad: BadRecord | None = None


class StreamingChains:
    """Chains checked one record at a time, in the order a file lists them.

    Keeps per chain only the expected index, the previous ``record_hash``, the hashes by index
    (to tell a repeated line from a second record in one place) and the first faults found, so
    memory does not grow with the records' size. The outcome is :func:`_verify_chains`'s over
    the same records (content judged in every chain before any link, chains by ``log_id``), for
    a file listing each chain in ``chain_index`` order, as ``export_jsonl`` writes it; a record
    listed after a later one of its chain is refused as out of order (:data:`ORDER_FAULT`).
    """

    def __init__(self) -> None:
        self._chains: dict[str, _ChainRun] = {}

    def held_hash(self, log_id: str, chain_index: int) -> str | None:
        """The ``record_hash`` of the record already seen in this place, or None."""
        run = self._chains.get(log_id)
        return None if run is None else run.hashes.get(chain_index)

    def add(self, log_id: str, entry: _Entry) -> None:
        """Check one record (``entry.raw`` parsed, ``chain_index`` an int) and remember it."""
        raw = entry.raw
        assert raw is not None
        assert type(entry.chain_index) is int
        index: int = entry.chain_index
        run = self._chains.setdefault(log_id, _ChainRun())
        if run.content_bad is None and not entry.sound:
            problem = _content_problem(raw)
            if problem is not None:
                run.content_bad = _bad(log_id, entry, problem)
        if run.order_bad is None and index < run.top:
            run.order_bad = _bad(log_id, entry, ORDER_FAULT.format(later=run.top))
        if run.link_bad is None and index >= run.top:
            run.link_bad = _link_bad(log_id, [entry], run.expected, run.prev_hash)
        run.expected = max(run.expected, index + 1)
        run.prev_hash = str(raw["record_hash"])
        run.top = max(run.top, index)
        run.hashes[index] = str(raw["record_hash"])

    def result(self) -> tuple[BadRecord | None, dict[str, str]]:
        """(first bad record, head hash of each sound chain), as :func:`_verify_chains`."""
        order = sorted(self._chains)
        runs = [self._chains[log_id] for log_id in order]
        content = next((r.content_bad for r in runs if r.content_bad is not None), None)
        link = next((r.order_bad or r.link_bad for r in runs if r.order_bad or r.link_bad), None)
        heads = {
            log_id: run.prev_hash
            for log_id, run in zip(order, runs, strict=True)
            if not (run.content_bad or run.link_bad or run.order_bad)
        }
        return content or link, heads
