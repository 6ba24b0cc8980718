"""Where the clinic keeps its state: its key pair and its database.

The clinic's data directory is, first match wins:

1. ``--clinic-dir DIR`` on the command line (passed here as ``explicit``);
2. ``$LIV_CLINIC_HOME``;
3. ``$XDG_DATA_HOME/liv-clinic`` (when ``XDG_DATA_HOME`` is an absolute path);
4. ``~/.local/share/liv-clinic``.

It is never a patient's home (``sessions.home``): a patient's computer holds no clinic secret.
"""

from __future__ import annotations

import os
from pathlib import Path

from firmware_bridge.userdirs import user_data_dir

ENV_CLINIC_HOME = "LIV_CLINIC_HOME"
PRIVATE_KEY_NAME = "clinic-private.pem"  # the clinic's signing key in its directory


def clinic_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The clinic's data directory (not created here)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(ENV_CLINIC_HOME, "")
    if env:
        return Path(env).expanduser()
    return user_data_dir("liv-clinic")
