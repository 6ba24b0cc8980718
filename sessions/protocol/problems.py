"""What is wrong with a protocol: ProtocolProblem, ProtocolFileError, and how values are quoted."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from firmware_bridge.errors import LivError

_SAFE_SHOWN_RE = re.compile(r"[\w.:+\-/@&*!~,%]+")


_EXAMPLE_HINT = (
    "a protocol is a mapping of 'field: value' lines such as 'patient_id: P-0042' "
    "(see examples/ and docs/protocol-file.md)"
)


@dataclass(frozen=True)
class ProtocolProblem:
    """One thing wrong with a protocol: the file line (when known), the field, and what."""

    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        return self.message if self.line is None else f"line {self.line}: {self.message}"


def _problem_order(problem: ProtocolProblem) -> tuple[bool, int]:
    return (problem.line is None, problem.line or 0)


class ProtocolFileError(LivError, ValueError):
    """A protocol file (or dict) that cannot be accepted; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: Iterable[ProtocolProblem]) -> None:
        self.source = source
        # sorted() is stable: problems on one line keep the order they were found in.
        self.problems: tuple[ProtocolProblem, ...] = tuple(sorted(problems, key=_problem_order))
        if len(self.problems) == 1:
            text = f"{source}: {self.problems[0]}"
        else:
            listed = "\n".join(f"  {p}" for p in self.problems)
            text = f"{source}: {len(self.problems)} problems, the protocol is refused:\n{listed}"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.source, self.problems))


class _Problems:
    """Collects problems while a whole protocol is checked."""

    def __init__(self) -> None:
        self.items: list[ProtocolProblem] = []

    def add(self, line: int | None, field: str, message: str) -> None:
        self.items.append(ProtocolProblem(line, field, message))


def _shown(text: str) -> str:
    """The value as written, quoted only when it would otherwise be unclear."""
    if len(text) > 40:
        text = text[:37] + "..."
    if _SAFE_SHOWN_RE.fullmatch(text):
        return text
    return json.dumps(text)
