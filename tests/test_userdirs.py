"""The XDG rule is written once (firmware_bridge.userdirs) and every per-user directory uses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_bridge.sim.nvstore import ENV_STATE_DIR, state_root
from firmware_bridge.userdirs import user_data_dir, user_state_dir
from sessions.clinic.paths import ENV_CLINIC_HOME, clinic_root
from sessions.home import ENV_HOME, default_root


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("XDG_DATA_HOME", "XDG_STATE_HOME", ENV_STATE_DIR, ENV_CLINIC_HOME, ENV_HOME):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    return tmp_path / "user"


def test_absolute_xdg_directories_are_used(
    bare: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert user_data_dir("liv") == tmp_path / "data" / "liv"
    assert user_state_dir("liv", "sim") == tmp_path / "state" / "liv" / "sim"
    assert default_root() == tmp_path / "data" / "liv"
    assert clinic_root() == tmp_path / "data" / "liv-clinic"
    assert state_root() == tmp_path / "state" / "liv" / "sim"


@pytest.mark.parametrize("value", ["", "relative/ignored"])
def test_unset_or_relative_xdg_falls_back_to_the_home_directory(
    bare: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", value)
    monkeypatch.setenv("XDG_STATE_HOME", value)
    assert user_data_dir("liv") == bare / ".local" / "share" / "liv"
    assert user_state_dir("liv", "sim") == bare / ".local" / "state" / "liv" / "sim"
    assert default_root() == bare / ".local" / "share" / "liv"
    assert clinic_root() == bare / ".local" / "share" / "liv-clinic"
    assert state_root() == bare / ".local" / "state" / "liv" / "sim"
