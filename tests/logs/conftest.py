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
