"""Fixtures for every test: a test that leaks an open port, socket, file or thread fails."""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator

import pytest


def _open_fds() -> set[str]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            fds.add(f"{name}->{os.readlink(f'/proc/self/fd/{name}')}")
        except OSError:
            continue  # the fd listdir itself used, closed by now
    return fds


@pytest.fixture(scope="session", autouse=True)
def _frozen_start_heap() -> None:
    """What exists once the tests are collected (modules, the collected tests) lives for the
    whole run: it is moved out of the collector's sight once, so that the collection after
    every test (:func:`_no_leaks`) walks only what the tests made since (about 2 ms instead of
    about 30 ms a test). Objects the tests make are collected exactly as before."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _no_leaks(_frozen_start_heap: None) -> Iterator[None]:
    if not os.path.isdir("/proc/self/fd"):
        yield
        return
    fds_before = _open_fds()
    threads_before = set(threading.enumerate())
    yield
    gc.collect()
    leaked_fds = _open_fds() - fds_before
    leaked_threads = set(threading.enumerate()) - threads_before
    assert not leaked_fds, f"test left files open: {sorted(leaked_fds)}"
    assert not leaked_threads, f"test left threads running: {leaked_threads}"


@pytest.fixture(scope="session", autouse=True)
def _single_threaded_numerics() -> Iterator[None]:
    """Tests run numerics as the product does (see firmware_bridge.realtime)."""
    from firmware_bridge.realtime import single_threaded_numerics

    with single_threaded_numerics():
        yield


@pytest.fixture(autouse=True)
def _own_data_directory(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test's ``liv`` gets a data directory of its own unless it names one.

    Engineering commands (``liv run``, ``liv device drive``, ``liv calibrate``) record their
    runs in the log: without this a test that gives no ``--home`` would write into the
    machine's real data directory.
    """
    monkeypatch.setenv("LIV_HOME", str(tmp_path_factory.mktemp("liv-home")))


@pytest.fixture(autouse=True)
def _sim_state_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulated plates keep their key and counter in a fresh directory per test, never in the
    user's own state directory (firmware_bridge/sim/nvstore.py)."""
    monkeypatch.setenv("LIV_SIM_STATE_DIR", str(tmp_path_factory.mktemp("sim-nv")))
