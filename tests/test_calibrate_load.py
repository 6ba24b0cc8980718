"""``liv calibrate`` warns when something is on the plate it calibrates as empty.

One calibration alone cannot tell (plates differ): the first says so; later ones are judged
against the same plate's earlier calibration, where a load lowers the low end of the band most.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.calibration import check_for_load, identify
from firmware_bridge.client import DeviceClient
from sessions.cli import main

PLATE = "sim://?seed={seed}&device_id=SIM-LOAD&mass={mass}"


def calibrate(home: Path, mass: float, seed: int, capsys: pytest.CaptureFixture[str]) -> str:
    url = PLATE.format(seed=seed, mass=mass)
    assert main(["calibrate", "--engineer", "--device", url, "--home", str(home), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["load_check"]["verdict"] in ("load", "empty", "cannot_tell")
    return err


def test_a_load_during_calibration_is_warned_about(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    first = calibrate(home, 0, 1, capsys)
    assert "no earlier calibration to compare with" in first  # cannot tell: says so
    assert "warning" not in calibrate(home, 0, 2, capsys)  # empty again: quiet
    loaded = calibrate(home, 12, 3, capsys)  # a 12 kg box left on the plate
    # the warning is a line of its own after the sweep's progress lines
    assert loaded.splitlines()[-1].startswith("liv: warning: something seems to be on the plate")
    assert "run 'liv calibrate' again" in loaded


@pytest.mark.parametrize(("mass", "loaded"), [(0.0, False), (10.0, True), (70.0, True)])
def test_the_load_check_tells_a_load_from_an_empty_plate(mass: float, loaded: bool) -> None:
    with DeviceClient.open(PLATE.format(seed=1, mass=0)) as device:
        empty = identify(device)
    with DeviceClient.open(PLATE.format(seed=7, mass=mass)) as device:
        new = identify(device)
    check = check_for_load(new, empty)
    assert check.loaded is loaded, check
    assert check_for_load(new, None).verdict == "cannot_tell"


def test_a_plate_weaker_everywhere_is_not_taken_for_a_load() -> None:
    """An actuator or sensor that lost 20% lowers the response evenly, not like a mass."""
    with DeviceClient.open(PLATE.format(seed=1, mass=0)) as device:
        empty = identify(device)
    weak_plate = PLATE.format(seed=2, mass=0) + "&sensor_gain_error=-0.2&rest_check=0"
    with DeviceClient.open(weak_plate) as device:
        weaker = identify(device)
    check = check_for_load(weaker, empty)
    assert check.low_ratio is not None
    assert check.low_ratio < 0.85  # much lower than before ...
    assert not check.loaded  # ... but evenly: not a load
