"""Options and fixtures of the qualification suite.

pytest hil_tests                               # the simulated plate
pytest hil_tests --device-url /dev/ttyACM0     # a real plate
pytest hil_tests --device-url rfc2217://bench-host:4000
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firmware_bridge.client import DeviceClient

DEFAULT_URL = "sim://?speed=max"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device-url",
        default=None,
        help=f"plate to qualify: a port path or URL (default {DEFAULT_URL})",
    )


@pytest.fixture(scope="session")
def device_url(request: pytest.FixtureRequest) -> str:
    url = request.config.getoption("--device-url")
    return str(url) if url else DEFAULT_URL


@pytest.fixture
def device(device_url: str) -> Iterator[DeviceClient]:
    with DeviceClient.open(device_url) as client:
        yield client
