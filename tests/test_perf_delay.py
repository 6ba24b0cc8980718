"""The checkpoint writer thread must not hold up a control update for long (issue 11, item 4)."""

from __future__ import annotations

import sys
from typing import Any, cast

from sessions import runner


def test_the_gil_changes_hands_often_while_the_writer_thread_exists() -> None:
    before = sys.getswitchinterval()
    writer = runner._CheckpointWriter(cast(Any, object()), "session")
    try:
        assert sys.getswitchinterval() <= runner.WRITER_SWITCH_INTERVAL_S <= 0.001
    finally:
        writer.close()
    assert sys.getswitchinterval() == before
