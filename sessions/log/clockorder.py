"""A home clock set back between sessions: a record dated before one already recorded.

Adherence is counted by day from the times the home computer writes, so a computer whose clock
is set back to yesterday evening records a session run now as yesterday's. Each time is covered
by the record's hash, and two orders cannot be rearranged afterwards: the plate countersigns
records with a counter that never decreases (docs/protocol.md 9.8), and a log chains its records
in the order they finished (``chain_index``). Sessions of one home never overlap, so in either
order a record starts after every record before it ended. One that starts more than
:data:`SET_BACK_SLACK` before the latest end of the records before it was recorded with the
clock set back: it is a session that happened, but not on the day it claims, and is never
credited to that day (docs/adherence.md, docs/clinic.md).

The plate's order is the strong statement: the computer cannot re-sign it. A log's chain order
alone is weaker (the computer can rewrite an unvouched chain with other times, docs/trust.md),
and it is checked too, so a log without a plate is still seen. The check is one comparison per
record in an order the caller already reads: no query per record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sessions.log.fields import _CLOCK_SLACK

# How far a record may start before the end of one recorded before it and still be honest: a
# clock stepped back by NTP (milliseconds to seconds on a synchronised computer) or a computer
# off the network for weeks (its clock drifts a second or two a day) is well within it. A set
# back this small cannot move a session into another slot or day unless it already ran within
# five minutes of that boundary; to fill a missed slot the clock goes back hours.
SET_BACK_SLACK = timedelta(minutes=5)

PLATE = "plate"  # the plate's countersignature order (counter of one plate key)
CHAIN = "chain"  # the log's chain order (chain_index of one log)


@dataclass(frozen=True, slots=True)
class TimedRecord:
    """What the check reads of one record: its place in each order and its times."""

    session_id: str
    log_id: str
    chain_index: int | None  # None: still running (not chained yet)
    started_utc: datetime
    ended_utc: datetime | None
    device_key: str | None = None  # the key of the plate that countersigned it, if any
    counter: int | None = None
    # dated ahead of the reader's clock (``clock_problem``): never counted for its own reason,
    # and left out here, else every honest record after the clock was put right would be
    # "before" it
    ahead: bool = False


@dataclass(frozen=True, slots=True)
class SetBack:
    """A record dated before a record recorded before it ended."""

    session_id: str
    log_id: str
    chain_index: int | None
    started_utc: datetime
    earlier_session: str  # the record before it (in ``order``) that ended after it started
    earlier_ended_utc: datetime
    order: str  # PLATE or CHAIN: which order shows it

    @property
    def behind(self) -> timedelta:
        """How far before the earlier record's end this one starts."""
        return self.earlier_ended_utc - self.started_utc

    def detail(self) -> str:
        """The engineer's sentence: the record, what was seen and by which order."""
        seen = (
            "countersigned by the plate after session"
            if self.order == PLATE
            else "chained in the log after session"
        )
        started = self.started_utc.isoformat(timespec="seconds")
        earlier = self.earlier_ended_utc.isoformat(timespec="seconds")
        return (
            f"record {self.chain_index} of log {self.log_id} (session {self.session_id}) starts "
            f"{started}, {span_text(self.behind)} before session {self.earlier_session} ended "
            f"({earlier}), though it was {seen} {self.earlier_session}: the home computer's "
            "clock was set back"
        )


def dated_ahead(started_utc: datetime, ended_utc: datetime | None, now: datetime) -> bool:
    """Whether a record is dated more than a day after ``now`` (as ``clock_problem`` says)."""
    latest = now.astimezone(UTC) + _CLOCK_SLACK
    return started_utc > latest or (ended_utc is not None and ended_utc > latest)


def set_back_ids(found: Mapping[str, SetBack]) -> list[str]:
    """The session ids of ``found`` (``set_back_records``), by the time they claim."""
    return [
        b.session_id for b in sorted(found.values(), key=lambda b: (b.started_utc, b.session_id))
    ]


def span_text(delta: timedelta) -> str:
    """A time span in words: '12 min', '9 h', '3 days'."""
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} days"


def set_back_records(
    records: Iterable[TimedRecord], slack: timedelta = SET_BACK_SLACK
) -> dict[str, SetBack]:
    """The records dated before a record recorded before them ended, by session id.

    Per plate key in counter order, then per log in chain order (the plate's finding is kept
    when both see one record): each record is compared with the latest end of the records before
    it, so every session run while the clock stayed set back is found, not only the first.
    A running record (no end yet) counts with its start; a record dated ahead is left out.
    """
    items = [r for r in records if not r.ahead]
    found: dict[str, SetBack] = {}
    plates: dict[str, list[TimedRecord]] = {}
    chains: dict[str, list[TimedRecord]] = {}
    for r in items:
        if r.device_key is not None and r.counter is not None:
            plates.setdefault(r.device_key, []).append(r)
        if r.chain_index is not None:
            chains.setdefault(r.log_id, []).append(r)
    for _, group in sorted(plates.items()):
        group.sort(key=lambda r: r.counter or 0)
        _walk(group, PLATE, slack, found)
    for _, group in sorted(chains.items()):
        group.sort(key=lambda r: r.chain_index or 0)
        _walk(group, CHAIN, slack, found)
    return found


def _walk(
    ordered: Sequence[TimedRecord], order: str, slack: timedelta, found: dict[str, SetBack]
) -> None:
    latest: TimedRecord | None = None
    latest_end: datetime | None = None
    for r in ordered:
        # compared as a difference: ``latest_end - slack`` overflows for an end within the slack
        # of the earliest datetime (a hand-edited year-1 record)
        if latest is not None and latest_end is not None and latest_end - r.started_utc > slack:
            found.setdefault(
                r.session_id,
                SetBack(
                    r.session_id,
                    r.log_id,
                    r.chain_index,
                    r.started_utc,
                    latest.session_id,
                    latest_end,
                    order,
                ),
            )
        end = r.started_utc if r.ended_utc is None else max(r.started_utc, r.ended_utc)
        if latest_end is None or end > latest_end:
            latest, latest_end = r, end
