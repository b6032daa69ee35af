"""Fixtures of the booted-Debian scenarios: the base tree, the .debs, a nats-server.

Everything here skips (with the reason) on a host that cannot run containers:
not root, or no debootstrap / systemd-nspawn / nsenter / dpkg-deb.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import init_layout
from tests.e2e.harness import Container, base_tree, missing_tools
from tests.natsserver import NatsServer
from tests.packaging.debbuild import build_deb, newer_version, source_version

AGENT = "harmony-agent"
HEARTBEAT_INTERVAL = "2s"


@dataclass(frozen=True)
class Debs:
    """The packages under test: `old` is the checkout's version, `new` a later build of it."""

    old: Path
    old_version: str
    new: Path
    new_version: str


@pytest.fixture(scope="session")
def base() -> Path:
    """The cached debootstrap tree (built on first use, about a minute)."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"booted-Debian E2E needs {', '.join(missing)}")
    return base_tree()


@pytest.fixture(scope="session")
def debs(base: Path) -> Debs:
    version = source_version()
    newer = newer_version(version)
    return Debs(build_deb("amd64"), version, build_deb("amd64", newer), newer)


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A nats-server -js on the host's 127.0.0.1 with the fleet layout (contract §3)."""
    srv = NatsServer(tmp_path_factory.mktemp("nats")).start()
    try:
        init_layout(srv.url)
        yield srv
    finally:
        srv.stop()


def agent_toml(
    url: str, labels: dict[str, str] | None = None, *, interval: str = HEARTBEAT_INTERVAL
) -> str:
    """A device config pointing at `url`; device_id stays the default (machine-id)."""
    lines = ["[labels]", *(f'"{k}" = "{v}"' for k, v in (labels or {}).items())]
    lines += ["", "[nats]", f'servers = ["{url}"]', 'reconnect_max_wait = "1s"']
    lines += ["", "[heartbeat]", f'interval = "{interval}"']
    return "\n".join(lines) + "\n"


def provision(c: Container, url: str, labels: dict[str, str] | None = None) -> None:
    """What a provisioning system does before installing: the config is already there."""
    c.write_file("/etc/harmony-agent/agent.toml", agent_toml(url, labels), 0o640)


def stays(cond: Callable[[], bool], seconds: float, what: str, interval: float = 0.25) -> None:
    """Assert that `cond()` holds on every poll for `seconds` (the opposite of wait_for)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cond(), f"no longer true: {what}"
        time.sleep(interval)
