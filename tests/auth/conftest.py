"""A fleet with device identity (auth init, nats-server with its include, the callout)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.auth.fleet import AuthFleet


@pytest.fixture
def auth_fleet(tmp_path: Path) -> Iterator[AuthFleet]:
    fleet = AuthFleet(tmp_path / "fleet").start()
    try:
        yield fleet
    finally:
        fleet.stop()
