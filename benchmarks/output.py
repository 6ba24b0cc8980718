"""What every benchmark writes beside its printed table: the machine's facts and a JSON file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def machine_facts() -> dict[str, Any]:
    """Python, machine, CPUs, load and date: what a figure was measured on."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_json(target: str | None, data: dict[str, Any]) -> None:
    """``data`` as indented JSON to ``target`` ('-': standard output; None or '': nowhere)."""
    if not target:
        return
    text = json.dumps(data, indent=2, default=str)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n", encoding="utf-8")
