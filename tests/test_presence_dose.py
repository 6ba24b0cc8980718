"""Time at dose counts only while somebody is known to stand on the plate.

The presence detector needs half a second of the hold to take its reference; until then nobody is
known to be on the plate, and that time is not dose. A patient who never steps on gets 0
minutes, so the day shows as missed, never as partial.
"""

from __future__ import annotations

from pathlib import Path

from pytest_mock import MockerFixture

from sessions import runner
from sessions.home import LivHome
from sessions.log import SessionLog, SessionStatus
from tests.simhelpers import enrol_home, write_signed
from tests.test_resume import DEVICE_ID, home, liv_start, protocol_text, sim  # noqa: F401


def test_a_patient_who_never_steps_on_gets_no_minutes_at_dose(home: LivHome) -> None:  # noqa: F811
    empty_plate = f"sim://?mass=0&seed=4&speed=max&device_id={DEVICE_ID}"
    assert liv_start(home, empty_plate) == 1  # a failure, not an interruption
    with SessionLog(home.db_path()) as log:
        (record,) = log.sessions()
    assert record.status is SessionStatus.STOPPED_BY_PATIENT
    assert "nobody on the plate" in (record.reason or "")
    assert record.minutes_at_dose == 0.0


def test_the_shortfall_trip_uses_the_protocols_own_dose_band(
    home: LivHome,  # noqa: F811
    tmp_path: Path,
    mocker: MockerFixture,
) -> None:
    """A plate below the protocol's at-dose band trips cannot_reach_dose instead of running out
    the clock, which would read as the patient's shortfall."""
    text = protocol_text().replace("timezone: UTC\n", "timezone: UTC\ndose_tolerance: 0.05\n")
    write_signed(tmp_path / "tight.yaml", text)
    enrol_home(home).install_protocol(tmp_path / "tight.yaml")
    spy = mocker.spy(runner, "run_exposure")
    assert liv_start(home, sim()) == 0
    settings = spy.call_args.args[2]
    assert settings.limits.dose_shortfall_fraction == 0.05
