"""What a report says beside its figures (ReportContext) and the shapes of what it reads."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

from sessions.adherence import (
    AdherenceReport,
    Plan,
    SessionLike,
    counted_kinds,
    session_kind,
)
from sessions.log import TrustResult, VerifyResult

# The weekly session adherence the trend is drawn against when the protocol names none: the
# share of prescribed sessions commonly asked of home device therapy (e.g. CPAP's 70%, here a
# little higher). A protocol's own ``adherence_target`` (a fraction) takes its place.
DEFAULT_ADHERENCE_TARGET = 0.8


@dataclass(frozen=True)
class ReportContext:
    """What the report says beside the adherence figures: facts from the log as a whole.

    ``integrity`` is the log's verification (None: not checked); ``last_session`` the local day
    of the patient's latest session up to today; ``target`` the weekly adherence target and
    ``target_source`` where it comes from; ``starts`` the local start times (HH:MM) by day.
    Only sessions that count are read: simulated (outside a demo) and engineering runs are not.
    """

    integrity: VerifyResult | None = None
    trust: TrustResult | None = None  # what the plate vouches for (None: not checked)
    last_session: date | None = None
    target: float = DEFAULT_ADHERENCE_TARGET
    target_source: str = "the report's default; the protocol sets none"
    starts: Mapping[date, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        report: AdherenceReport,
        protocol: object,
        sessions: Iterable[SessionLike],
        integrity: VerifyResult | None,
        trust: TrustResult | None = None,
    ) -> ReportContext:
        counted = counted_kinds(report.demo)  # simulated and engineering runs are apart
        theirs = sorted(
            (
                s
                for s in sessions
                if s.patient_id == report.patient_id and session_kind(s) in counted
            ),
            key=lambda s: (s.local_date, s.slot, _start_text(s)),
        )
        past = [s.local_date for s in theirs if s.local_date <= report.today]
        starts: dict[date, list[str]] = defaultdict(list)
        for s in theirs:
            starts[s.local_date].append(_start_text(s))
        own: object = getattr(protocol, "adherence_target", None)
        target = DEFAULT_ADHERENCE_TARGET
        known = isinstance(own, int | float) and not isinstance(own, bool) and 0 < own <= 1
        if known and isinstance(own, int | float):
            target = float(own)
        return cls(
            integrity=integrity,
            trust=trust,
            last_session=max(past) if past else None,
            target=target,
            target_source="the protocol's" if known else cls.target_source,
            starts={d: tuple(v) for d, v in starts.items()},
        )

    @property
    def integrity_failed(self) -> bool:
        if self.integrity is None:
            return False
        return not self.integrity.ok or (self.trust is not None and not self.trust.ok)

    def integrity_text(self) -> str:
        """The log's verification status in one sentence (two when the plate's vouching fails)."""
        if self.integrity is None:
            return "Log integrity: not checked."
        trust = self.trust
        if self.integrity.ok and trust is not None and not trust.ok:
            more = trust.problem_count - 1
            also = f" ({more} more; 'liv verify' lists them)" if more > 0 else ""
            first = trust.problems[0] if trust.problems else "a countersignature does not hold"
            return (
                "LOG NOT VOUCHED FOR BY THE PLATE: the hash chains are intact, but the plate's "
                f"countersignatures do not cover these records as they stand: {first}{also}. "
                "These figures cannot be trusted until 'liv verify' passes; contact the clinic."
            )
        if self.integrity.ok:
            if trust is None:
                return (
                    f"Log integrity: verified ({self.integrity.records_checked} records, every "
                    "hash chain intact)."
                )
            legacy = f", {trust.legacy} recorded before device signatures" if trust.legacy else ""
            if trust.plate_checked:
                return (
                    f"Log integrity: verified ({self.integrity.records_checked} records, every "
                    f"hash chain intact; {trust.vouched} vouched for by the plate{legacy}; the "
                    "plate's counter matches)."
                )
            # Offline every check reads files the patient's computer can rewrite together
            return (
                f"Log integrity: verified without the plate ({self.integrity.records_checked} "
                f"records, every hash chain intact; {trust.vouched} vouched for by the paired "
                f"plate's key{legacy}). Records deleted from the end, or the whole log re-signed "
                "after the plate's pairing was changed, can only be detected with the plate "
                "connected ('liv verify'), or at the clinic."
            )
        bad = self.integrity.first_bad
        where = (
            ""
            if bad is None
            else f" Record {bad.chain_index} (session {bad.session_id}) of chain {bad.chain}: "
            f"{bad.what}."
        )
        return (
            "LOG INTEGRITY FAILED: the session log was changed after it was written, so these "
            f"figures cannot be trusted.{where} Run 'liv verify' and contact the clinic."
        )

    def last_session_text(self, today: date) -> str:
        if self.last_session is None:
            return "no session logged"
        days = (today - self.last_session).days
        ago = "today" if days == 0 else "yesterday" if days == 1 else f"{days} days ago"
        return f"{self.last_session.isoformat()} ({ago})"


def _start_text(session: object) -> str:
    """HH:MM of a session's local start (protocol's zone, as the log stores it)."""
    started = getattr(session, "started_local", "")
    text = started if isinstance(started, str) else started.isoformat()
    return str(text)[11:16]


class ReportProtocol(Plan, Protocol):
    """The fields of a patient protocol the HTML report shows (all of ``Plan``)."""


class ReportSummary(SessionLike, Protocol):
    """The fields of a logged session the HTML report reads (``sessions.log.SessionSummary``)."""

    @property
    def target_g(self) -> float: ...
    @property
    def protocol_json(self) -> str: ...


class ReportSession(ReportSummary, Protocol):
    """A logged session with its envelope, as the session chart draws it (``SessionRecord``)."""

    @property
    def envelope(self) -> Sequence[tuple[float, float]]: ...
