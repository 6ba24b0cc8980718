"""The clinic's data directory: explicit, then $LIV_CLINIC_HOME, then XDG, then ~/.local/share."""

from __future__ import annotations

from pathlib import Path

import pytest

from sessions.clinic.paths import clinic_root


def test_explicit_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LIV_CLINIC_HOME", str(tmp_path / "env"))
    assert clinic_root(tmp_path / "cli") == tmp_path / "cli"


def test_environment_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIV_CLINIC_HOME", str(tmp_path / "env"))
    assert clinic_root() == tmp_path / "env"
    monkeypatch.delenv("LIV_CLINIC_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert clinic_root() == tmp_path / "xdg" / "liv-clinic"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert clinic_root() == tmp_path / "home" / ".local" / "share" / "liv-clinic"


def test_never_a_patients_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LIV_CLINIC_HOME", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("LIV_HOME", str(tmp_path / "liv"))
    assert clinic_root() != tmp_path / "liv"
