"""Time at dose counts only while somebody is known to stand on the plate.

The presence detector needs half a second of the hold to take its reference; until then nobody is
known to be on the plate, and that time is not dose. A patient who never steps on gets 0
minutes, so the day shows as missed, never as partial.
"""

from __future__ import annotations

from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from tests.test_resume import DEVICE_ID, home, liv_start  # noqa: F401  (fixture)


def test_a_patient_who_never_steps_on_gets_no_minutes_at_dose(home: LivHome) -> None:  # noqa: F811
    empty_plate = f"sim://?mass=0&seed=4&speed=max&device_id={DEVICE_ID}"
    assert liv_start(home, empty_plate) == 130
    with SessionLog(home.db_path()) as log:
        (record,) = log.sessions()
    assert record.status is SessionStatus.STOPPED_BY_PATIENT
    assert "nobody on the plate" in (record.reason or "")
    assert record.minutes_at_dose == 0.0
