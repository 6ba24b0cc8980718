"""The session layer's fast paths give what the general ones give (issue 11), and an engineer's
open-loop drive loads only what it uses."""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from controller.loop import ControlUpdate, Phase
from controller.presence import LoadState
from sessions.log import LogError, SessionLog, canonical_json, number_text
from sessions.log.fields import _envelope_points, _quantize, _record_from_raw
from sessions.log.records import ENVELOPE_G_DECIMALS, ENVELOPE_T_DECIMALS
from sessions.protocol import PatientProtocol
from sessions.runner import StopRequest, _DoseClock, _Stops
from tests.test_adherence import make_protocol
from tests.test_log import export_text, fill

ROOT = Path(__file__).resolve().parents[1]


def _number(rng: random.Random) -> float:
    """Floats a log meets and some it must refuse: edges, random bit patterns, any scale."""
    pick = rng.random()
    if pick < 0.15:
        edges = [0.0, -0.0, 1.0, -1.0, 10.0, 100.0, 5e-7, -5e-7, -4.9e-7, 1e-6, 999999999.5]
        return rng.choice(edges)
    if pick < 0.25:  # nan, inf and huge values among them
        return float(struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0])
    return rng.uniform(-1.0, 1.0) * 10.0 ** rng.randint(-9, 9)


def _whole(rng: random.Random) -> int:
    """Whole numbers as JSON gives them back (ints), some beyond 2**53 (refused)."""
    return rng.choice([0, 1, -1, 7, 600, 2**53, -(2**53), 2**53 + 1, -(2**53) - 1, 10**20])


def _per_number(envelope: list[Any]) -> str:
    """The envelope's canonical JSON written number by number (docs/log-format.md)."""
    return "[" + ",".join(f"[{number_text(a)},{number_text(b)}]" for a, b in envelope) + "]"


def _outcome(call: Any) -> Any:
    try:
        return call()
    except (ValueError, LogError) as exc:
        return (type(exc).__name__, str(exc))


def test_an_envelope_is_written_as_each_of_its_numbers_is() -> None:
    rng = random.Random(11)

    def number() -> float:
        return _whole(rng) if rng.random() < 0.1 else _number(rng)

    for _ in range(2000):
        envelope: list[Any] = [
            [number(), number()] if rng.random() < 0.8 else (number(), number())
            for _ in range(rng.randint(2, 12))
        ]
        assert _outcome(lambda e=envelope: canonical_json(e)) == _outcome(
            lambda e=envelope: _per_number(e)
        ), envelope
    assert canonical_json([[0.0, -0.0], [-0.0000004, -1e-9]]) == "[[0,0],[0,0]]"
    assert canonical_json([[-10.0, 100.5], [1.25, -0.001]]) == "[[-10,100.5],[1.25,-0.001]]"
    # not pairs of floats: the general path, which writes an integer as an integer
    assert canonical_json([[1, 2.5], [3.0, 4.0]]) == "[[1,2.5],[3,4]]"
    assert canonical_json([[1.0, 2.0, 3.0], [4.0]]) == "[[1,2,3],[4]]"
    assert canonical_json([[True, 1.0], [0.5, None]]) == "[[true,1],[0.5,null]]"
    assert canonical_json({"envelope": [[0, 0.25], [1, 0.3]]}) == '{"envelope":[[0,0.25],[1,0.3]]}'
    with pytest.raises(ValueError, match="too large to be logged"):
        canonical_json([[0.0, 0.1], [2**53 + 1, 0.2]])
    for bad in ([[1.0, math.nan], [1.0, 1.0]], [[1.0, 1.0], [-math.inf, 1.0]]):
        with pytest.raises(ValueError, match="is not a finite number"):
            canonical_json(bad)


def test_envelope_points_quantize_as_every_number_is() -> None:
    """The runner's points (float pairs) take a fast path; it must be _quantize's, refusals
    included (a value out of range or not finite names its point)."""
    rng = random.Random(5)

    def by_quantize(envelope: list[Any], first: int) -> list[list[float]]:
        return [
            [
                _quantize(t, f"envelope[{i}] t_s", ENVELOPE_T_DECIMALS),
                _quantize(g, f"envelope[{i}] amplitude_g", ENVELOPE_G_DECIMALS),
            ]
            for i, (t, g) in enumerate(envelope[first:], start=first)
        ]

    for _ in range(2000):
        envelope = [(_number(rng), _number(rng)) for _ in range(rng.randint(0, 8))]
        first = rng.randint(0, len(envelope))
        ours = _outcome(lambda e=envelope, f=first: _envelope_points(e, f))
        theirs = _outcome(lambda e=envelope, f=first: by_quantize(e, f))
        assert repr(ours) == repr(theirs), envelope  # repr tells -0.0 from 0.0
    with pytest.raises(LogError, match=r"envelope\[1\] must be a \(t_s, amplitude_g\) pair"):
        _envelope_points([(0.0, 0.1), (0.1, 0.2, 0.3)])
    with pytest.raises(LogError, match=r"envelope\[0\] amplitude_g must be a number"):
        _envelope_points([(0.0, True)])


def test_a_stored_envelope_is_read_as_the_general_check_reads_it(tmp_path: Path) -> None:
    """_record_from_raw reads the pairs JSON gives (ints and floats) by a fast path; anything
    else is judged by the general check, as before."""
    rng = random.Random(9)
    with SessionLog(tmp_path / "home" / "liv.db") as log:
        fill(log)
        good = json.loads(export_text(log).splitlines()[0])

    def general(envelope: list[Any]) -> Any:
        points = []
        for point in envelope:
            if not (
                isinstance(point, list)
                and len(point) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in point)
            ):
                return ("ValueError", "field envelope must be a list of [t_s, amplitude_g] pairs")
            points.append((float(point[0]), float(point[1])))
        return tuple(points)

    choices: list[Any] = [0, 3, 0.25, -1.5, True, None, "0.3", [0.1], 10**400]
    for _ in range(1000):
        envelope = [
            [rng.choice(choices), rng.choice(choices)]
            if rng.random() < 0.9
            else rng.choice([(0.1, 0.2), [0.1], [0.1, 0.2, 0.3], "x", 5])
            for _ in range(rng.randint(0, 6))
        ]
        raw = {**good, "envelope": envelope}

        def ours(r: dict[str, Any] = raw) -> Any:
            try:
                return _record_from_raw(r).envelope
            except (ValueError, OverflowError) as exc:
                return (type(exc).__name__, str(exc))

        def theirs(e: list[Any] = envelope) -> Any:
            try:
                return general(e)
            except OverflowError as exc:
                return (type(exc).__name__, str(exc))

        assert repr(ours()) == repr(theirs()), envelope


def _update(
    t_s: float, measured: float | None, load: LoadState = LoadState.LOADED
) -> ControlUpdate:
    return ControlUpdate(t_s, Phase.HOLD, 45.0, 0.3, measured, 0.1, 1.0, load, 0.0)


def test_the_dose_clock_counts_as_documented_at_its_edges() -> None:
    """Time going back counts nothing, the dose stops at the goal, the goal ends the session."""
    protocol: PatientProtocol = make_protocol(minutes_per_session=1.0)
    shown: list[Any] = []
    clock = _DoseClock(protocol, 1.0, lambda c: None, shown.append, lambda: 0.0)
    target = protocol.target_g
    assert not clock.update(_update(10.0, target))  # the first 10 s at dose
    assert clock.at_dose_s == 10.0
    assert not clock.update(_update(9.0, target))  # a clock going back: no time at all
    assert clock.at_dose_s == 10.0
    assert not clock.update(_update(12.0, target * (1 + 2 * protocol.dose_tolerance)))
    assert clock.at_dose_s == 10.0  # out of the band: not at dose
    assert shown[-1].state == "below dose"
    assert not clock.update(_update(14.0, None, LoadState.CANNOT_TELL))  # nothing measured
    assert not clock.update(_update(20.0, target, LoadState.CANNOT_TELL))  # counted
    assert clock.at_dose_s == 16.0
    assert shown[-1].state == "at dose (presence not verified)"
    assert not clock.update(_update(30.0, target, LoadState.UNLOADED))
    assert clock.unloaded_run_s == 10.0
    assert clock.at_dose_s == 16.0
    assert clock.update(_update(200.0, target))  # far past the goal: capped, and done
    assert clock.at_dose_s == 60.0
    assert clock.done
    assert shown[-1].remaining_s == 0.0
    assert shown[-1].state == "at dose"
    high = round(target * (1 + 2 * protocol.dose_tolerance), 5)
    points = [(10.0, target), (12.0, high), (20.0, target), (30.0, target), (200.0, target)]
    assert clock.envelope == points  # every 0.1 s of plate time at most, when measured
    assert clock.freqs == {45.0}


def test_a_stop_noted_meanwhile_ends_the_loop_at_the_next_update_before_it_counts() -> None:
    """The loop calls the dose clock directly: a signal noted during the loop (a deferred
    stop) is raised by the next update, before that update counts anything."""
    protocol = make_protocol(minutes_per_session=1.0)
    stops = _Stops()
    stops.deferred = True
    clock = _DoseClock(protocol, 1.0, lambda c: None, None, lambda: 0.0, stops)
    clock.update(_update(10.0, protocol.target_g))
    stops.stop("terminated (SIGTERM)")  # what the signal handler does while the loop runs
    with pytest.raises(StopRequest) as stopped:
        clock.update(_update(20.0, protocol.target_g))
    assert stopped.value.reason == "terminated (SIGTERM)"
    assert clock.at_dose_s == 10.0
    assert clock.last_t_s == 10.0


_DRIVE_MODULES = textwrap.dedent(
    """
    import json, sys
    from sessions.cli import main
    code = main(sys.argv[1:])
    print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
    """
)


def test_an_open_loop_drive_loads_no_prescription_protocol_or_control_loop(
    tmp_path: Path,
) -> None:
    """`liv device drive` records its run in the log, and reads nothing of a prescription: the
    signing checks, the protocol and its YAML checks and the closed loop stay unloaded."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    done = subprocess.run(
        [sys.executable, "-c", _DRIVE_MODULES, "device", "drive", "--engineer", "--device",
         "sim://?speed=max&mass=70&seed=2", "--freq", "45", "--drive", "0.1", "--seconds",
         "0.2", "--home", str(home)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["code"] == 0
    loaded = set(report["modules"])
    assert "sessions.log" in loaded  # the run is recorded
    unwanted = {"sessions.protocol", "sessions.prescription", "sessions.runner", "controller.loop"}
    assert loaded & unwanted == set()


_START_MODULES = textwrap.dedent(
    """
    import json, sys
    from sessions.cli import main
    code = main(sys.argv[1:])
    print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
    """
)


def test_a_session_loads_no_adherence_reports_before_or_after_the_plate_moves(
    tmp_path: Path,
) -> None:
    """`liv start` decides what is due with the counted kinds alone (sessions.kinds): the
    adherence reports are not loaded (start until the plate moves, issue 11)."""
    from benchmarks.bench_speed import Homes
    from benchmarks.make_log import DEVICE_ID

    home = Homes(tmp_path / "homes").fresh(1.0)
    done = subprocess.run(
        [sys.executable, "-c", _START_MODULES, "start", "--home", str(home.root), "--device",
         f"sim://?speed=max&mass=70&seed=2&device_id={DEVICE_ID}"],
        capture_output=True, text=True, cwd=ROOT, timeout=100, check=True,
    )  # fmt: skip
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["code"] == 0
    loaded = set(report["modules"])
    assert "sessions.runner" in loaded
    assert "sessions.kinds" in loaded
    assert "sessions.adherence" not in loaded
