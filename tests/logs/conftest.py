"""Fixtures of the log streaming tests: a real systemd-journald for the session."""

from __future__ import annotations

import pytest

from tests.logs.journald import unique


@pytest.fixture
def device_id() -> str:
    return unique("dev")


@pytest.fixture
def ident() -> str:
    return unique("id")


@pytest.fixture(params=["zstd", "none"])
def compression(request: pytest.FixtureRequest) -> str:
    """`[logs] compression`: the key tests run both ways."""
    value: str = request.param
    return value
