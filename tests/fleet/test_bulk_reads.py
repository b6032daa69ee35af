"""The operator's commands read a whole fleet in bulk: a handful of messages, not one per device.

2,000 devices' DeviceInfo, heartbeat and upgrade status in a real nats-server;
the server's own count of messages it received from clients (`/varz in_msgs`)
around each command says how many requests it made. Reading key by key would
be at least one request per device (2,000); a bulk read (a consumer of every
key's latest value) is a couple per bucket.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harmony_core.contracts import (
    CpuInfo,
    DeviceInfo,
    DiskInfo,
    Heartbeat,
    Load,
    OsInfo,
    UpgradeStatus,
    dump_json,
    utcnow,
)
from harmony_fleet.cli import main as fleet
from tests.conftest import init_layout
from tests.natsserver import NatsServer, free_port
from tests.upgrade.helpers import build_deb

N = 2000
SITES = 10
# Messages a command may send the server besides one per thing it writes: consumer
# creations, a stream info, an object get; far below one per device.
BOUND = 50


def _fill(url: str, n: int) -> None:
    """n devices, each with a DeviceInfo (label site=s<i % 10>), a heartbeat, a status."""
    import nats

    now = utcnow()
    base = DeviceInfo(
        device_id="d",
        machine_id="m" * 32,
        hostname="h",
        labels={},
        agent_version="0.1.0",
        os=OsInfo(id="debian", version_id="12", pretty_name="Debian GNU/Linux 12"),
        kernel="6.1.0",
        arch="amd64",
        boot_id="b" * 32,
        booted_at=now,
        started_at=now,
        cpu=CpuInfo(model="x", count=2),
        memory_total_bytes=1 << 30,
        disk=DiskInfo(root_total_bytes=1 << 34),
        network=[],
        heartbeat_interval_s=15,
        updated_at=now,
    )

    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        futs = []
        for i in range(n):
            d = f"dev-{i:05d}"
            info = base.model_copy(
                update={"device_id": d, "hostname": d, "labels": {"site": f"s{i % SITES}"}}
            )
            hb = Heartbeat(
                device_id=d,
                agent_version="0.1.0",
                seq=1,
                sent_at=now,
                interval_s=15,
                boot_id="b" * 32,
                uptime_s=1,
                agent_uptime_s=1,
                state="running",
                load=Load(cpu_percent=1, memory_used_percent=1, disk_used_percent=1),
            )
            st = UpgradeStatus(device_id=d, phase="committed", updated_at=now)
            for bucket, value in (
                ("device-info", dump_json(info)),
                ("device-heartbeat", dump_json(hb)),
                ("agent-upgrade-status", dump_json(st)),
            ):
                futs.append(await js.publish_async(f"$KV.{bucket}.{d}", value))
            if len(futs) >= 3000:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
        await nc.close()

    asyncio.run(go())


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    srv = NatsServer(tmp_path_factory.mktemp("nats"), monitor_port=free_port()).start()
    try:
        init_layout(srv.url)
        _fill(srv.url, N)
        yield srv
    finally:
        srv.stop()


def _received(srv: NatsServer) -> int:
    return int(srv.varz()["in_msgs"])


def _run(
    srv: NatsServer, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, list[str], int]:
    """(exit code, output lines, messages the server received meanwhile)."""
    capsys.readouterr()
    before = _received(srv)
    rc = fleet(["-s", srv.url, *args])
    return rc, capsys.readouterr().out.splitlines(), _received(srv) - before


def test_devices_is_a_bulk_read(
    fleet_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, sent = _run(fleet_server, capsys, "devices")
    assert rc == 0 and len(out) == N + 1 and out[0].startswith("DEVICE")
    assert out[1].split()[:3] == ["dev-00000", "Ready", "0.1.0"]
    assert sent <= BOUND, f"{sent} messages for {N} devices"

    rc, out, sent = _run(fleet_server, capsys, "devices", "-l", "site=s3")
    assert rc == 0 and len(out) == N // SITES + 1
    assert all("site=s3" in line for line in out[1:])
    assert sent <= BOUND, f"{sent} messages for {N} devices"

    rc, out, sent = _run(fleet_server, capsys, "devices", "--json")
    rows = json.loads("\n".join(out))
    assert rc == 0 and len(rows) == N and rows[0]["device_id"] == "dev-00000"
    assert rows[0]["labels"] == {"site": "s0"} and rows[0]["status"] == "Ready"
    assert sent <= BOUND, f"{sent} messages for {N} devices"


def test_devices_json_streams_the_same_bytes_as_one_dump(
    fleet_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = _run(fleet_server, capsys, "devices", "--json", "-l", "site=s1")
    assert rc == 0
    rows = json.loads("\n".join(out))
    assert "\n".join(out) == json.dumps(rows, indent=2)
    rc, out, _ = _run(fleet_server, capsys, "devices", "--json", "-l", "site=nowhere")
    assert rc == 0 and out == ["[]"]


def test_watch_prints_the_current_state_from_a_bulk_read(fleet_server: NatsServer) -> None:
    before = _received(fleet_server)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harmony_fleet.cli", "-s", fleet_server.url, "watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    seen: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        while sum(seen.values()) < 3 * N:
            line = proc.stdout.readline()
            assert line, "watch ended early"
            bucket = json.loads(line)["bucket"]
            seen[bucket] = seen.get(bucket, 0) + 1
        took = time.monotonic() - t0
        sent = _received(fleet_server) - before
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
    assert seen == {"device-info": N, "device-heartbeat": N, "agent-upgrade-status": N}
    assert sent <= BOUND, f"{sent} messages for the state of {N} devices"
    assert took < 30, took


def test_upgrade_by_selector_reads_the_fleet_in_bulk(
    fleet_server: NatsServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["-s", fleet_server.url]
    prefix = tmp_path / "op"
    assert fleet([*url, "keygen", "--out", str(prefix)]) == 0
    (tmp_path / "debs").mkdir()
    deb, _, _ = build_deb(tmp_path / "debs", "0.3.0")
    key = str(prefix.with_suffix(".key"))
    assert fleet([*url, "publish-artifact", str(deb), "--key", key]) == 0
    rc, out, sent = _run(
        fleet_server, capsys, "upgrade", "-l", "site=s7", "--version", "0.3.0", "--key", key
    )
    asked = N // SITES
    assert rc == 0 and len(out) == asked, out[:3]
    assert all(line.startswith("dev-") and "requested 0.3.0" in line for line in out)
    # One write per device asked; the listing of all 2,000 costs next to nothing.
    assert asked <= sent <= asked + BOUND, f"{sent} messages to ask {asked} of {N} devices"


def test_forgotten_devices_leave_the_bulk_read(
    fleet_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fleet(["-s", fleet_server.url, "forget", "dev-00009"]) == 0
    rc, out, _ = _run(fleet_server, capsys, "devices", "-l", "site=s9")
    assert rc == 0 and len(out) == N // SITES
    assert not any(line.startswith("dev-00009 ") for line in out)
