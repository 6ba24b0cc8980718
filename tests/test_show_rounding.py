"""``liv show`` prints values rounded to their meaning (docs/cli.md), also from old records."""

from __future__ import annotations

import dataclasses

from controller.presence import PresenceSummary
from sessions.commands.listing import _rounded
from sessions.runner import _presence_event

PRESENCE = PresenceSummary(
    reference=0.36370668811857587,
    smallest_gap=0.6328014042222811,
    detectable=True,
    loaded_s=60.0,
    absent_s=0.0,
    undetectable_s=0.0,
    unknown_s=0.5,
    absences=0,
    temperature_compensated=False,
    coil_temp_start_c=None,
    coil_temp_end_c=None,
    calibration_temp_c=25.0,
)


def test_the_presence_event_is_written_with_figures_a_person_reads() -> None:
    detail = _presence_event(PRESENCE, 61.0)["detail"]
    assert "reference 0.364, smallest gap 0.633" in detail, detail
    unknown = _presence_event(dataclasses.replace(PRESENCE, reference=None, smallest_gap=None), 1)
    assert "reference -, smallest gap -" in unknown["detail"]


def test_show_rounds_what_older_records_stored_and_leaves_the_rest() -> None:
    stored = (
        "absent 0.0 s (0 step-offs), cannot tell 0.0 s, reference 0.36370668811857587, "
        "smallest gap 0.6328014042222811, tiny 0.000123456, plate 10.0.0.1 v1.2.3 id a1.23456b"
    )
    assert _rounded(stored) == (
        "absent 0.0 s (0 step-offs), cannot tell 0.0 s, reference 0.364, "
        "smallest gap 0.633, tiny 0.000123, plate 10.0.0.1 v1.2.3 id a1.23456b"
    )
