"""A reader that leaves early (`liv status | head -1`) is not an error of liv's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import os, sys
read_end, write_end = os.pipe()
os.close(read_end)  # the reader has gone: the first flush fails with EPIPE
sys.stdout = os.fdopen(write_end, "w")
from sessions.cli import main
sys.exit(main(["help"]))
"""


def test_a_reader_that_left_gets_no_broken_pipe_message_and_no_failure() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert "Broken pipe" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
