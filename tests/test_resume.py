"""A slot cut short before any minute at dose is resumed by the next start, without a new gap.

docs/sessions.md: a slot cut short (stopped, tripped, interrupted) is resumed on the same local
day whatever it delivered, 0 minutes included. Three ways to end a slot before the hold: a
safety trip in the ramp, Ctrl-C in the first seconds, and a crash before the first checkpoint
(a running row recovered as interrupted).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controller.calibration import identify
from firmware_bridge.client import DeviceClient
from sessions.cli import main
from sessions.home import LivHome
from sessions.log import SessionLog, SessionRecord, SessionStatus
from sessions.runner import Progress, run_session
from sessions.scheduling import decide
from tests.simhelpers import enrol_home, protocol_yaml, write_signed
from tests.test_scheduling import Plan, done, local

DEVICE_ID = "SIM-RS"


def protocol_text() -> str:
    return protocol_yaml(patient_id="P-0456")


@pytest.fixture
def home(tmp_path: Path) -> LivHome:
    """A demo home (a file DEMO): sessions on the simulator count there, so resumption and the
    gap are exercised end to end on it (outside a demo they never count: tests/test_modes.py)."""
    h = LivHome(tmp_path / "home")
    h.ensure()
    (h.root / "DEMO").write_text("demo\n")
    write_signed(tmp_path / "p.yaml", protocol_text())
    enrol_home(h).install_protocol(tmp_path / "p.yaml")
    with DeviceClient.open(f"sim://?mass=0&seed=1&device_id={DEVICE_ID}") as dev:
        h.calibrations().save(identify(dev))
    return h


def sim(params: str = "") -> str:
    return f"sim://?mass=70&seed=4&speed=max&device_id={DEVICE_ID}{params}"


def liv_start(home: LivHome, device: str) -> int:
    return main(["start", "--device", device, "--home", str(home.root)])


def records(home: LivHome) -> list[SessionRecord]:
    with SessionLog(home.db_path()) as log:
        return log.sessions()


def assert_resumed_without_gap(home: LivHome, first: SessionRecord) -> None:
    """The next start, at once, resumes the cut-short slot for the whole prescription."""
    assert liv_start(home, sim()) == 0
    cut, resumed = records(home)
    assert cut.session_id == first.session_id
    assert resumed.resumed_from == first.session_id
    assert resumed.slot == first.slot == 1
    assert resumed.minutes_prescribed == pytest.approx(1.0)
    assert resumed.status is SessionStatus.COMPLETED


def test_a_slot_cut_short_at_zero_minutes_is_resumed_without_the_gap() -> None:
    plan = Plan()
    tripped = done("a", local(2026, 5, 4, 8), 1, minutes=0.0, status="tripped")
    decision = decide(plan, [tripped], local(2026, 5, 4, 8, 5))
    assert decision.allowed, decision.message
    assert decision.slot == 1
    assert decision.minutes == 10.0
    assert decision.resumed_from == "a"
    assert decision.message.startswith("Resuming session 1 of today")


def test_a_resumed_zero_minute_slot_still_needs_the_gap_for_the_next_slot() -> None:
    plan = Plan()
    log = [
        done("a", local(2026, 5, 4, 8), 1, minutes=0.0, status="stopped_by_patient"),
        done("b", local(2026, 5, 4, 8, 5), 1),
    ]
    assert not decide(plan, log, local(2026, 5, 4, 9)).allowed
    assert decide(plan, log, local(2026, 5, 4, 11, 30)).slot == 2


def test_a_trip_in_the_ramp_is_resumed_without_a_new_gap(
    home: LivHome, capsys: pytest.CaptureFixture[str]
) -> None:
    # the plate's response jumps x4 a few blocks after the output starts: over-acceleration
    assert liv_start(home, sim("&gain_loss_at=0.5&gain_factor=4")) == 1
    (first,) = records(home)
    assert first.status is SessionStatus.TRIPPED
    assert first.minutes_at_dose == 0.0
    capsys.readouterr()
    assert_resumed_without_gap(home, first)
    assert "Resuming session 1 of today" in capsys.readouterr().out


def test_ctrl_c_in_the_first_seconds_is_resumed_without_a_new_gap(home: LivHome) -> None:
    def ctrl_c(progress: Progress) -> None:
        raise KeyboardInterrupt  # the patient presses Ctrl-C at the first update of the ramp

    with SessionLog(home.db_path()) as log:
        outcome = run_session(
            protocol=home.protocol(), log=log, device_url=sim(),
            calibrations=home.calibrations(), on_progress=ctrl_c,
        )  # fmt: skip
    assert outcome.record.status is SessionStatus.STOPPED_BY_PATIENT
    assert outcome.record.minutes_at_dose == 0.0
    assert_resumed_without_gap(home, outcome.record)


def test_a_crash_before_the_first_checkpoint_is_resumed_without_a_new_gap(
    home: LivHome,
) -> None:
    protocol = home.protocol()
    with SessionLog(home.db_path()) as log:  # the row is written, then the process dies
        session_id = log.start_session(
            patient_id=protocol.patient_id, device_id=DEVICE_ID, firmware_version="1.0.0",
            protocol_sha256=protocol.sha256, protocol_json=protocol.canonical_json(),
            started_utc=datetime.now(UTC) - timedelta(seconds=3), timezone="UTC",
            local_date=datetime.now(UTC).date(), slot=1, minutes_prescribed=1.0, target_g=0.3,
        )  # fmt: skip
    assert liv_start(home, sim()) == 0
    first, second = records(home)
    assert first.session_id == session_id
    assert first.status is SessionStatus.INTERRUPTED
    assert first.minutes_at_dose == 0.0
    assert second.resumed_from == session_id
    assert second.minutes_prescribed == pytest.approx(1.0)
