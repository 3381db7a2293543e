"""Runtime tests: loopback only; children killed by PID; each test under a timeout."""

import pytest


@pytest.fixture(autouse=True)
def _runtime_timeout(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("timeout") is None:
        request.node.add_marker(pytest.mark.timeout(60))
