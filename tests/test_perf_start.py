"""A session starts without scipy (issue 11): numpy stand-ins, checked against scipy itself."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.linalg
import scipy.signal

from controller.exposure import ExposureMeter, sos_block_form, sos_steady_state, wk_analog, wk_sos
from firmware_bridge.sim.physics import expm
from firmware_bridge.sim.sensor import block_form, butter2_lowpass, steady_state
from sessions.cli import build_parser, subcommands
from sessions.cli.parser import Handler

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("scale", [1e-3, 0.5, 4.0, 60.0])
def test_expm_matches_scipy(scale: float) -> None:
    a = np.random.default_rng(3).standard_normal((11, 11)) * scale
    expected = scipy.linalg.expm(a)
    np.testing.assert_allclose(expm(a), expected, rtol=0, atol=1e-13 * np.abs(expected).max())


@pytest.mark.parametrize(("cutoff", "fs"), [(400.0, 1600.0), (1000.0, 3200.0), (90.0, 1000.0)])
def test_anti_alias_design_and_block_form_match_scipy(cutoff: float, fs: float) -> None:
    b, a = butter2_lowpass(cutoff, fs)
    b_ref, a_ref = scipy.signal.butter(2, cutoff, fs=fs)
    np.testing.assert_allclose(b, b_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(a, a_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(steady_state(b, a), scipy.signal.lfilter_zi(b, a), rtol=1e-12)
    x = np.random.default_rng(1).standard_normal(32)
    zi = np.array([0.4, -0.2])
    y, zf = scipy.signal.lfilter(b, a, x, zi=zi)
    out = block_form(b, a, 32) @ np.concatenate((x, zi))
    np.testing.assert_allclose(out[:32], y, rtol=0, atol=1e-14)
    np.testing.assert_allclose(out[32:], zf, rtol=0, atol=1e-14)


def test_wk_sections_are_the_bilinear_transform_of_the_whole_weighting() -> None:
    fs = 1600.0
    num, den = wk_analog()
    warped_fs = np.pi * 50.0 / np.tan(np.pi * 50.0 / fs)
    z, p, k = scipy.signal.tf2zpk(num, den)
    reference = scipy.signal.zpk2sos(*scipy.signal.bilinear_zpk(z, p, k, fs=warped_fs))
    freqs = [0.5, 5.0, 30.0, 45.0, 60.0, 90.0, 300.0]
    _, ours = scipy.signal.sosfreqz(wk_sos(fs), worN=freqs, fs=fs)
    _, theirs = scipy.signal.sosfreqz(reference, worN=freqs, fs=fs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    sos = wk_sos(fs)
    np.testing.assert_allclose(sos_steady_state(sos), scipy.signal.sosfilt_zi(sos), atol=1e-9)


def test_exposure_meter_block_product_equals_sosfilt() -> None:
    fs = 1600.0
    t = np.arange(32 * 500) / fs
    accel = 1.0 + 0.3 * np.sin(2 * np.pi * 45.0 * t)
    meter = ExposureMeter(fs)
    for start in range(0, t.size, 32):
        meter.push(accel[start : start + 32])
    sos = wk_sos(fs)
    weighted, _ = scipy.signal.sosfilt(sos, accel, zi=scipy.signal.sosfilt_zi(sos) * accel[0])
    a_w = float(np.sqrt(np.mean((weighted * 9.80665) ** 2)))
    assert meter.figures().a_w_m_s2 == pytest.approx(a_w, rel=1e-12)
    state = sos_block_form(sos, 7) @ np.concatenate((accel[:7], np.zeros(8)))
    np.testing.assert_allclose(state[:7], scipy.signal.sosfilt(sos, accel[:7]), atol=1e-14)


_NO_SCIPY = textwrap.dedent(
    """
    import json, sys
    import sessions.cli, sessions.runner
    from controller.loop import ExposureSettings, run_exposure
    from controller.calibration import identify
    from firmware_bridge.client import DeviceClient
    with DeviceClient.open("sim://?speed=max&mass=0&seed=1") as device:
        calibration = identify(device)
    with DeviceClient.open("sim://?speed=max&mass=70&seed=2") as device:
        result = run_exposure(device, calibration, ExposureSettings(
            target_g=0.2, hold_s=1.0, ramp_up_s=0.5, ramp_down_s=0.2, measure_exposure=True))
    print(json.dumps({"status": result.status.value,
                      "a_w": result.exposure.a_w_m_s2 if result.exposure else None,
                      "scipy": sorted(m for m in sys.modules if m.split(".")[0] == "scipy")}))
    """
)


def test_a_session_runs_without_importing_scipy() -> None:
    """Opening the simulated plate, calibrating and a closed-loop exposure with the ISO meter."""
    done = subprocess.run(
        [sys.executable, "-c", _NO_SCIPY],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["status"] == "completed"
    assert report["a_w"] > 0.1
    assert report["scipy"] == []


# What `liv --help` may load: the parser and its help, nothing a command needs to run
# (issue 11: start-up <= 0.3 s). The signing library, the numerics, the YAML reader, the log
# and the command modules are imported by the commands that use them.
_HELP_MODULES = textwrap.dedent(
    """
    import json, sys
    from sessions.cli import main
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
    loaded = sorted(
        m for m in sys.modules
        if m.split(".")[0] in ("cryptography", "numpy", "scipy", "yaml", "serial")
        or m.startswith(("sessions.commands.", "sessions.log", "sessions.prescription",
                         "sessions.adherence", "sessions.protocol", "sessions.clinic.keys"))
    )
    print(json.dumps(loaded))
    """
)


@pytest.mark.parametrize(
    "argv", [["--help"], ["clinic", "--help"], ["protocol", "sign", "--help"], ["--version"]]
)
def test_help_loads_no_command_code_signing_or_numerics(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HELP_MODULES, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []


_BLAS_THREADS = textwrap.dedent(
    """
    import json
    import sessions.cli  # as the liv script does: before anything imports numpy
    import numpy
    from threadpoolctl import threadpool_info
    print(json.dumps([pool["num_threads"] for pool in threadpool_info()]))
    """
)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts one thread per core")
def test_the_entry_point_keeps_openblas_to_one_thread() -> None:
    """OpenBLAS would start a thread per core when numpy is imported (CPU before the plate
    moves); the entry point asks for one unless the user chose otherwise."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", _BLAS_THREADS],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=True,
    )  # fmt: skip
    assert set(json.loads(done.stdout.splitlines()[-1])) == {1}
    chosen = subprocess.run(
        [sys.executable, "-c", _BLAS_THREADS],
        capture_output=True, text=True, cwd=ROOT, env={**env, "OPENBLAS_NUM_THREADS": "2"},
        timeout=60, check=True,
    )  # fmt: skip
    assert set(json.loads(chosen.stdout.splitlines()[-1])) == {2}


def _leaf_parsers(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, Any]]:
    found = subcommands(parser)
    if not found:
        yield path, parser
    for name, sub in found.items():
        yield from _leaf_parsers(sub, f"{path} {name}".strip())


def test_every_command_names_a_handler_that_imports() -> None:
    """The parser names most handlers without importing them: each name must resolve (the
    clinic key commands register their own, light, functions)."""
    leaves = list(_leaf_parsers(build_parser()))
    assert len(leaves) > 25
    for path, parser in leaves:
        handler = parser.get_default("handler")
        if isinstance(handler, Handler):
            handler = getattr(importlib.import_module(handler.module), handler.name)
        assert callable(handler), path
