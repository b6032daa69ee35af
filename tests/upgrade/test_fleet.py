"""harmony-fleet keygen, publish-artifact, upgrade, upgrade-status against a real nats-server."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from pathlib import Path

import pytest

from agent.config import NatsSection, parse_config
from agent.upgrade import UpgradeService
from agent.upgrade.keys import load_trusted_keys
from agent.upgrade.layout import Layout, Staging
from agent.upgrade.status import status_bytes
from harmony_core.bus import Bus
from harmony_core.contracts import (
    CpuInfo,
    DeviceInfo,
    DiskInfo,
    OsInfo,
    UpgradeStatus,
    utcnow,
)
from harmony_core.envelope import verify_envelope
from harmony_fleet.cli import main as fleet
from tests.natsserver import NatsServer
from tests.upgrade.helpers import build_deb


def _kv(url: str, bucket: str, key: str, value: bytes | None = None) -> bytes | None:
    async def go() -> bytes | None:
        bus = Bus(NatsSection(servers=[url]))
        await bus.connect_once()
        try:
            if value is not None:
                await bus.kv_put(bucket, key, value)
                return value
            e = await bus.kv_get(bucket, key)
            return e.value if e else None
        finally:
            await bus.close()
    return asyncio.run(go())


def _info(device: str, labels: dict[str, str], arch: str = "amd64") -> bytes:
    now = utcnow()
    return DeviceInfo(
        device_id=device, machine_id="m" * 32, hostname=device, labels=labels,
        agent_version="0.1.0", os=OsInfo(id="debian", version_id="12", pretty_name="Debian"),
        kernel="6.1", arch=arch, boot_id="b", booted_at=now, started_at=now,
        cpu=CpuInfo(model="x", count=2), memory_total_bytes=1, disk=DiskInfo(root_total_bytes=1),
        network=[], heartbeat_interval_s=15, updated_at=now,
    ).model_dump_json().encode()


def test_keygen_publish_upgrade_and_status(
    tmp_path: Path, nats_js: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["-s", nats_js.url]
    prefix = tmp_path / "op"
    assert fleet([*url, "keygen", "--out", str(prefix)]) == 0
    assert (prefix.with_suffix(".key").stat().st_mode & 0o777) == 0o600
    assert fleet([*url, "keygen", "--out", str(prefix)]) == 1, "never overwrites a key"
    (tmp_path / "debs").mkdir()
    deb, sha, size = build_deb(tmp_path / "debs", "0.3.0")
    key = str(prefix.with_suffix(".key"))
    capsys.readouterr()
    assert fleet([*url, "publish-artifact", str(deb), "--key", key, "--json"]) == 0
    published = json.loads(capsys.readouterr().out)
    assert {k: published[k] for k in ("bucket", "name", "version", "arch", "sha256", "size",
                                      "manifest")} == {
        "bucket": "agent-artifacts", "name": "harmony-agent_0.3.0_amd64.deb", "version": "0.3.0",
        "arch": "amd64", "sha256": sha, "size": size,
        "manifest": "harmony-agent_0.3.0_amd64.deb.manifest"}
    _kv(nats_js.url, "device-info", "dev-a", _info("dev-a", {"site": "x"}))
    _kv(nats_js.url, "device-info", "dev-b", _info("dev-b", {"site": "y"}))
    assert fleet([*url, "upgrade", "-l", "site=x", "--version", "0.3.0", "--key", key,
                  "--confirm-window", "30s"]) == 0
    keys, _ = load_trusted_keys(tmp_path)
    raw = _kv(nats_js.url, "agent-upgrade", "dev-a")
    assert raw is not None
    req = verify_envelope(raw, keys).request
    assert (req.device_id, req.target_version, req.arch, req.confirm_window_s) == (
        "dev-a", "0.3.0", "amd64", 30.0)
    assert (req.artifact.sha256, req.artifact.size) == (sha, size)
    assert req.expires_at - req.issued_at == timedelta(hours=1)
    assert _kv(nats_js.url, "agent-upgrade", "dev-b") is None, "the selector left dev-b alone"
    # A version nobody published is an error that says what to do.
    capsys.readouterr()
    assert fleet([*url, "upgrade", "dev-b", "--version", "9.9.9", "--key", key]) == 1
    assert "publish it first" in capsys.readouterr().err
    # The device reports; upgrade-status shows a table and --wait ends on committed.
    st = UpgradeStatus(device_id="dev-a", request_id=req.request_id, from_version="0.1.0",
                       target_version="0.3.0", phase="committed", reason="healthy",
                       updated_at=utcnow())
    _kv(nats_js.url, "agent-upgrade-status", "dev-a", status_bytes(st))
    capsys.readouterr()
    assert fleet([*url, "upgrade-status"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["DEVICE", "PHASE", "FROM→TO", "PROGRESS", "REASON", "UPDATED"]
    assert out[1].split()[:3] == ["dev-a", "committed", "0.1.0→0.3.0"]
    assert fleet([*url, "upgrade-status", "dev-a", "--wait"]) == 0
    rolled = st.model_copy(update={"phase": "rolled_back", "reason": "crashed"})
    _kv(nats_js.url, "agent-upgrade-status", "dev-a", status_bytes(rolled))
    assert fleet([*url, "upgrade-status", "dev-a", "--wait"]) == 1


def test_versions_that_are_not_releases_are_refused_before_anything_is_sent(
    tmp_path: Path, nats_js: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["-s", nats_js.url]
    prefix = tmp_path / "op"
    assert fleet([*url, "keygen", "--out", str(prefix)]) == 0
    key = str(prefix.with_suffix(".key"))
    _kv(nats_js.url, "device-info", "dev-a", _info("dev-a", {"site": "x"}))
    # A semver pre-release: dpkg would order it after 1.5.0. The error says how to write it.
    (tmp_path / "debs").mkdir()
    deb, _, _ = build_deb(tmp_path / "debs", "1.5.0-rc.1")
    capsys.readouterr()
    assert fleet([*url, "publish-artifact", str(deb), "--key", key]) == 1
    err = capsys.readouterr().err
    assert "1.5.0-rc.1" in err and "1.5.0~rc.1" in err, err
    with pytest.raises(SystemExit) as exited:
        fleet([*url, "upgrade", "dev-a", "--version", "1.5.0-rc.1", "--key", key])
    assert exited.value.code == 2
    assert "1.5.0~rc.1" in capsys.readouterr().err
    assert _kv(nats_js.url, "agent-upgrade", "dev-a") is None


@pytest.mark.parametrize("window", ["0s", "25h"])
def test_a_confirm_window_outside_what_devices_accept_is_refused(
    window: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        fleet(["upgrade", "dev-a", "--version", "1.0.0", "--key", "k",
               "--confirm-window", window])
    assert exited.value.code == 2
    assert "confirm window" in capsys.readouterr().err


@pytest.mark.parametrize(("swap", "reason"), [
    ("same-size", "sha256"),  # other bytes, the size signed: the digest tells them apart
    ("another-deb", "larger than the signed size"),  # a real .deb of that version and arch
])
def test_the_device_refuses_an_artifact_replaced_after_the_request_was_signed(
    tmp_path: Path, nats_js: NatsServer, swap: str, reason: str
) -> None:
    """The store is written after `upgrade` signed: the device gets other bytes, never stages."""
    url = ["-s", nats_js.url]
    prefix = tmp_path / "op"
    assert fleet([*url, "keygen", "--out", str(prefix)]) == 0
    key = str(prefix.with_suffix(".key"))
    keys = tmp_path / "keys"
    keys.mkdir()
    keys.joinpath("op.pub").write_bytes(prefix.with_suffix(".pub").read_bytes())
    (tmp_path / "debs").mkdir()
    deb, sha, size = build_deb(tmp_path / "debs", "0.3.0")
    assert fleet([*url, "publish-artifact", str(deb), "--key", key]) == 0
    assert fleet([*url, "upgrade", "dev-1", "--arch", "amd64", "--version", "0.3.0",
                  "--key", key]) == 0
    (tmp_path / "evil").mkdir()
    other, _, _ = build_deb(tmp_path / "evil", "0.3.0",
                            extra_root={"etc/cron.d/evil": "* * * * * root id\n"})
    evil = b"y" * size if swap == "same-size" else other.read_bytes()
    assert evil != deb.read_bytes()
    cfg = parse_config(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[nats]\nservers = ["{nats_js.url}"]\n'
        f'[upgrade]\ntrusted_keys_dir = "{keys}"\n'
    )

    async def device() -> tuple[str | None, UpgradeStatus]:
        bus = Bus(cfg.nats, name="test-device")
        await bus.connect_once()
        try:
            await bus.object_upload("agent-artifacts", deb.name, io.BytesIO(evil))
            entry = await bus.kv_get("agent-upgrade", "dev-1")
            assert entry is not None
            req = verify_envelope(entry.value, load_trusted_keys(keys)[0]).request
            assert (req.artifact.sha256, req.artifact.size) == (sha, size), "the built file's"
            layout = Layout(root=tmp_path / "opt", journal_dir=tmp_path / "upgrade-journal",
                            state_dir=cfg.agent.state_dir)
            svc = UpgradeService(cfg, "dev-1", bus, arch="amd64", layout=layout)
            phase = await svc.handle(entry)
            st = await bus.kv_get("agent-upgrade-status", "dev-1")
            assert st is not None
            return phase, UpgradeStatus.model_validate_json(st.value)
        finally:
            await bus.close()

    phase, st = asyncio.run(device())
    assert phase == "failed" and st.phase == "failed", st
    assert st.reason and reason in st.reason, st.reason
    staging = Staging(cfg.agent.state_dir)
    assert not (staging.staged / Staging.READY).exists(), "never staged"
    assert not (staging.staged / Staging.ARTIFACT).exists()
