"""The package's life on a device: upgrade over an edited config, remove, purge."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agentproc import kv_get_json
from tests.e2e.conftest import AGENT, Debs, agent_toml, provision
from tests.e2e.harness import Container
from tests.natsserver import NatsServer, wait_for

pytestmark = pytest.mark.e2e

LEFTOVERS = ("/opt/harmony-agent", "/etc/harmony-agent", "/var/lib/harmony-agent",
             "/usr/bin/harmony-agent", "/lib/systemd/system/harmony-agent.service")


@pytest.fixture(scope="module")
def device(base: Path, nats: NatsServer) -> Iterator[Container]:
    with Container.create(base, "e2e-lifecycle") as c:
        c.boot()
        provision(c, nats.url, {"site": "e2e"})
        yield c


def heartbeat(url: str, device_id: str) -> dict[str, Any]:
    got = kv_get_json(url, "device-heartbeat", device_id)
    return got[0] if got else {}


def device_info(url: str, device_id: str) -> dict[str, Any]:
    got = kv_get_json(url, "device-info", device_id)
    return got[0] if got else {}


def test_upgrade_keeps_config_and_runs_new_version(
    device: Container, debs: Debs, nats: NatsServer
) -> None:
    dev = device.machine_id
    device.install_deb(debs.old)
    device.wait_active(AGENT)
    wait_for(lambda: heartbeat(nats.url, dev).get("agent_version") == debs.old_version,
             30, f"a heartbeat from {debs.old_version}")
    old_pid = device.show(AGENT, "MainPID")["MainPID"]
    # The pre-provisioned config won over the packaged one, which dpkg put aside.
    assert device.exists("/etc/harmony-agent/agent.toml.dpkg-dist")
    device.run(["rm", "/etc/harmony-agent/agent.toml.dpkg-dist"], check=True)

    edited = agent_toml(nats.url, {"site": "e2e", "edited": "yes"})
    device.write_file("/etc/harmony-agent/agent.toml", edited, 0o640)
    device.install_deb(debs.new)

    assert device.read_file("/etc/harmony-agent/agent.toml") == edited
    assert not device.exists("/etc/harmony-agent/agent.toml.dpkg-dist")
    perms = device.run(["stat", "-c", "%U:%G %a", "/etc/harmony-agent/agent.toml"]).stdout
    assert perms.strip() == f"root:{AGENT} 640"
    device.wait_active(AGENT)
    assert device.show(AGENT, "MainPID")["MainPID"] != old_pid
    wait_for(lambda: heartbeat(nats.url, dev).get("agent_version") == debs.new_version,
             30, f"a heartbeat from {debs.new_version}")
    wait_for(lambda: device_info(nats.url, dev).get("labels", {}).get("edited") == "yes",
             30, "DeviceInfo with the edited config's label")
    assert device.run(["readlink", "/opt/harmony-agent/current"]).stdout.strip() == (
        f"releases/{debs.new_version}"
    )
    releases = device.run(["ls", "-A", "/opt/harmony-agent/releases"]).stdout.split()
    assert releases == [debs.new_version]
    assert device.run([AGENT, "version"], check=True).stdout.strip() == debs.new_version


def test_remove_keeps_config_and_state_then_purge_leaves_nothing(
    device: Container, nats: NatsServer
) -> None:
    dev = device.machine_id
    device.apt(["remove", "-y", AGENT])
    assert device.show(AGENT, "ActiveState")["ActiveState"] == "inactive"
    # A clean stop says so in its last heartbeat.
    assert heartbeat(nats.url, dev).get("state") == "stopping"
    assert device.exists("/etc/harmony-agent/agent.toml")
    assert device.exists("/var/lib/harmony-agent")
    assert device.run(["getent", "passwd", AGENT]).returncode == 0
    assert not device.exists("/usr/bin/harmony-agent")
    assert not device.exists("/opt/harmony-agent/current")

    device.apt(["purge", "-y", AGENT])
    left = [p for p in LEFTOVERS if device.exists(p)]
    assert left == []
    assert device.run(["getent", "passwd", AGENT]).returncode == 2
    assert device.run(["getent", "group", AGENT]).returncode == 2
    status = device.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", AGENT]).stdout
    assert status in ("", "not-installed")
    assert device.run(["sh", "-c", "ls /etc/systemd/system/*/harmony-agent* 2>/dev/null"]
                      ).stdout == ""
