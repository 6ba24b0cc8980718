"""Problems a clinician has dealt with: acknowledged with a note, kept on record (docs/clinic.md).

A problem row (table ``problems``) is never changed or deleted. Acknowledging one adds a row
to ``problem_notes`` (migration 8): the problem's id, when, by whom, and a short note. A
problem is *acknowledged* when a note was written on it or on the same problem found earlier
or later in the same file: same kind, patient, log and record, and same file (its SHA-256; a
file that could not be read is told apart by its sentence). So importing the same file again
does not reopen what was acknowledged, while the same kind of problem found in another file
(a new export that is still rolled back, a new set-back) is a new occurrence and shows as
open. Everything else shows the open problems only; ``--all`` shows the acknowledged ones
with their notes.
"""

from __future__ import annotations

import getpass
import itertools
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from firmware_bridge.errors import LivError
from sessions.clinic.db import ClinicDb, now_utc

MAX_NOTE_CHARS = 500  # a few sentences: what was done; the detail belongs in the patient's file
MAX_BY_CHARS = 100
MIN_ID_CHARS = 4  # the shortest id prefix `liv clinic acknowledge` accepts
SHORT_ID_CHARS = 8  # the id shown (longer when two problems share its first 8 characters)

ProblemKey = tuple[str, str, str, int, str, str]


class ProblemNoteError(LivError):
    """An acknowledgement that was not recorded; the message says why and what is allowed."""


@dataclass(frozen=True)
class Note:
    """An acknowledgement: on which problem, when, by whom, why."""

    problem_id: str
    acknowledged_utc: str
    acknowledged_by: str
    note: str


@dataclass(frozen=True)
class Problem:
    """One recorded problem, and the note that acknowledges it (None: open)."""

    problem_id: str
    kind: str
    patient_id: str | None
    log_id: str | None
    chain_index: int | None
    detail: str
    found_utc: str
    file_name: str
    file_sha256: str
    note: Note | None

    @property
    def open(self) -> bool:
        return self.note is None

    @property
    def key(self) -> ProblemKey:
        return problem_key(
            self.kind, self.patient_id, self.log_id, self.chain_index, self.file_sha256,
            self.detail,
        )  # fmt: skip


def problem_key(
    kind: str,
    patient_id: str | None,
    log_id: str | None,
    chain_index: int | None,
    file_sha256: str,
    detail: str,
) -> ProblemKey:
    """What makes two problem rows the same problem: kind, patient, record, file and what was
    found. The sentence counts even for the same file: a refusal can depend on what the
    database held when the file came (the same old backup restored twice loses 4 records the
    first time and 34 the second), and the same file against the same database gives the same
    sentence, so a plain re-import stays acknowledged."""
    return (
        kind,
        patient_id or "",
        log_id or "",
        -1 if chain_index is None else int(chain_index),
        file_sha256,
        detail,
    )


_SELECT = (
    "SELECT p.problem_id, p.kind, p.patient_id, p.log_id, p.chain_index, p.detail,"
    " p.found_utc, i.file_name, i.file_sha256, p.import_id"
    " FROM problems p JOIN imports i ON i.import_id = p.import_id"
)


@dataclass(frozen=True)
class _Noted:
    note: Note
    import_id: str


def _notes_by_key(db: ClinicDb) -> dict[ProblemKey, list[_Noted]]:
    """Every note, by the problem it acknowledges, oldest first."""
    found: dict[ProblemKey, list[_Noted]] = {}
    for row in db.query(
        _SELECT.replace("SELECT ", "SELECT n.acknowledged_utc, n.acknowledged_by, n.note, ", 1)
        + " JOIN problem_notes n ON n.problem_id = p.problem_id"
        " ORDER BY n.acknowledged_utc, p.problem_id"
    ):
        when, by, text, problem_id, kind, patient, log_id, index, detail, _, _, sha, imp = row
        key = problem_key(str(kind), patient, log_id, index, str(sha), str(detail))
        note = Note(str(problem_id), str(when), str(by), str(text))
        found.setdefault(key, []).append(_Noted(note, str(imp)))
    return found


def _covering(problem_id: str, import_id: str, noted: Sequence[_Noted]) -> Note | None:
    """The note that acknowledges a problem: its own, else one on the same problem found by
    another import (two problems of one import are never the same problem)."""
    for n in noted:
        if n.note.problem_id == problem_id:
            return n.note
    for n in noted:
        if n.import_id != import_id:
            return n.note
    return None


def _problem(row: Sequence[Any], notes: dict[ProblemKey, list[_Noted]]) -> Problem:
    problem_id, kind, patient, log_id, index, detail, found, file_name, sha, imp = row
    key = problem_key(str(kind), patient, log_id, index, str(sha), str(detail))
    return Problem(
        problem_id=str(problem_id),
        kind=str(kind),
        patient_id=None if patient is None else str(patient),
        log_id=None if log_id is None else str(log_id),
        chain_index=None if index is None else int(index),
        detail=str(detail),
        found_utc=str(found),
        file_name=str(file_name),
        file_sha256=str(sha),
        note=_covering(str(problem_id), str(imp), notes.get(key, ())),
    )


def all_problems(db: ClinicDb) -> list[Problem]:
    """Every recorded problem, oldest first, each with the note that acknowledges it."""
    notes = _notes_by_key(db)
    return [_problem(r, notes) for r in db.query(_SELECT + " ORDER BY p.found_utc, p.problem_id")]


def list_problems(db: ClinicDb, include_acknowledged: bool = False) -> list[Problem]:
    """The open problems (``include_acknowledged``: every problem), oldest first."""
    return [p for p in all_problems(db) if include_acknowledged or p.open]


def short_id_length(ids: Iterable[str]) -> int:
    """The shortest prefix length, at least SHORT_ID_CHARS, that tells every id apart."""
    ordered = sorted(ids)
    length = SHORT_ID_CHARS
    for a, b in itertools.pairwise(ordered):
        common = 0
        while common < min(len(a), len(b)) and a[common] == b[common]:
            common += 1
        length = max(length, common + 1)
    return length


def check_note(note: str) -> str:
    """The note as recorded (trimmed), or ProblemNoteError saying what is allowed."""
    text = note.strip()
    if not text:
        raise ProblemNoteError(
            "the note is empty: say in a few words what was done, e.g. --note 'called the "
            "patient; clock set to automatic time'"
        )
    if len(text) > MAX_NOTE_CHARS:
        raise ProblemNoteError(
            f"the note is {len(text)} characters long; at most {MAX_NOTE_CHARS} are allowed "
            "(keep the details in the patient's file)"
        )
    if _not_text(text):
        raise ProblemNoteError(
            "the note holds bytes that are not text (UTF-8): write it again in plain letters"
        )
    if _has_control(text):
        raise ProblemNoteError(
            "the note holds a line break or another control character; write it on one line"
        )
    return text


def check_by(by: str | None) -> str:
    """Who acknowledges: ``by``, else the name the operating system logged in with."""
    if by is None:
        try:
            by = getpass.getuser()
        except (OSError, KeyError, ImportError):
            by = ""
        if not by.strip():
            raise ProblemNoteError(
                "the operating system gives no user name: say who acknowledges with --by NAME"
            )
    text = by.strip()
    if not text or len(text) > MAX_BY_CHARS or _has_control(text) or _not_text(text):
        raise ProblemNoteError(
            f"--by must be a name of 1 to {MAX_BY_CHARS} characters of text (UTF-8) on one "
            f"line, not {by!r}"
        )
    return text


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)


def _not_text(text: str) -> bool:
    """Bytes that were not UTF-8 on the command line or in the environment arrive as lone
    surrogates, which no database can store."""
    return any(unicodedata.category(c) == "Cs" for c in text)


def find_problem(db: ClinicDb, given: str) -> Problem:
    """The problem whose id starts with ``given`` (at least MIN_ID_CHARS characters)."""
    wanted = given.strip().lower()
    if len(wanted) < MIN_ID_CHARS:
        raise ProblemNoteError(
            f"the problem id {given!r} is too short: give at least {MIN_ID_CHARS} characters "
            "of an id 'liv clinic problems' shows"
        )
    matches = [p for p in all_problems(db) if p.problem_id.lower().startswith(wanted)]
    if not matches:
        raise ProblemNoteError(
            f"no problem has the id {given!r}; 'liv clinic problems' lists the open problems "
            "with their ids (--all: every problem)"
        )
    if len(matches) > 1:
        raise ProblemNoteError(
            f"{len(matches)} problems have ids starting {given!r}: give more of the id"
        )
    return matches[0]


def acknowledge(db: ClinicDb, given: str, note: str, by: str | None = None) -> Problem:
    """Record that a clinician dealt with a problem: a row of ``problem_notes``, nothing else.

    Raises ProblemNoteError for an empty or too long note, a bad name, an unknown or ambiguous
    id, or a problem already acknowledged (the note that did it is named).
    """
    text = check_note(note)
    who = check_by(by)

    def work() -> Problem:
        with db.transaction():
            problem = find_problem(db, given)
            if problem.note is not None:
                n = problem.note
                raise ProblemNoteError(
                    f"problem {given} is already acknowledged, by {n.acknowledged_by} at "
                    f"{n.acknowledged_utc}: {n.note!r}; 'liv clinic problems --all' shows it"
                )
            when = now_utc()
            db.execute(
                "INSERT INTO problem_notes (problem_id, acknowledged_utc, acknowledged_by, note)"
                " VALUES (?, ?, ?, ?)",
                (problem.problem_id, when, who, text),
            )
        return Problem(**{**problem.__dict__, "note": Note(problem.problem_id, when, who, text)})

    return db.retrying(work, f"acknowledge problem {given}")


def acknowledged_counts(problems: Iterable[Problem]) -> tuple[dict[str | None, int], int]:
    """Open problems per patient (None: no patient) and how many are acknowledged."""
    open_by: dict[str | None, int] = {}
    done = 0
    for p in problems:
        if p.open:
            open_by[p.patient_id] = open_by.get(p.patient_id, 0) + 1
        else:
            done += 1
    return open_by, done


__all__ = [
    "MAX_NOTE_CHARS",
    "Note",
    "Problem",
    "ProblemNoteError",
    "acknowledge",
    "acknowledged_counts",
    "all_problems",
    "find_problem",
    "list_problems",
    "short_id_length",
]
