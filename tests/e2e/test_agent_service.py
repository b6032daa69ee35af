"""The installed agent on a booted Debian: start, journal, logs, bad config, reload, reboot.

One container for the module (the scenarios run in file order and each leaves
the agent running with a good config); the package is installed over a
pre-provisioned config, as a device's provisioning would do.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from harmony_core.logcodec import decode_batch
from tests.agentproc import kv_get_json, run_bus
from tests.e2e.conftest import AGENT, Debs, agent_toml, provision, stays
from tests.e2e.harness import Container
from tests.natsserver import NatsServer, wait_for

pytestmark = pytest.mark.e2e

LABELS = {"site": "e2e", "rack": "r1"}


@pytest.fixture(scope="module")
def device(base: Path, debs: Debs, nats: NatsServer) -> Iterator[Container]:
    with Container.create(base, "e2e-agent") as c:
        c.boot()
        provision(c, nats.url, LABELS)
        c.install_deb(debs.old)
        c.wait_active(AGENT)
        yield c


def heartbeat(url: str, device_id: str) -> dict[str, Any] | None:
    got = kv_get_json(url, "device-heartbeat", device_id)
    return got[0] if got else None


def device_info(url: str, device_id: str) -> dict[str, Any] | None:
    got = kv_get_json(url, "device-info", device_id)
    return got[0] if got else None


def wait_heartbeat(url: str, device_id: str, what: str, cond: Any, timeout: float = 30) -> None:
    wait_for(lambda: (hb := heartbeat(url, device_id)) is not None and cond(hb), timeout, what)


def test_fresh_install_runs_and_reports(device: Container, debs: Debs, nats: NatsServer) -> None:
    dev = device.machine_id
    props = device.show(AGENT, "ActiveState", "SubState", "UnitFileState", "NRestarts", "Type")
    assert props == {"ActiveState": "active", "SubState": "running", "UnitFileState": "enabled",
                     "NRestarts": "0", "Type": "notify"}
    wait_heartbeat(nats.url, dev, "two heartbeats", lambda hb: hb["seq"] >= 2)
    hb = heartbeat(nats.url, dev)
    assert hb is not None and hb["state"] == "running" and hb["agent_version"] == debs.old_version
    info = device_info(nats.url, dev)
    assert info is not None
    assert info["device_id"] == dev and info["agent_version"] == debs.old_version
    assert info["arch"] == "amd64" and info["os"]["id"] == "debian"
    assert {k: info["labels"][k] for k in LABELS} == LABELS
    # The agent runs as its own user, with the journal group, from the packaged release.
    pid = device.show(AGENT, "MainPID")["MainPID"]
    status = device.read_file(f"/proc/{pid}/status")
    uid = device.run(["id", "-u", AGENT], check=True).stdout.strip()
    assert f"Uid:\t{uid}\t" in status
    assert device.run(["readlink", "/opt/harmony-agent/current"]).stdout.strip() == (
        f"releases/{debs.old_version}"
    )
    # postinst compiled the release's bytecode (the launcher reads it, never writes it).
    pycs = device.run(["find", f"/opt/harmony-agent/releases/{debs.old_version}/agent",
                       "-name", "*.pyc"]).stdout.split()
    assert len(pycs) > 10, pycs
    # `harmony-agent status` reads the health file the daemon keeps in /run.
    out = device.run([AGENT, "status"], check=True).stdout
    assert "connected" in out, out


def test_units_verify_on_the_device(device: Container) -> None:
    """`systemd-analyze verify` where every path the unit names really exists."""
    proc = device.run(["systemd-analyze", "verify", "/lib/systemd/system/harmony-agent.service"])
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_sandbox_is_in_effect(device: Container) -> None:
    """Read-only system (releases included), writable state, no privileges left."""
    pid = device.show(AGENT, "MainPID")["MainPID"]
    status = dict(
        line.split(":\t", 1) for line in device.read_file(f"/proc/{pid}/status").splitlines()
        if ":\t" in line
    )
    assert status["CapEff"].strip("0") == "" and status["CapBnd"].strip("0") == ""
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    mounts: dict[str, set[str]] = {}
    for line in device.read_file(f"/proc/{pid}/mountinfo").splitlines():
        fields = line.split()
        mounts[fields[4]] = set(fields[5].split(","))
    assert "ro" in mounts["/"]
    assert "rw" in mounts["/var/lib/harmony-agent"] and "rw" in mounts["/run/harmony-agent"]
    assert not [m for m, opts in mounts.items()
                if m.startswith(("/opt", "/etc", "/usr")) and "rw" in opts]


def test_launcher_falls_back_to_the_packaged_release(device: Container, debs: Debs) -> None:
    current = "/opt/harmony-agent/current"
    incomplete = "/opt/harmony-agent/releases/99.0.0"  # no .complete marker
    device.run(["mkdir", "-p", f"{incomplete}/agent"], check=True)
    try:
        for broken in ("releases/does-not-exist", "/usr", incomplete):
            device.run(["ln", "-sfn", broken, current], check=True)
            out = device.run([AGENT, "version"], check=True).stdout.strip()
            assert out == debs.old_version
        device.run(["rm", current], check=True)
        assert device.run([AGENT, "version"], check=True).stdout.strip() == debs.old_version
    finally:
        device.run(["rm", "-rf", incomplete], check=True)
        device.run(["ln", "-sfn", f"releases/{debs.old_version}", current], check=True)


def test_journal_has_structured_lines(device: Container) -> None:
    def structured() -> list[dict[str, Any]]:
        return [r for r in device.journal(AGENT) if r.get("HARMONY_EVENT")]

    wait_for(lambda: structured(), 20, "journal lines with HARMONY_EVENT")
    records = structured()
    assert all(r.get("DEVICE_ID") == device.machine_id for r in records), records[:3]
    assert all(r.get("SYSLOG_IDENTIFIER") == AGENT for r in records)
    # No Python logging failures in the journal (they go to stderr, unstructured).
    assert not [m for m in device.messages(AGENT) if "Logging error" in m]


def _log_records(url: str, device_id: str) -> list[dict[str, Any]]:
    async def fetch(bus: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async for data, _, headers in bus.fetch_stream("DEVICE_LOGS", f"logs.{device_id}"):
            out.extend(json.loads(decode_batch(data, headers))["records"])
        return out

    result: list[dict[str, Any]] = run_bus(url, fetch)
    return result


def test_unit_lines_reach_device_logs(device: Container, nats: NatsServer) -> None:
    if importlib.util.find_spec("agent.logs") is None:
        pytest.skip("log streaming (issue 5) not landed")
    unit = "e2e-logger"
    device.run(
        ["systemd-run", f"--unit={unit}", "--wait", "--quiet", "sh", "-c",
         "for i in 1 2 3; do echo e2e-line-$i; done"],
        check=True,
    )

    def lines() -> list[str]:
        recs = _log_records(nats.url, device.machine_id)
        return [str(r.get("message")) for r in recs if r.get("unit") == f"{unit}.service"]

    wait_for(lambda: len(lines()) >= 3, 30, "the unit's lines in DEVICE_LOGS")
    assert [m for m in lines() if m.startswith("e2e-line-")] == [
        "e2e-line-1", "e2e-line-2", "e2e-line-3"
    ]


def test_label_change_and_reload(device: Container, nats: NatsServer) -> None:
    dev = device.machine_id
    pid = device.show(AGENT, "MainPID")["MainPID"]
    device.write_file("/etc/harmony-agent/agent.toml",
                      agent_toml(nats.url, {**LABELS, "site": "e2e-reloaded"}), 0o640)
    device.run(["systemctl", "reload", AGENT], check=True)
    wait_for(
        lambda: ((device_info(nats.url, dev) or {}).get("labels") or {}).get("site")
        == "e2e-reloaded",
        20,
        "DeviceInfo with the new label",
    )
    # A reload, not a restart.
    assert device.show(AGENT, "MainPID", "NRestarts") == {"MainPID": pid, "NRestarts": "0"}


def test_bad_config_fails_with_78_and_does_not_loop(device: Container, nats: NatsServer) -> None:
    good = agent_toml(nats.url, LABELS)
    # A typo'd key: unknown keys are errors (contract §2).
    bad = good.replace("[heartbeat]", '[heartbeat]\nintervall = "5s"')
    device.write_file("/etc/harmony-agent/agent.toml", bad, 0o640)
    device.run(["systemctl", "restart", AGENT])
    device.wait_state(AGENT, ["failed"], 30)
    props = device.show(AGENT, "ExecMainStatus", "Result", "NRestarts")
    assert props == {"ExecMainStatus": "78", "Result": "exit-code", "NRestarts": "0"}, props
    # Longer than RestartSec=5s: a restart would have happened by now.
    stays(lambda: device.show(AGENT, "NRestarts", "ActiveState")
          == {"NRestarts": "0", "ActiveState": "failed"}, 7, "failed, not restarted")
    text = "\n".join(device.messages(AGENT, "-n", "50"))
    assert "heartbeat.intervall" in text, text
    # Fixed config: starts again.
    device.write_file("/etc/harmony-agent/agent.toml", good, 0o640)
    device.run(["systemctl", "restart", AGENT], check=True)
    device.wait_active(AGENT)


def test_watchdog_restarts_a_hung_agent(device: Container) -> None:
    """With a 3 s watchdog the agent keeps pinging; frozen, systemd kills and restarts it."""
    dropin = "/etc/systemd/system/harmony-agent.service.d/e2e-watchdog.conf"
    device.write_file(dropin, "[Service]\nWatchdogSec=3s\n")
    try:
        device.run(["systemctl", "daemon-reload"], check=True)
        device.run(["systemctl", "restart", AGENT], check=True)
        device.wait_active(AGENT)
        pid = device.show(AGENT, "MainPID")["MainPID"]
        stays(lambda: device.show(AGENT, "MainPID", "NRestarts")
              == {"MainPID": pid, "NRestarts": "0"}, 5, "running on without a restart")
        device.run(["systemctl", "kill", "--kill-who=main", "-s", "SIGSTOP", AGENT], check=True)
        wait_for(lambda: device.show(AGENT, "NRestarts")["NRestarts"] == "1", 20,
                 "a restart after the watchdog timeout")
        device.wait_active(AGENT)
        assert device.show(AGENT, "MainPID")["MainPID"] != pid
        assert [m for m in device.messages(AGENT, "-n", "30") if "Watchdog timeout" in m]
    finally:
        device.run(["rm", "-f", dropin])
        device.run(["systemctl", "daemon-reload"])
        device.run(["systemctl", "restart", AGENT])
    device.wait_active(AGENT)


def test_poweroff_and_boot_again(device: Container, nats: NatsServer) -> None:
    dev = device.machine_id
    wait_heartbeat(nats.url, dev, "a heartbeat before poweroff", lambda hb: hb["seq"] >= 1)
    invocation = device.show(AGENT, "InvocationID")["InvocationID"]
    device.poweroff()
    last = heartbeat(nats.url, dev)
    assert last is not None and last["state"] == "stopping", last
    off_at = datetime.now(UTC)
    device.boot()
    # Nobody starts it: enabled, it comes back with the boot.
    device.wait_active(AGENT)
    assert device.show(AGENT, "InvocationID")["InvocationID"] != invocation
    wait_heartbeat(nats.url, dev, "a heartbeat after the boot",
                   lambda hb: hb["state"] == "running"
                   and datetime.fromisoformat(hb["sent_at"]) > off_at)
    assert device.show(AGENT, "NRestarts")["NRestarts"] == "0"
