"""YAML read into a tree of exact text (no implicit types), and a dict turned into the same tree."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeAlias

import yaml
from yaml.events import AliasEvent, StreamEndEvent, StreamStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sessions.protocol.problems import _EXAMPLE_HINT, ProtocolProblem, _Problems

_MAX_NESTING = 16  # deeper YAML than this is not a protocol (and would recurse without end)
_REFUSED_TAG = "!liv/refused"  # marks a node already reported (alias, anchor, explicit tag)


@dataclass(frozen=True)
class _Scalar:
    text: str
    line: int | None


@dataclass(frozen=True)
class _Seq:
    items: tuple[_Tree, ...]
    line: int | None


@dataclass(frozen=True)
class _Entry:
    key_line: int | None
    value: _Tree


@dataclass(frozen=True)
class _Map:
    entries: dict[str, _Entry]  # first occurrence of each key, in written order
    line: int | None


@dataclass(frozen=True)
class _Refused:
    """A value already reported (an alias, an anchor, a tag): not judged a second time."""

    line: int | None


_Tree: TypeAlias = _Scalar | _Seq | _Map | _Refused


class _TooDeepError(Exception):
    def __init__(self, line: int | None) -> None:
        self.line = line
        super().__init__(line)


def _tag_as_written(tag: str) -> str:
    prefix = "tag:yaml.org,2002:"
    shown = "!!" + tag[len(prefix) :] if tag.startswith(prefix) else tag
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _mark_line(mark: Any) -> int | None:
    line = getattr(mark, "line", None)
    return line + 1 if isinstance(line, int) else None


class _StrictLoader(yaml.SafeLoader):
    """Composes YAML nodes with no implicit types; notes anchors, aliases and tags as problems.

    Only the reader, scanner, parser and composer are used: the tree of nodes is converted by
    this module, field by field, never by a YAML constructor.
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 (PyYAML's class attribute)

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.refusals: list[ProtocolProblem] = []
        self._depth = 0

    def _next_event(self, consume: bool) -> Any:
        """The next parser event (PyYAML's parser methods are untyped)."""
        step: Callable[[], Any] = self.get_event if consume else self.peek_event
        return step()

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self._next_event(consume=False)
        start_mark: Any = event.start_mark
        end_mark: Any = event.end_mark
        line = _mark_line(start_mark)
        if isinstance(event, AliasEvent):
            self._next_event(consume=True)
            self.refusals.append(
                ProtocolProblem(
                    line,
                    "",
                    f"the alias *{event.anchor} is not allowed: write the value out in full "
                    "(anchors and aliases hide what a field holds)",
                )
            )
            return ScalarNode(_REFUSED_TAG, "", start_mark, end_mark)
        refused = False
        if event.anchor is not None:
            refused = True
            self.anchors.pop(event.anchor, None)  # refused anyway: no "duplicate anchor" error
            self.refusals.append(
                ProtocolProblem(
                    line,
                    "",
                    f"the anchor &{event.anchor} is not allowed: write each value out in full "
                    "(anchors and aliases hide what a field holds)",
                )
            )
        tag = getattr(event, "tag", None)
        if tag is not None:
            refused = True
            self.refusals.append(
                ProtocolProblem(
                    line,
                    "",
                    f"the YAML tag {_tag_as_written(str(tag))} is not allowed: a protocol "
                    "holds plain values only",
                )
            )
        self._depth += 1
        try:
            if self._depth > _MAX_NESTING:
                raise _TooDeepError(line)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if refused and node is not None:
            return ScalarNode(_REFUSED_TAG, "", node.start_mark, node.end_mark)
        return node


def _compose(text: str, problems: _Problems) -> Node | None:
    """The single document's root node, or None (with the reason added to ``problems``)."""
    loader: _StrictLoader | None = None
    root: Node | None = None
    try:
        loader = _StrictLoader(text)  # checks every character first
        if loader.check_event(StreamStartEvent):
            loader._next_event(consume=True)
        if loader.check_event(StreamEndEvent):
            problems.add(None, "", "the file holds no fields; " + _EXAMPLE_HINT)
            return None
        root = loader.compose_document()
        if not loader.check_event(StreamEndEvent):
            second = loader._next_event(consume=False)
            problems.add(
                _mark_line(second.start_mark),
                "",
                "a second YAML document starts here: a protocol file holds exactly one "
                "(remove the '---' line and what follows, or split the file)",
            )
    except _TooDeepError as exc:
        problems.add(exc.line, "", f"the YAML nests deeper than {_MAX_NESTING} levels")
        root = None
    except yaml.MarkedYAMLError as exc:
        line = _mark_line(exc.problem_mark) or _mark_line(exc.context_mark)
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        problems.add(line, "", f"the YAML cannot be read: {what}")
        root = None
    except yaml.reader.ReaderError as exc:
        position = exc.position if isinstance(exc.position, int) else 0
        line = text.count("\n", 0, position) + 1
        code = exc.character if isinstance(exc.character, int) else 0
        problems.add(
            line,
            "",
            f"the file contains a control character YAML does not allow (U+{code:04X}); "
            "save it as plain text",
        )
        root = None
    except yaml.YAMLError as exc:  # any other reader or parser complaint
        problems.add(None, "", f"the YAML cannot be read: {exc}")
        root = None
    finally:
        if loader is not None:
            problems.items.extend(loader.refusals)
            loader.dispose()
    return root


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _tree_from_node(node: Node, path: str, problems: _Problems) -> _Tree:
    line = _mark_line(node.start_mark)
    if node.tag == _REFUSED_TAG:
        return _Refused(line)
    if isinstance(node, ScalarNode):
        return _Scalar(str(node.value), line)
    if isinstance(node, SequenceNode):
        return _Seq(
            tuple(
                _tree_from_node(item, f"{path}[{number}]", problems)
                for number, item in enumerate(node.value, start=1)
            ),
            line,
        )
    if not isinstance(node, MappingNode):  # pragma: no cover - PyYAML has only three kinds
        return _Refused(line)
    entries: dict[str, _Entry] = {}
    for key_node, value_node in node.value:
        key_line = _mark_line(key_node.start_mark)
        if key_node.tag == _REFUSED_TAG:
            continue
        if not isinstance(key_node, ScalarNode):
            problems.add(key_line, path, "a key must be a plain name, not a list or a mapping")
            continue
        key = str(key_node.value)
        name = _join(path, key)
        if key in entries:
            problems.add(
                key_line,
                name,
                f"{name} is given twice, on line {entries[key].key_line} and line {key_line}; "
                "YAML would silently keep the last one, so each field may appear only once",
            )
            continue
        entries[key] = _Entry(key_line, _tree_from_node(value_node, name, problems))
    return _Map(entries, line)


def _float_text(value: float) -> str:
    """A float written as plain decimal digits that read back to exactly the same float."""
    if not math.isfinite(value):
        return repr(value)
    return format(Decimal(repr(value)), "f")


def _tree_from_python(value: object, path: str, problems: _Problems, depth: int = 0) -> _Tree:
    """The tree of a dict as ``PatientProtocol.to_dict`` writes it (numbers become text)."""
    name = path or "the protocol"
    if depth > _MAX_NESTING:
        problems.add(None, path, f"{name} nests deeper than {_MAX_NESTING} levels")
        return _Refused(None)
    if isinstance(value, bool):
        problems.add(None, path, f"{name} = {value} is a boolean; no field takes true/false")
        return _Refused(None)
    if value is None:
        return _Scalar("", None)
    if isinstance(value, str):
        return _Scalar(value, None)
    if isinstance(value, int):
        return _Scalar(str(value), None)
    if isinstance(value, float):
        return _Scalar(_float_text(value), None)
    if isinstance(value, list | tuple):
        return _Seq(
            tuple(
                _tree_from_python(item, f"{path}[{number}]", problems, depth + 1)
                for number, item in enumerate(value, start=1)
            ),
            None,
        )
    if isinstance(value, dict):
        entries: dict[str, _Entry] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.add(None, path, f"{name} has a key {key!r} that is not text")
                continue
            entries[key] = _Entry(
                None, _tree_from_python(item, _join(path, key), problems, depth + 1)
            )
        return _Map(entries, None)
    problems.add(None, path, f"{name} holds a {type(value).__name__}; write it as text")
    return _Refused(None)
