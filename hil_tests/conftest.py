"""Options, markers, fixtures and the report of the qualification suite (docs/hil.md).

pytest hil_tests                                             # the simulated plate
pytest hil_tests --device-url /dev/liv-plate --allow-motion  # a real plate, nobody on it
pytest hil_tests --device-url rfc2217://bench-host:4000 --allow-motion --report=reports/

Markers (registered here, so ``--strict-markers`` knows them):

- ``moves_plate``: the test switches the output on and drives the plate. It runs on ``sim://``
  by default; on any other URL only with ``--allow-motion``; never with ``--no-motion``.
- ``needs_capability(NAME, ...)``: skipped unless the plate's HELLO announces every named
  capability bit (``firmware_bridge.protocol.Capability``).

Contradictory or unusable options stop the run with ``pytest.UsageError`` before any port is
opened: ``--allow-motion`` with ``--no-motion``, ``--report`` naming a directory that does not
exist (or a file), an unknown URL scheme, a ``sim://`` URL the simulator cannot parse, or a run
without pytest-timeout (per-test timeouts are part of the suite's safety).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.calibration import Calibration, identify
from firmware_bridge.client import DeviceClient, DeviceInfo
from firmware_bridge.errors import CommandRefusedError, UnknownUrlError
from firmware_bridge.protocol import Capability, DeviceState, NakReason
from firmware_bridge.sim.config import parse_sim_url
from firmware_bridge.sim.nvstore import ENV_STATE_DIR
from firmware_bridge.transport import KNOWN_SCHEMES
from hil_tests.plate import NOT_APPLICABLE, is_simulator_url, not_applicable, stop_safely
from hil_tests.report import QualificationReport, TestOutcome

DEFAULT_URL = "sim://?speed=max"
MOTION_REASON = "drives the plate: pass --allow-motion with nobody on it"
NO_MOTION_REASON = "drives the plate, and --no-motion was given"
# Checks in the order an engineer reads them (pytest would sort the files by name).
MODULE_ORDER = (
    "test_link",
    "test_latency",
    "test_limits",
    "test_ramps",
    "test_watchdog",
    "test_closed_loop",
    "test_fault_injection",
    "test_countersign",
)
REPORT_KEY = pytest.StashKey[QualificationReport]()
STARTED_KEY = pytest.StashKey[float]()  # when the suite's first test started
ENDED_KEY = pytest.StashKey[float]()  # when its latest test phase ended
WRITTEN_KEY = pytest.StashKey[tuple[Path, Path]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hil", "plate qualification (hil_tests, see docs/hil.md)")
    group.addoption(
        "--device-url",
        default=None,
        help=f"plate to qualify: a port path or URL (default {DEFAULT_URL})",
    )
    group.addoption(
        "--allow-motion",
        action="store_true",
        default=False,
        help="let tests drive a plate that is not sim:// (make sure nobody stands on it)",
    )
    group.addoption(
        "--no-motion",
        action="store_true",
        default=False,
        help="skip every test that drives the plate, even on the simulator",
    )
    group.addoption(
        "--report",
        nargs="?",
        const=".",
        default=None,
        metavar="DIR",
        help="write hil-report.json and hil-report.txt into DIR (an existing directory; "
        "the current one if DIR is left out: put --report last or write --report=DIR)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "moves_plate: drives the plate; needs --allow-motion unless the URL is sim://",
    )
    config.addinivalue_line(
        "markers",
        "needs_capability(name, ...): skip unless the plate announces these capability bits",
    )
    if not config.pluginmanager.hasplugin("timeout"):
        raise pytest.UsageError(
            "hil_tests needs pytest-timeout (pip install pytest-timeout): every test has a "
            "timeout so that a hung link cannot hold the plate"
        )
    url = config.getoption("--device-url") or DEFAULT_URL
    _check_url(url)
    allow = bool(config.getoption("--allow-motion"))
    no_motion = bool(config.getoption("--no-motion"))
    if allow and no_motion:
        raise pytest.UsageError("--allow-motion and --no-motion contradict each other: pick one")
    report_dir = config.getoption("--report")
    if report_dir is not None:
        path = Path(report_dir)
        if not path.exists():
            raise pytest.UsageError(
                f"--report {report_dir}: no such directory (create it first; the suite does not "
                "guess where a qualification record should go)"
            )
        if not path.is_dir():
            raise pytest.UsageError(f"--report {report_dir}: is a file, not a directory")
    if is_simulator_url(url) and not os.environ.get(ENV_STATE_DIR) and "nv=" not in url:
        # the simulated plate's key and counter live in a directory of this run, never in the
        # user's own state directory (firmware_bridge/sim/nvstore.py)
        os.environ[ENV_STATE_DIR] = tempfile.mkdtemp(prefix="liv-hil-nv-")
    options = {"allow_motion": allow, "no_motion": no_motion, "report": report_dir}
    config.stash[REPORT_KEY] = QualificationReport(url=url, options=options)


def _check_url(url: str) -> None:
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme and scheme not in KNOWN_SCHEMES:
        raise pytest.UsageError(
            f"--device-url {url}: unknown scheme {scheme!r}; use a port path or one of "
            f"{', '.join(KNOWN_SCHEMES)}"
        )
    if scheme == "sim":
        try:
            parse_sim_url(url)
        except UnknownUrlError as exc:
            raise pytest.UsageError(f"--device-url: {exc}") from None


def motion_allowed(config: pytest.Config) -> tuple[bool, str]:
    """Whether tests may drive the plate, and if not, why."""
    if config.getoption("--no-motion"):
        return False, NO_MOTION_REASON
    url = config.getoption("--device-url") or DEFAULT_URL
    if is_simulator_url(url) or config.getoption("--allow-motion"):
        return True, ""
    return False, MOTION_REASON


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    allowed, reason = motion_allowed(config)
    known = {c.name for c in Capability}
    for item in items:
        if "hil_tests" not in item.nodeid:
            continue
        for mark in item.iter_markers("needs_capability"):
            unknown = [name for name in mark.args if name not in known]
            if unknown or not mark.args:
                raise pytest.UsageError(
                    f"{item.nodeid}: needs_capability({', '.join(map(str, mark.args))}) names "
                    f"no capability; known: {', '.join(sorted(known))}"
                )
        if not allowed and item.get_closest_marker("moves_plate"):
            item.add_marker(pytest.mark.skip(reason=reason))
    # Reorder the suite's own items among the slots they hold (other suites keep their order).
    slots = [i for i, item in enumerate(items) if "hil_tests" in item.nodeid]
    ordered = sorted((items[i] for i in slots), key=_module_rank)
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


def _module_rank(item: pytest.Item) -> int:
    module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    return MODULE_ORDER.index(module) if module in MODULE_ORDER else len(MODULE_ORDER)


# ---- report hooks ----------------------------------------------------------------------------


def _report(config: pytest.Config) -> QualificationReport | None:
    return config.stash.get(REPORT_KEY, None)


def pytest_runtest_setup(item: pytest.Item) -> None:
    report = _report(item.config)
    if report is not None:
        report.current_test = item.nodeid
        if STARTED_KEY not in item.config.stash and "hil_tests" in item.nodeid:
            item.config.stash[STARTED_KEY] = time.monotonic()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    report: pytest.TestReport = yield
    qualification = _report(item.config)
    if qualification is None or "hil_tests" not in report.nodeid:
        return report
    outcome = report.outcome
    if report.failed and report.when != "call":
        outcome = "error"
    reason = ""
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(NOT_APPLICABLE):
            outcome, reason = "not applicable", reason.removeprefix(NOT_APPLICABLE)
    elif report.failed:
        reason = _first_line(report.longreprtext)
    qualification.record_outcome(TestOutcome(report.nodeid, outcome, report.duration, reason))
    item.config.stash[ENDED_KEY] = time.monotonic()
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    report = _report(config)
    if report is None or not report.outcomes:
        return
    started = config.stash.get(STARTED_KEY, None)
    if started is not None:
        report.duration_s = config.stash.get(ENDED_KEY, started) - started
    report.current_test = ""
    directory = config.getoption("--report")
    if directory is not None:
        config.stash[WRITTEN_KEY] = report.write(Path(directory))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    report = _report(config)
    if report is None or not report.outcomes:
        return
    device = report.device.get("device_id", "no handshake")
    terminalreporter.write_sep("=", "plate qualification")
    terminalreporter.write_line(
        f"{report.verdict}: {device} at {report.url} ({len(report.checks)} checks, "
        f"{report.duration_s:.1f} s)"
    )
    written = config.stash.get(WRITTEN_KEY, None)
    if written is not None:
        terminalreporter.write_line(f"report: {written[0]} and {written[1]}")


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.startswith("E "):
            return line[2:].strip()
    return text.strip().splitlines()[-1] if text.strip() else ""


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def device_url(request: pytest.FixtureRequest) -> str:
    url = request.config.getoption("--device-url")
    return str(url) if url else DEFAULT_URL


@pytest.fixture(scope="session")
def qualification(request: pytest.FixtureRequest) -> QualificationReport:
    """The run's report: tests record every figure they judge into it."""
    return request.config.stash[REPORT_KEY]


@pytest.fixture(scope="session")
def device_info(device_url: str, qualification: QualificationReport) -> DeviceInfo:
    """The plate's HELLO (one connection, closed again)."""
    with DeviceClient.open(device_url) as client:
        qualification.set_device(client.info.to_dict())
        return client.info


@pytest.fixture(autouse=True)
def _capability_gate(request: pytest.FixtureRequest) -> None:
    marks = list(request.node.iter_markers("needs_capability"))
    if not marks:
        return
    info: DeviceInfo = request.getfixturevalue("device_info")
    wanted = [str(name) for mark in marks for name in mark.args]
    missing = [name for name in wanted if name not in info.capabilities]
    if missing:
        have = ", ".join(info.capabilities) or "none"
        not_applicable(f"needs capability {', '.join(missing)}; the plate announces {have}")


@pytest.fixture
def device(device_url: str, qualification: QualificationReport) -> Iterator[DeviceClient]:
    """A connected plate, output off and no fault latched; closed (output off) after the test."""
    with DeviceClient.open(device_url) as client:
        qualification.set_device(client.info.to_dict())
        _known_state(client)
        yield client


def _known_state(client: DeviceClient) -> None:
    """Start from IDLE: a plate served over a pty or TCP keeps its state between connections.

    Nothing about a fresh boot is assumed (docs/protocol.md 9.7): the output may be on, a fault
    may be latched, the sample index and frequency are whatever the plate has; blocks sent
    before now are dropped.
    """
    status = client.request_status()
    if status.output_on:
        stop_safely(client)
    # A previous host's stop ramp (SET_OUTPUT off moments before this connection) leaves the
    # plate STOPPING for up to the HELLO's stop ramp; SET_OUTPUT on is refused BUSY meanwhile.
    if client.wait_while_stopping().state == DeviceState.STOPPING:
        raise AssertionError(
            f"the plate is still STOPPING {client.info.stop_ramp_s:g} s (its stop ramp) and "
            "more after this connection: it does not finish its stop ramp"
        )
    deadline = client.sample_index + round(1.0 * client.info.sample_rate_hz)
    while client.request_status().state == DeviceState.FAULT:
        try:
            client.clear_fault()
        except CommandRefusedError as exc:
            if exc.reason_code != NakReason.BUSY or client.sample_index > deadline:
                raise
            client.read_for(0.05)
    client.discard_backlog()


@pytest.fixture(scope="session")
def calibration(
    request: pytest.FixtureRequest,
    device_url: str,
    device_info: DeviceInfo,
    qualification: QualificationReport,
) -> Calibration:
    """The plate's response across the therapy band, identified once per run (drives it).

    Session-scoped: the closed-loop and the fault-injection checks both need it, and on a real
    plate identification takes about 12 s. It is not stored: a qualification run must not
    replace the calibration the plate is used with.
    """
    allowed, reason = motion_allowed(request.config)
    if not allowed:
        pytest.skip(f"calibration {reason}")
    with DeviceClient.open(device_url) as client:
        _known_state(client)
        try:
            result = identify(client)  # the calibration band inside the plate's range
        finally:
            stop_safely(client)
    qualification.note(
        "calibration",
        {f"{f:g} Hz": round(result.gain_at(f), 4) for f in (30.0, 45.0, 60.0, 90.0)}
        | {"unit": "g per unit drive", "drive": result.drive},
    )
    return result
