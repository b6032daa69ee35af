"""A real `harmony-agent run` against a real nats-server -js, with a real NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.health import read_health
from harmony_core.bus import Bus
from harmony_core.contracts import DeviceInfo, dump_json, utcnow
from harmony_fleet.devices import list_devices
from tests.agentproc import AgentProcess, kv_get_json, run_bus, write_config
from tests.conftest import init_layout
from tests.natsserver import NatsServer, free_port, stop_process, wait_for


def _hb(url: str, dev: str = "dev-test") -> dict[str, Any] | None:
    got = kv_get_json(url, "device-heartbeat", dev)
    return got[0] if got else None


def _info(url: str, dev: str = "dev-test") -> tuple[dict[str, Any], int] | None:
    got = kv_get_json(url, "device-info", dev)
    return (got[0], got[1]) if got else None


def test_ready_heartbeats_and_clean_stop(nats_js: NatsServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url], labels={"site": "lab"})
    agent = AgentProcess(cfg)
    try:
        ready = agent.wait_notify("READY", "1", timeout=10)
        assert ready.get("STATUS")
        wait_for(lambda: (_hb(nats_js.url) or {}).get("seq", 0) >= 3, 15, "three heartbeats")
        hb = _hb(nats_js.url)
        assert hb is not None
        assert hb["state"] == "running" and hb["interval_s"] == 1.0
        assert hb["sent_at"].endswith("Z") and hb["agent_version"]
        assert set(hb["load"]) == {"cpu_percent", "memory_used_percent", "disk_used_percent"}
        info = _info(nats_js.url)
        assert info is not None
        assert info[0]["labels"]["site"] == "lab"
        assert info[0]["labels"]["harmony.nationtech.io/arch"] == info[0]["arch"]
        DeviceInfo.model_validate(info[0])
        health = read_health(tmp_path / "run" / "health.json")
        assert health is not None and health.nats.state == "connected"
        assert health.last_heartbeat_ack_at is not None and health.ready
        wait_for(lambda: "last heartbeat ack" in agent.last_status(), 5, "STATUS= line")
        t0 = time.monotonic()
        agent.signal(signal.SIGTERM)
        assert agent.proc.wait(10) == 0
        assert time.monotonic() - t0 < 5.0
        last = _hb(nats_js.url)
        assert last is not None and last["state"] == "stopping"
        assert last["seq"] >= hb["seq"]
    finally:
        agent.close()


def test_watchdog_pings_when_asked(nats_js: NatsServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url])
    agent = AgentProcess(cfg, env={"WATCHDOG_USEC": "1000000"})
    try:
        agent.wait_notify("READY", "1")
        wait_for(lambda: len(agent.notified("WATCHDOG", "1")) >= 2, 10, "two WATCHDOG=1")
    finally:
        agent.stop()


def test_nats_unreachable_at_start_then_comes(tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    cfg = write_config(tmp_path / "agent.toml", servers=[url])
    agent = AgentProcess(cfg)
    srv = NatsServer(tmp_path / "nats", port=port)
    try:
        agent.wait_notify("READY", "1", timeout=5)  # READY is not gated on NATS
        wait_for(lambda: "NATS" in agent.last_status(), 5, "STATUS naming NATS trouble")
        assert agent.proc.poll() is None
        health = read_health(tmp_path / "run" / "health.json")
        assert health is not None and health.nats.state != "connected"
        srv.start()
        init_layout(url)
        wait_for(lambda: _hb(url) is not None, 20, "a heartbeat after NATS came")
    finally:
        agent.stop()
        srv.stop()


def test_nats_killed_and_restarted(nats_js: NatsServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url])
    agent = AgentProcess(cfg)
    try:
        wait_for(lambda: _hb(nats_js.url) is not None, 15, "first heartbeat")
        info = _info(nats_js.url)
        assert info is not None
        rev_before = info[1]
        nats_js.kill()
        wait_for(
            lambda: (
                (h := read_health(tmp_path / "run" / "health.json")) is not None
                and h.nats.state != "connected"
            ),
            10,
            "agent to notice NATS is gone",
        )
        time.sleep(1.5)  # let a few heartbeats fail while NATS is away (the point of the test)
        assert agent.proc.poll() is None
        nats_js.start()
        seq_at_restart = 0

        def resumed() -> bool:
            nonlocal seq_at_restart
            hb = _hb(nats_js.url)
            return hb is not None and hb["seq"] > seq_at_restart

        hb = _hb(nats_js.url)
        seq_at_restart = hb["seq"] if hb else 0
        wait_for(resumed, 20, "heartbeats to resume")
        wait_for(
            lambda: (i := _info(nats_js.url)) is not None and i[1] > rev_before,
            20,
            "DeviceInfo re-published after reconnect",
        )
    finally:
        agent.stop()


def test_missing_bucket_is_reported_and_retried(nats_server: NatsServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_server.url])
    agent = AgentProcess(cfg)
    try:
        agent.wait_notify("READY", "1")
        wait_for(lambda: "harmony-fleet init" in agent.stderr(), 10, "missing-bucket error")
        assert "'device-info'" in agent.stderr()
        wait_for(lambda: "harmony-fleet init" in agent.last_status(), 10, "STATUS naming it")
        assert agent.proc.poll() is None
        init_layout(nats_server.url)
        wait_for(lambda: _hb(nats_server.url) is not None, 20, "heartbeats once buckets exist")
    finally:
        agent.stop()


def test_duplicate_device_id_is_not_overwritten(nats_js: NatsServer, tmp_path: Path) -> None:
    other = DeviceInfo.model_validate(
        {
            **json.loads(
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "agent.cli",
                        "-c",
                        str(write_config(tmp_path / "x.toml", servers=[nats_js.url])),
                        "info",
                    ],
                    capture_output=True,
                    check=True,
                    text=True,
                ).stdout
            ),
            "machine_id": "0" * 32,
            "hostname": "the-other-one",
        }
    )

    async def put(bus: Bus) -> int:
        return await bus.kv_put("device-info", "dev-test", dump_json(other))

    run_bus(nats_js.url, put)
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url])
    agent = AgentProcess(cfg)
    try:
        wait_for(lambda: "CONFLICT" in agent.last_status(), 10, "conflict in STATUS")
        assert "0" * 32 in agent.stderr()
        status = subprocess.run(
            [sys.executable, "-m", "agent.cli", "-c", str(cfg), "status"],
            capture_output=True,
            text=True,
        )
        assert "CONFLICT" in status.stdout and "0" * 32 in status.stdout
        info = _info(nats_js.url)
        assert info is not None and info[0]["hostname"] == "the-other-one"
        assert _hb(nats_js.url) is None
        forget = subprocess.run(
            [sys.executable, "-m", "harmony_fleet.cli", "-s", nats_js.url, "forget", "dev-test"],
            capture_output=True,
            text=True,
        )
        assert forget.returncode == 0, forget.stderr
        wait_for(lambda: _hb(nats_js.url) is not None, 20, "heartbeat once the key is released")
        info = _info(nats_js.url)
        assert info is not None and info[0]["hostname"] != "the-other-one"
    finally:
        agent.stop()


def test_sighup_reloads_labels_and_keeps_config_on_error(
    nats_js: NatsServer, tmp_path: Path
) -> None:
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url], labels={"site": "a"})
    agent = AgentProcess(cfg)
    try:
        wait_for(
            lambda: (_info(nats_js.url) or ({}, 0))[0].get("labels", {}).get("site") == "a",
            15,
            "first DeviceInfo",
        )
        write_config(cfg, servers=[nats_js.url], labels={"site": "b"})
        agent.signal(signal.SIGHUP)
        wait_for(
            lambda: (_info(nats_js.url) or ({}, 0))[0]["labels"].get("site") == "b",
            10,
            "labels re-published after SIGHUP",
        )
        cfg.write_text(cfg.read_text() + "\nbogus_key = 1\n")
        agent.signal(signal.SIGHUP)
        wait_for(lambda: "config reload rejected" in agent.stderr(), 10, "rejected reload")
        assert "bogus_key" in agent.stderr()
        assert agent.proc.poll() is None
        wait_for(lambda: _hb(nats_js.url) is not None, 10, "a heartbeat")
        seq = (_hb(nats_js.url) or {})["seq"]
        wait_for(lambda: (_hb(nats_js.url) or {})["seq"] > seq, 10, "heartbeats go on")
    finally:
        agent.stop()


def test_bad_config_exits_78_before_nats(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[nats]\nservers = ["nats://127.0.0.1:{port}"]\ncreds_file = "/nope.creds"\n')
    r = subprocess.run(
        [sys.executable, "-m", "agent.cli", "-c", str(cfg), "run"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert r.returncode == 78
    assert "nats.creds_file" in r.stderr and "/nope.creds" in r.stderr


def test_devices_ready_then_offline_after_sigkill(nats_js: NatsServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url], labels={"site": "x"})
    agent = AgentProcess(cfg)
    n = __import__("agent.config", fromlist=["NatsSection"]).NatsSection(servers=[nats_js.url])
    try:
        wait_for(lambda: _hb(nats_js.url) is not None, 15, "first heartbeat")
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "harmony_fleet.cli",
                "-s",
                nats_js.url,
                "devices",
                "-l",
                "site=x",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "dev-test" in out and "Ready" in out
        none = subprocess.run(
            [
                sys.executable,
                "-m",
                "harmony_fleet.cli",
                "-s",
                nats_js.url,
                "devices",
                "-l",
                "site=y",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "dev-test" not in none
        agent.kill()

        async def statuses(bus: Bus) -> list[str]:
            now = utcnow()
            return [
                (await list_devices(bus, n, {}, now + timedelta(seconds=s)))[0].status
                for s in (0, 10, 301)
            ]

        # The server's timestamp of the last heartbeat, judged now, in 10 s and in 301 s
        # (interval 1 s: Ready <= 4 s, Stale <= max(5 min, 20 s), Offline beyond).
        assert run_bus(nats_js.url, statuses) == ["Ready", "Stale", "Offline"]
    finally:
        agent.close()


def test_health_says_acknowledged_only_for_a_real_ack(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """DeviceInfo can be written but the heartbeat bucket is missing: no ack is claimed."""

    async def only_device_info(bus: Bus) -> None:
        await bus.ensure_kv("device-info", history=1, description="only this one")

    run_bus(nats_server.url, only_device_info)
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_server.url])
    agent = AgentProcess(cfg)
    health_file = tmp_path / "run" / "health.json"
    try:
        wait_for(lambda: _info(nats_server.url) is not None, 15, "DeviceInfo written")
        wait_for(lambda: "'device-heartbeat'" in agent.stderr(), 10, "missing heartbeat bucket")
        wait_for(
            lambda: (
                (x := read_health(health_file)) is not None
                and any("device-heartbeat" in p for p in x.problems)
            ),
            5,
            "the problem in the health file",
        )
        h = read_health(health_file)
        assert h is not None and h.nats.state == "connected"
        assert h.last_heartbeat_ack_at is None
        init_layout(nats_server.url)
        wait_for(
            lambda: (
                (x := read_health(health_file)) is not None and x.last_heartbeat_ack_at is not None
            ),
            15,
            "an acknowledged heartbeat once the bucket exists",
        )
    finally:
        agent.stop()


def test_status_info_and_watch_commands(nats_js: NatsServer, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url], labels={"role": "gw"})
    info = subprocess.run(
        [sys.executable, "-m", "agent.cli", "-c", str(cfg), "info"],
        capture_output=True,
        text=True,
        check=True,
    )
    parsed = DeviceInfo.model_validate_json(info.stdout)
    assert parsed.labels["role"] == "gw" and parsed.device_id == "dev-test"
    not_running = subprocess.run(
        [sys.executable, "-m", "agent.cli", "-c", str(cfg), "status"],
        capture_output=True,
        text=True,
    )
    assert not_running.returncode == 3 and "not running" in not_running.stderr
    watch = subprocess.Popen(
        [sys.executable, "-m", "harmony_fleet.cli", "-s", nats_js.url, "watch", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    agent = AgentProcess(cfg)
    try:
        assert watch.stdout is not None
        seen: set[str] = set()
        deadline = time.monotonic() + 15
        while {"device-info", "device-heartbeat"} - seen and time.monotonic() < deadline:
            line = watch.stdout.readline()
            event = json.loads(line)
            assert event["device"] == "dev-test"
            seen.add(event["bucket"])
        assert {"device-info", "device-heartbeat"} <= seen

        def status() -> dict[str, Any]:
            st = subprocess.run(
                [sys.executable, "-m", "agent.cli", "-c", str(cfg), "status", "--json"],
                capture_output=True,
                text=True,
                check=True,
            )
            doc: dict[str, Any] = json.loads(st.stdout)
            return doc

        # The health file follows the ack a moment after the watcher saw the heartbeat.
        wait_for(lambda: status()["last_heartbeat_seq"] is not None, 10, "status with an ack")
        doc = status()
        assert doc["running"] is True and doc["nats"]["state"] == "connected"
        assert doc["version"] == parsed.agent_version
    finally:
        watch.kill()
        watch.wait()
        assert watch.stdout is not None
        watch.stdout.close()
        agent.stop()


def test_sigterm_right_after_ready_exits_within_5s(nats_js: NatsServer, tmp_path: Path) -> None:
    """SIGTERM the instant READY=1 arrives, while the services still talk to NATS: nats-py
    on Python 3.11 can swallow a task's cancel, and the stop must not hang on it."""
    import os
    import socket

    forced = 0
    for i in range(8):
        d = tmp_path / f"a{i}"
        d.mkdir()
        cfg = write_config(d / "agent.toml", servers=[nats_js.url], interval="15s", upgrade=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(d / "notify.sock"))
            sock.settimeout(10)
            env = {**os.environ, "NOTIFY_SOCKET": str(d / "notify.sock")}
            cmd = [sys.executable, "-m", "agent.cli", "-c", str(cfg), "run"]
            with open(d / "stderr", "wb") as err:
                proc = subprocess.Popen(cmd, env=env, stderr=err)
            try:
                while b"READY=1" not in sock.recv(4096).split(b"\n"):
                    pass
                proc.send_signal(signal.SIGTERM)
                t0 = time.monotonic()
                sock.setblocking(False)  # later datagrams are not read: never block the agent
                try:
                    rc = proc.wait(6)
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"run {i}: still running 6 s after SIGTERM") from None
                assert rc == 0 and time.monotonic() - t0 < 5.0
                forced += "stopping took longer" in (d / "stderr").read_text()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    # The forced exit is the backstop, not the way: an orderly stop is the rule.
    assert forced <= 2, f"{forced} of 8 stops needed the forced exit"


def test_sighup_says_reloading_then_ready(nats_js: NatsServer, tmp_path: Path) -> None:
    """systemd's reload protocol (sd_notify(3)): RELOADING=1 with MONOTONIC_USEC, then READY=1,
    for an accepted reload and for a rejected one alike."""
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url], labels={"site": "a"})
    agent = AgentProcess(cfg)

    def reload_and_check(n: int) -> None:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        agent.signal(signal.SIGHUP)
        wait_for(lambda: len(agent.notified("RELOADING", "1")) >= n, 10, f"RELOADING=1 #{n}")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        reloading = agent.notified("RELOADING", "1")[n - 1]
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after

        def ready_after() -> bool:
            msgs = list(agent.messages)
            at = next(i for i, m in enumerate(msgs) if m is reloading)
            return any(m.get("READY") == "1" for m in msgs[at + 1 :])

        wait_for(ready_after, 10, f"READY=1 after RELOADING=1 #{n}")

    try:
        agent.wait_notify("READY", "1")
        write_config(cfg, servers=[nats_js.url], labels={"site": "b"})
        reload_and_check(1)
        cfg.write_text(cfg.read_text() + "\nbogus_key = 1\n")
        reload_and_check(2)
        assert "config reload rejected" in agent.stderr()
        assert agent.proc.poll() is None
    finally:
        agent.stop()


def _can_bind_mount() -> bool:
    return os.geteuid() == 0 and all(shutil.which(t) for t in ("unshare", "mount"))


@pytest.mark.skipif(not _can_bind_mount(), reason="needs root, unshare and mount")
def test_os_release_that_is_not_utf8_never_ends_the_agent(
    nats_js: NatsServer, tmp_path: Path
) -> None:
    """Issue 9 finding 7: the agent ran into a non-UTF-8 /etc/os-release right after connecting
    and exited, every 5 s. It must stay up, publish DeviceInfo (OS unknown) and heartbeat."""
    bad = tmp_path / "os-release"
    bad.write_bytes(b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian \xff\xfe GNU/Linux"\n')
    cfg = write_config(tmp_path / "agent.toml", servers=[nats_js.url])
    # A private mount namespace: this agent alone sees the bad file (both os-release paths,
    # as /etc/os-release links to /usr/lib/os-release).
    cmd = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$0" /etc/os-release && exec "$@"',
        str(bad),
        sys.executable,
        "-m",
        "agent.cli",
        "-c",
        str(cfg),
        "run",
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")}
    stderr = tmp_path / "agent.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        wait_for(
            lambda: proc.poll() is not None or (_hb(nats_js.url) or {}).get("seq", 0) >= 3,
            20,
            "three heartbeats (or the agent's end)",
        )
        assert proc.poll() is None, f"the agent ended: {stderr.read_text(errors='replace')}"
        info = _info(nats_js.url)
        assert info is not None
        assert info[0]["os"] == {"id": "linux", "version_id": "", "pretty_name": "Linux"}
        assert "os-release" in stderr.read_text(errors="replace")
    finally:
        stop_process(proc)
