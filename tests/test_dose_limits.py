"""One table of dose limits: what a protocol may hold, the controller runs, the CLI accepts.

The reported failure: a protocol with target 0.5-0.6 g installed, then ``liv start`` failed with
a traceback after writing the session row. Here every layer is checked against
``firmware_bridge.dose_limits.DOSE_LIMITS``, and everything the protocol parser accepts is
shown to pass the controller's validation.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import calibration as calibration_mod
from controller.calibration import DEFAULT_FREQS_HZ, Calibration, identify
from controller.loop import ExposureSettings, ExposureStatus, run_exposure
from controller.safety import HARD_CEILING_G, SafetyLimits
from controller.schedule import FrequencySchedule
from firmware_bridge.client import DeviceClient
from firmware_bridge.dose_limits import DOSE_LIMITS, DoseLimitError, DoseRange
from firmware_bridge.sim import device as firmware
from sessions import runner
from sessions.cli import build_parser, main
from sessions.home import LivHome
from sessions.log import SessionLog
from sessions.protocol import (
    HARD_LIMITS,
    PatientProtocol,
    ProtocolFileError,
    parse_protocol,
    protocol_from_dict,
)
from sessions.wording import say
from tests.simhelpers import (
    enrol_home,
    exposure_time,
    load_truth,
    protocol_yaml,
    sign_text,
    truth_envelope,
    write_signed,
)

LIMITS = DOSE_LIMITS
DEVICE_ID = "SIM-DOSE"


def protocol_text(
    target_g: str = "0.3",
    frequency: str = "frequency_hz: 45",
    minutes: str = "1",
    tolerance: str = "0.1",
) -> str:
    key, value = frequency.split(": ", 1)  # frequency_hz or frequency_schedule, a whole line
    fields: dict[str, object] = {"frequency_hz": None, key: value}
    return protocol_yaml(
        patient_id="P-0500",
        target_g=target_g,
        **fields,
        minutes_per_session=minutes,
        dose_tolerance=tolerance,
    )


def settings_for(protocol: PatientProtocol) -> ExposureSettings:
    """The controller's settings for a protocol, built exactly as the session runner builds them."""
    return ExposureSettings(
        target_g=protocol.target_g,
        hold_s=protocol.minutes_per_session * 60.0 * runner.HOLD_CAP_FACTOR,
        schedule=protocol.schedule,
        measure_exposure=True,
    )


def assert_runnable(protocol: PatientProtocol) -> None:
    """What the controller and the session runner will check, checked for one protocol."""
    settings = settings_for(protocol)  # raises if the controller refuses it
    limits = settings.limits
    top_of_band_g = protocol.target_g * (1.0 + protocol.dose_tolerance)
    assert top_of_band_g * (1.0 + LIMITS.control_overshoot_fraction) <= limits.ceiling_g * (
        1.0 - LIMITS.trip_margin_fraction
    )
    low_hz, high_hz = protocol.schedule.span_hz
    assert DEFAULT_FREQS_HZ[0] <= low_hz <= high_hz <= DEFAULT_FREQS_HZ[-1]


# --------------------------------------------------------------------------------------------
# The table


def test_the_worst_case_dose_stays_below_the_ceiling_with_margin() -> None:
    # target_g.high x (1 + dose_tolerance.high) x (1 + overshoot) <= ceiling x (1 - margin)
    worst_g = (
        LIMITS.target_g.high
        * (1.0 + LIMITS.dose_tolerance.high)
        * (1.0 + LIMITS.control_overshoot_fraction)
    )
    room_g = LIMITS.over_acceleration_ceiling_g * (1.0 - LIMITS.trip_margin_fraction)
    assert worst_g == pytest.approx(LIMITS.worst_case_peak_g)
    assert worst_g <= room_g
    assert LIMITS.trip_margin_fraction > 0.0
    assert LIMITS.over_acceleration_ceiling_g <= LIMITS.hard_ceiling_g
    assert LIMITS.inconsistencies() == []


def test_the_table_holds_the_published_doses() -> None:
    """shared/DOMAIN.md: 0.2-0.4 g at 30-90 Hz, 10 minutes, twice a day."""
    for target_g in (0.2, 0.3, 0.4):
        assert LIMITS.target_g.holds(target_g)
    for freq_hz in (30.0, 32.0, 37.0, 45.0, 90.0):
        assert LIMITS.frequency_hz.holds(freq_hz)
    assert LIMITS.minutes_per_session.holds(10.0)
    assert LIMITS.sessions_per_day.holds(2)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"target_g": DoseRange(0.1, 0.6)}, "above 0.490 g"),
        ({"dose_tolerance": DoseRange(0.01, 0.5)}, "above 0.490 g"),
        ({"over_acceleration_ceiling_g": 1.2}, "at most the hard ceiling 1 g"),
        ({"calibration_hz": DoseRange(35.0, 100.0)}, "must cover the therapy band"),
        ({"target_g": DoseRange(0.0, 0.4)}, "above 0 g"),
        ({"frequency_hz": DoseRange(90.0, 30.0)}, "is not a range"),
    ],
)
def test_a_table_that_contradicts_itself_cannot_be_built(
    change: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        dataclasses.replace(LIMITS, **change)


def test_the_device_accepts_every_frequency_the_product_uses() -> None:
    """The simulated firmware's range covers the calibration band, which covers the therapy."""
    assert LIMITS.calibration_hz.low >= firmware.MIN_FREQ_HZ
    assert LIMITS.calibration_hz.high <= firmware.MAX_FREQ_HZ
    with DeviceClient.open("sim://?mass=0") as device:
        assert device.info.min_freq_hz <= LIMITS.frequency_hz.low
        assert LIMITS.frequency_hz.high <= device.info.max_freq_hz


# --------------------------------------------------------------------------------------------
# Every layer reads it


def test_protocol_hard_limits_are_the_table() -> None:
    assert dict(LIMITS.protocol_ranges()) == HARD_LIMITS
    assert HARD_LIMITS["target_g"] == (0.1, 0.4)
    assert HARD_LIMITS["frequency_hz"] == (30.0, 90.0)
    assert HARD_LIMITS["dose_tolerance"] == (0.01, 0.15)


def test_the_controller_defaults_are_the_table() -> None:
    assert SafetyLimits().ceiling_g == LIMITS.over_acceleration_ceiling_g
    assert LIMITS.hard_ceiling_g == HARD_CEILING_G
    # the total peak a healthy plate may show stays under the hard ceiling too
    assert SafetyLimits().ceiling_g * SafetyLimits().total_peak_factor <= HARD_CEILING_G


def test_calibration_covers_the_therapy_band() -> None:
    assert DEFAULT_FREQS_HZ[0] == LIMITS.calibration_hz.low
    assert DEFAULT_FREQS_HZ[-1] == LIMITS.calibration_hz.high
    assert DEFAULT_FREQS_HZ[0] <= LIMITS.frequency_hz.low
    assert LIMITS.frequency_hz.high <= DEFAULT_FREQS_HZ[-1]
    # both band edges are calibration points: the controller never interpolates past them
    assert LIMITS.frequency_hz.low in DEFAULT_FREQS_HZ
    assert LIMITS.frequency_hz.high in DEFAULT_FREQS_HZ
    assert calibration_mod.CALIBRATION_STEP_HZ > 0.0


@pytest.mark.parametrize("target_g", [0.47, 0.5, 0.6])
def test_the_controller_refuses_a_target_without_room_below_the_ceiling(target_g: float) -> None:
    """The highest target under the 0.5 g ceiling is 0.5 x 0.98 / 1.05 = 0.467 g."""
    with pytest.raises(DoseLimitError, match=r"safety ceiling 0\.5 g") as caught:
        ExposureSettings(target_g=target_g)
    assert "at most 0.467 g" in str(caught.value)  # the highest target, named
    assert ExposureSettings(target_g=LIMITS.highest_target_g(0.5)).target_g > 0.466


@pytest.mark.parametrize("freq_hz", [25.0, 95.0])
def test_the_controller_refuses_a_frequency_outside_the_therapy_band(freq_hz: float) -> None:
    schedule = FrequencySchedule.fixed(freq_hz, band=(20.0, 150.0))
    with pytest.raises(DoseLimitError, match=r"outside the therapy's 30-90 Hz"):
        ExposureSettings(schedule=schedule)


def test_a_ceiling_above_the_hard_ceiling_is_a_dose_limit_error() -> None:
    with pytest.raises(DoseLimitError, match=r"at most 1 g"):
        SafetyLimits(ceiling_g=1.01)


@pytest.mark.parametrize(
    ("argv", "accepted"),
    [
        (["--freq", "30", "--amplitude", "0.4"], True),
        (["--freq", "90", "--amplitude", "0.1"], True),
        (["--freq", "30", "--amplitude", "0.41"], False),
        (["--freq", "30", "--amplitude", "0.09"], False),
        (["--freq", "29.9"], False),
        (["--freq", "90.1"], False),
    ],
)
def test_liv_run_accepts_exactly_the_table(
    argv: list[str], accepted: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    full = ["run", "--engineer", "--device", "sim://", "--seconds", "5", *argv]
    if accepted:
        parser.parse_args(full)
        return
    with pytest.raises(SystemExit):
        parser.parse_args(full)
    err = capsys.readouterr().err
    assert "0.1 to 0.4 g" in err or "30 to 90 Hz" in err


def test_liv_run_schedules_use_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "run",
            "--engineer",
            "--device",
            "sim://",
            "--schedule",
            "sweep:30-95/60",
            "--seconds",
            "5",
        ]
    )
    assert code == 2
    assert "outside the allowed 30-90 Hz" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Nothing the parser accepts is refused later


def _corner_protocols() -> list[str]:
    texts = []
    for target, tolerance, minutes in itertools.product(
        LIMITS.target_g, LIMITS.dose_tolerance, LIMITS.minutes_per_session
    ):
        low, high = LIMITS.frequency_hz
        frequencies = [
            f"frequency_hz: {low:g}",
            f"frequency_hz: {high:g}",
            f"frequency_schedule: {{sweep: {{low_hz: {low:g}, high_hz: {high:g}, "
            "seconds_each_way: 10}}",
            f"frequency_schedule: {{steps: [{{at_s: 0, hz: {high:g}}}, "
            f"{{at_s: 30, hz: {low:g}}}]}}",
        ]
        for frequency in frequencies:
            texts.append(protocol_text(f"{target:g}", frequency, f"{minutes:g}", f"{tolerance:g}"))
    return texts


@pytest.mark.parametrize("text", _corner_protocols())
def test_every_corner_of_the_protocol_limits_runs(text: str) -> None:
    assert_runnable(parse_protocol(text))


def _decimal(low: float, high: float, places: int) -> st.SearchStrategy[float]:
    scale = 10**places
    return st.integers(round(low * scale), round(high * scale)).map(lambda n: n / scale)


@st.composite
def protocol_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Protocol records over (and just beyond) the allowed ranges."""
    low_hz, high_hz = LIMITS.frequency_hz
    freq = _decimal(low_hz - 5.0, high_hz + 5.0, 1)
    kind = draw(st.sampled_from(["fixed", "sweep", "steps"]))
    minutes = draw(_decimal(0.5, 31.0, 1))
    data: dict[str, Any] = {
        "patient_id": "P-0500",
        "target_g": draw(_decimal(0.05, 0.65, 3)),
        "minutes_per_session": minutes,
        "sessions_per_day": 1,
        "min_gap_hours": 0.0,
        "daily_windows": [],
        "study_start": "2026-01-01",
        "study_end": "2026-12-31",
        "timezone": "UTC",
        "dose_tolerance": draw(_decimal(0.0, 0.6, 3)),
    }
    if kind == "fixed":
        data["frequency_hz"] = draw(freq)
    elif kind == "sweep":
        low = draw(freq)
        high = draw(freq.filter(lambda f: f > low))
        seconds = draw(_decimal(5.0, 1900.0, 0))
        data["frequency_schedule"] = {
            "sweep": {"low_hz": low, "high_hz": high, "seconds_each_way": seconds}
        }
    else:
        hz = draw(st.lists(freq, min_size=1, max_size=4))
        steps = [{"at_s": 10.0 * k, "hz": f} for k, f in enumerate(hz)]
        data["frequency_schedule"] = {"steps": steps}
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(protocol_dicts())
def test_every_protocol_the_parser_accepts_passes_the_controller(data: dict[str, Any]) -> None:
    try:
        protocol = protocol_from_dict(data)
    except ProtocolFileError:
        return  # refused at the first layer: nothing later can refuse it
    assert_runnable(protocol)


# --------------------------------------------------------------------------------------------
# The reported failure: a 0.5-0.6 g protocol


@pytest.fixture
def home(tmp_path: Path) -> LivHome:
    """An installation with a 0.3 g protocol, a calibrated simulated plate and no log yet."""
    h = LivHome(tmp_path / "home")
    h.ensure()
    write_signed(tmp_path / "p.yaml", protocol_text())
    enrol_home(h).install_protocol(tmp_path / "p.yaml")
    with DeviceClient.open(f"sim://?mass=0&seed=1&speed=max&device_id={DEVICE_ID}") as dev:
        h.calibrations().save(identify(dev))
    return h


@pytest.mark.parametrize("target", ["0.5", "0.55", "0.6"])
@pytest.mark.parametrize("action", ["check", "install"])
def test_a_protocol_above_the_dose_limits_is_refused_at_check_and_install(
    home: LivHome, tmp_path: Path, target: str, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "high.yaml"
    write_signed(path, protocol_text(target_g=target))  # signed, so only the limits refuse it
    before = home.protocol_path.read_bytes()
    argv = ["protocol", action, str(path)]
    if action == "install":
        argv += ["--home", str(home.root)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"target_g = {target} is outside the allowed 0.1-0.4 g" in err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert home.protocol_path.read_bytes() == before  # the installed protocol is unchanged


def test_liv_start_validates_the_settings_before_the_session_row(
    home: LivHome,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A controller that refuses the protocol: one sentence, no row, and the plate never moves.

    A stricter controller (ceiling 0.3 g) stands in for any disagreement between the layers.
    """

    def strict(**kwargs: Any) -> ExposureSettings:
        limits = kwargs.pop("limits", SafetyLimits())
        return ExposureSettings(**kwargs, limits=dataclasses.replace(limits, ceiling_g=0.3))

    monkeypatch.setattr(runner, "ExposureSettings", strict)
    truth = tmp_path / "truth.npz"
    url = f"sim://?mass=70&seed=4&speed=max&device_id={DEVICE_ID}&truth={truth}"
    code = main(["start", "--device", url, "--home", str(home.root)])
    err = capsys.readouterr().err
    assert code == 1
    assert err == f"liv: {say('refused.prescription')}\n"  # the patient's one sentence
    assert main(["-v", "start", "--device", url, "--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert "safety ceiling 0.3 g" in err  # the engineer's detail, with -v
    assert "Traceback" not in err
    with SessionLog(home.db_path()) as log:
        assert log.sessions() == []  # nothing recorded as started
    assert not truth.exists() or not np.any(load_truth(truth)["drive"])


# --------------------------------------------------------------------------------------------
# The top of the table runs on the simulated plate (judged from truth)


@pytest.fixture(scope="module")
def empty_plate() -> Calibration:
    with DeviceClient.open("sim://?mass=0&seed=1&speed=max") as device:
        return identify(device)


@pytest.mark.parametrize(("mass_kg", "freq_hz"), [(150.0, 30.0), (0.0, 90.0)])
def test_the_highest_target_runs_and_stays_below_the_ceiling(
    empty_plate: Calibration, tmp_path: Path, mass_kg: float, freq_hz: float
) -> None:
    """0.4 g on the heaviest patient at 30 Hz (most drive) and on the empty plate at 90 Hz."""
    target_g = LIMITS.target_g.high
    truth_path = tmp_path / "truth.npz"
    settings = ExposureSettings(
        target_g=target_g, hold_s=3.0, schedule=FrequencySchedule.fixed(freq_hz), ramp_up_s=1.0
    )
    url = f"sim://?mass={mass_kg:g}&seed=2&speed=max&truth={truth_path}"
    with DeviceClient.open(url) as device:
        result = run_exposure(device, empty_plate, settings)
    assert result.status is ExposureStatus.COMPLETED, result.trip
    truth = load_truth(truth_path)
    t = exposure_time(truth, result.start_index)
    _, amps = truth_envelope(truth, t, 1.5, 4.0, 0.1)
    assert np.all(np.abs(amps / target_g - 1.0) <= 0.02), amps
    _, whole = truth_envelope(truth, t, 0.0, 5.0, 0.1)
    assert np.max(whole) <= target_g * (1.0 + LIMITS.control_overshoot_fraction)
    assert np.max(whole) < LIMITS.over_acceleration_ceiling_g


def test_a_protocol_installed_under_the_old_limits_is_refused_at_start(
    home: LivHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 0.55 g protocol copied in before this table existed: one sentence, no row, no motion."""
    # signed by the enrolled clinic, so only the limits can refuse it
    home.protocol_path.write_bytes(sign_text(protocol_text(target_g="0.55")))
    truth = tmp_path / "truth.npz"
    url = f"sim://?mass=70&seed=4&speed=max&device_id={DEVICE_ID}&truth={truth}"
    assert main(["start", "--device", url, "--home", str(home.root)]) == 1
    err = capsys.readouterr().err
    assert "line 2: target_g = 0.55 is outside the allowed 0.1-0.4 g" in err
    assert err.count("\n") == 1
    with SessionLog(home.db_path()) as log:
        assert log.sessions() == []
    assert not truth.exists()  # the plate was never opened


# --------------------------------------------------------------------------------------------
# The documents say what the table holds


def _documented(doc: str) -> dict[str, str]:
    text = (Path(__file__).parents[1] / "docs" / doc).read_text()
    return dict(re.findall(r"^\| `(\w+)` \| ([0-9.]+(?:-[0-9.]+)?) \|", text, re.MULTILINE))


def _as_written(value: object) -> str:
    if isinstance(value, DoseRange):
        return value.describe()
    assert isinstance(value, float)
    return f"{value:g}" if value != int(value) else f"{value:.1f}"


def test_the_documents_give_the_table_as_the_code_holds_it() -> None:
    in_safety = _documented("safety.md")
    for field in dataclasses.fields(LIMITS):
        if field.name in in_safety:
            assert in_safety[field.name] == _as_written(getattr(LIMITS, field.name)), field.name
    for name in ("target_g", "frequency_hz", "dose_tolerance", "control_overshoot_fraction",
                 "trip_margin_fraction", "over_acceleration_ceiling_g", "hard_ceiling_g",
                 "calibration_hz"):  # fmt: skip
        assert name in in_safety, name
    in_protocol_doc = _documented("protocol-file.md")
    for name, limits in HARD_LIMITS.items():
        assert in_protocol_doc[name] == DoseRange(*limits).describe(), name
