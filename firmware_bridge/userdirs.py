"""Per-user directories by the XDG base-directory rule, written once for every layer.

``$XDG_DATA_HOME`` (a patient's home, the clinic's directory) and ``$XDG_STATE_HOME`` (a
simulated plate's memory) count only when they are absolute paths, as the XDG specification
asks; otherwise ``~/.local/share`` and ``~/.local/state``. It lives at the lowest layer so that
the simulated plate (firmware_bridge.sim.nvstore) and the sessions (sessions.home,
sessions.clinic.paths) share it without an import pointing up.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_XDG_DATA_HOME = "XDG_DATA_HOME"
ENV_XDG_STATE_HOME = "XDG_STATE_HOME"


def _base(variable: str, *fallback: str) -> Path:
    value = os.environ.get(variable, "")
    return Path(value) if os.path.isabs(value) else Path.home().joinpath(*fallback)


def user_data_dir(*names: str) -> Path:
    """``$XDG_DATA_HOME/<names>`` when that is an absolute path, else ``~/.local/share/...``."""
    return _base(ENV_XDG_DATA_HOME, ".local", "share").joinpath(*names)


def user_state_dir(*names: str) -> Path:
    """``$XDG_STATE_HOME/<names>`` when that is an absolute path, else ``~/.local/state/...``."""
    return _base(ENV_XDG_STATE_HOME, ".local", "state").joinpath(*names)
