"""Fixtures of the operator-side tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fleet.rollouts import Env, rollout_env
from tests.natsserver import NatsServer


@pytest.fixture
async def env(nats_js: NatsServer, tmp_path: Path) -> AsyncIterator[Env]:
    """A nats-server with the layout, an operator key, and release 0.2.0 (amd64) published."""
    async with rollout_env(nats_js.url, tmp_path) as e:
        yield e
