"""The agent side against a real nats-server: watch, check, download, stage, report."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from agent.config import Config, NatsSection, parse_config
from agent.service import Service
from agent.upgrade import UpgradeService
from agent.upgrade.keys import load_trusted_keys
from agent.upgrade.layout import Layout, Staging
from agent.upgrade.store import ReplayStore
from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import (
    Artifact,
    UpgradeRequest,
    UpgradeStatus,
    UpgradeSummary,
    utcnow,
)
from harmony_core.envelope import PAYLOAD_TYPE, pae
from tests.conftest import init_layout
from tests.logs.helpers import wait_async
from tests.natsserver import NatsServer
from tests.upgrade.helpers import build_deb, signed, write_pub

DEV = "dev-1"


def device_layout(tmp: Path, cfg: Config) -> Layout:
    """The root side's paths in `tmp`, watching the config's state dir (as a device does)."""
    return Layout(root=tmp / "opt", journal_dir=tmp / "upgrade-journal",
                  state_dir=cfg.agent.state_dir)


@dataclass
class Env:
    bus: Bus
    cfg: Config
    key: Ed25519PrivateKey
    deb: tuple[Path, str, int]
    tmp: Path

    def service(self) -> UpgradeService:
        return UpgradeService(self.cfg, DEV, self.bus, arch="amd64",
                              layout=device_layout(self.tmp, self.cfg))

    def request(self, **over: Any) -> UpgradeRequest:
        path, sha, size = self.deb
        now = utcnow()
        fields: dict[str, Any] = {
            "request_id": f"req-{now.timestamp()}", "device_id": DEV, "target_version": "99.0.0",
            "arch": "amd64",
            "artifact": Artifact(bucket="agent-artifacts", name=path.name, sha256=sha, size=size),
            "issued_at": now - timedelta(seconds=5), "expires_at": now + timedelta(hours=1),
        }
        fields.update(over)
        return UpgradeRequest.model_validate(fields)

    async def put(self, req: UpgradeRequest, key: Ed25519PrivateKey | None = None) -> KvEntry:
        await self.bus.kv_put("agent-upgrade", DEV, signed(req, key or self.key))
        entry = await self.bus.kv_get("agent-upgrade", DEV)
        assert entry is not None
        return entry

    async def status(self) -> UpgradeStatus:
        e = await self.bus.kv_get("agent-upgrade-status", DEV)
        assert e is not None
        return UpgradeStatus.model_validate_json(e.value)


@pytest.fixture
async def env(tmp_path: Path, nats_js: NatsServer) -> AsyncIterator[Env]:
    bus = Bus(NatsSection(servers=[nats_js.url]), name="test-upgrade")
    task = asyncio.create_task(bus.run())
    assert await bus.wait_connected(10)
    key = Ed25519PrivateKey.generate()
    write_pub(key, tmp_path / "keys")
    cfg = parse_config(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[nats]\nservers = ["{nats_js.url}"]\n'
        f'[upgrade]\ntrusted_keys_dir = "{tmp_path / "keys"}"\n'
    )
    (tmp_path / "debs").mkdir()
    deb = build_deb(tmp_path / "debs", "99.0.0", files={"VERSION": "99.0.0\n" * 20000})
    with open(deb[0], "rb") as f:
        await bus.object_upload("agent-artifacts", deb[0].name, f)
    try:
        yield Env(bus, cfg, key, deb, tmp_path)
    finally:
        await bus.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watch_download_and_stage_with_every_phase_in_kv(env: Env) -> None:
    svc = env.service()
    phases: list[tuple[str, int | None]] = []

    async def follow() -> None:
        async for e in env.bus.kv_watch("agent-upgrade-status", DEV):
            if e is not None and not e.deleted:
                st = UpgradeStatus.model_validate_json(e.value)
                phases.append((st.phase, st.progress))

    readied = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(follow())
        runner = tg.create_task(svc.run(readied.set))
        await asyncio.wait_for(readied.wait(), 5)
        req = env.request()
        await env.put(req)
        async with asyncio.timeout(20):
            while not phases or phases[-1][0] != "staged":
                await asyncio.sleep(0.05)
        runner.cancel()
        watcher.cancel()
    names = [p for p, _ in phases]
    assert names[0] == "received" and names[-2:] == ["verifying", "staged"], names
    assert ("downloading", 100) in phases
    staged = Staging(env.cfg.agent.state_dir).staged
    assert (staged / Staging.READY).exists()
    assert hashlib.sha256((staged / Staging.ARTIFACT).read_bytes()).hexdigest() == env.deb[1]
    assert json.loads((staged / Staging.ENVELOPE).read_bytes())["payloadType"].endswith("+json")
    s = svc.summary()
    assert (s.phase, s.request_id, s.target_version) == ("staged", req.request_id, "99.0.0")
    # The agent restarted (e.g. by the upgrade itself) sees the same revision: no new status.
    before = await env.status()
    entry = await env.bus.kv_get("agent-upgrade", DEV)
    assert entry is not None
    assert await env.service().handle(entry) is None
    assert (await env.status()).updated_at == before.updated_at


def _mirror_rolled_back(env: Env) -> dict[str, Any]:
    """Write the root side's rolled-back list (as after a rollback); no request changes."""
    base = Staging(env.cfg.agent.state_dir).base
    base.mkdir(parents=True, exist_ok=True)
    (base / Staging.ROLLED_BACK).write_text(json.dumps({"rolled_back": [env.deb[1]]}))
    return {}


REJECTIONS: list[tuple[str, Callable[[Env], dict[str, Any]], str]] = [
    ("other-device", lambda e: {"device_id": "dev-2"}, "is for device 'dev-2'"),
    ("other-arch", lambda e: {"arch": "arm64"}, "built for arm64"),
    ("expired", lambda e: {"issued_at": utcnow() - timedelta(hours=2),
                           "expires_at": utcnow() - timedelta(hours=1)}, "expired"),
    ("downgrade", lambda e: {"target_version": "0.0.1"}, "older than the running"),
    ("too-little-disk", lambda e: {"artifact": Artifact(
        bucket="agent-artifacts", name="big.deb", sha256="c" * 64, size=2**50)},
     "not enough free disk"),
    ("rolled-back", _mirror_rolled_back, "already rolled back"),
]


@pytest.mark.parametrize(("over", "reason"), [(o, r) for _, o, r in REJECTIONS],
                         ids=[i for i, _, _ in REJECTIONS])
async def test_refusals_are_reported_in_kv(
    env: Env, over: Callable[[Env], dict[str, Any]], reason: str
) -> None:
    entry = await env.put(env.request(**over(env)))
    assert await env.service().handle(entry) == "rejected"
    st = await env.status()
    assert st.phase == "rejected" and st.reason and reason in st.reason, st
    assert not (Staging(env.cfg.agent.state_dir).staged / Staging.READY).exists()


async def test_unknown_key_is_rejected(env: Env) -> None:
    entry = await env.put(env.request(), key=Ed25519PrivateKey.generate())
    assert await env.service().handle(entry) == "rejected"
    st = await env.status()
    assert st.reason and "no signature by a trusted key" in st.reason


def _sign_raw(body: bytes, key: Ed25519PrivateKey) -> bytes:
    """An envelope around exactly `body`: a payload the model itself would never write."""
    sig = key.sign(pae(PAYLOAD_TYPE, body))
    return json.dumps({
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode()}],
    }).encode()


async def test_a_naive_time_is_rejected_once_with_a_reason(env: Env) -> None:
    body = json.loads(env.request().model_dump_json())
    body["issued_at"] = body["issued_at"].removesuffix("Z")  # no timezone: which clock?
    await env.bus.kv_put("agent-upgrade", DEV, _sign_raw(json.dumps(body).encode(), env.key))
    entry = await env.bus.kv_get("agent-upgrade", DEV)
    assert entry is not None
    svc = env.service()
    assert await svc.handle(entry) == "rejected"
    st = await env.status()
    assert st.reason and "issued_at" in st.reason and "timezone" in st.reason, st.reason
    assert await svc.handle(entry) is None, "handled once, not again at every retry"


async def test_a_keys_dir_others_can_write_is_refused_with_the_reason(env: Env) -> None:
    keys = env.tmp / "keys"
    keys.chmod(0o777)
    assert await env.service().handle(await env.put(env.request())) == "rejected"
    st = await env.status()
    assert st.reason and str(keys) in st.reason, st.reason
    assert "writable by group or others" in st.reason and "chmod go-w" in st.reason


async def test_the_event_loop_runs_while_an_envelope_is_verified(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifying, released = threading.Event(), threading.Event()
    waited: list[bool] = []

    class Held:
        """A trusted key whose verification waits for a coroutine to run meanwhile."""

        def __init__(self, key: Ed25519PublicKey) -> None:
            self.key = key

        def verify(self, signature: bytes, data: bytes) -> None:
            verifying.set()
            waited.append(released.wait(10))  # True only if the event loop ran meanwhile
            self.key.verify(signature, data)

    def held(directory: Path) -> tuple[dict[str, Held], list[str]]:
        keys, problems = load_trusted_keys(directory)
        return {kid: Held(k) for kid, k in keys.items()}, problems

    monkeypatch.setattr("agent.upgrade.service.load_trusted_keys", held)

    async def release_once_verifying() -> None:
        while not verifying.is_set():
            await asyncio.sleep(0.01)
        released.set()

    entry = await env.put(env.request())
    async with asyncio.timeout(60), asyncio.TaskGroup() as tg:
        tg.create_task(release_once_verifying())
        phase = await env.service().handle(entry)
    assert waited == [True], "the verification blocked the event loop"
    assert phase == "staged"


async def test_replayed_request_id_is_rejected(env: Env) -> None:
    req = env.request()
    svc = env.service()
    assert await svc.handle(await env.put(req)) == "staged"
    # The operator (or an attacker) writes the same signed request again: a new revision.
    assert await svc.handle(await env.put(req)) == "rejected"
    st = await env.status()
    assert st.reason and "replay" in st.reason


async def test_artifact_that_does_not_match_the_signed_digest_fails(env: Env) -> None:
    _, _, size = env.deb
    other = io.BytesIO(b"y" * size)
    await env.bus.object_upload("agent-artifacts", "other.deb", other)
    req = env.request(artifact=Artifact(bucket="agent-artifacts", name="other.deb",
                                        sha256=env.deb[1], size=size))
    assert await env.service().handle(await env.put(req)) == "failed"
    st = await env.status()
    assert st.phase == "failed" and st.reason and "sha256" in st.reason
    staged = Staging(env.cfg.agent.state_dir)
    assert not (staged.staged / Staging.READY).exists()
    assert not (staged.spool / "artifact.part").exists()


async def test_missing_artifact_fails_with_a_reason(env: Env) -> None:
    req = env.request(artifact=Artifact(bucket="agent-artifacts", name="nope.deb",
                                        sha256="d" * 64, size=10))
    assert await env.service().handle(await env.put(req)) == "failed"
    assert (await env.status()).phase == "failed"


async def test_download_interrupted_by_a_restart_is_resumed(env: Env) -> None:
    req = env.request()
    entry = await env.put(req)
    store = ReplayStore(Staging(env.cfg.agent.state_dir).replay)
    store.remember(req.request_id, entry.revision, req.artifact.sha256, req.target_version)
    store.start(req.request_id)  # the agent was killed here
    assert await env.service().handle(entry) == "staged"


def test_it_is_a_daemon_service(tmp_path: Path) -> None:
    cfg = parse_config(f'[agent]\nstate_dir = "{tmp_path}"\n')
    # Typed as the protocol: mypy --strict proves it conforms.
    svc: Service[UpgradeSummary] = UpgradeService(
        cfg, DEV, Bus(cfg.nats), arch="amd64", layout=device_layout(tmp_path, cfg)
    )
    assert svc.name == "upgrade"
    assert svc.summary() == UpgradeSummary()
    svc.reconfigure(cfg)


async def test_watch_retries_until_the_buckets_exist(
    tmp_path: Path, nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Started before `harmony-fleet init`: the watch fails, retries, then acts on requests."""
    caplog.set_level(logging.WARNING, "agent.service")
    cfg = parse_config(
        f'[agent]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[nats]\nservers = ["{nats_server.url}"]\n'
        f'[upgrade]\ntrusted_keys_dir = "{tmp_path / "keys"}"\n'
    )
    bus = Bus(cfg.nats, name="test-upgrade-retry")
    bus_task = asyncio.create_task(bus.run())
    svc = UpgradeService(cfg, DEV, bus, arch="amd64", layout=device_layout(tmp_path, cfg))
    started = asyncio.Event()
    run = asyncio.create_task(svc.run(started.set))
    try:
        await asyncio.wait_for(started.wait(), 5)

        def retried() -> bool:
            return any(getattr(r, "event", None) == "upgrade-requests-retry"
                       for r in caplog.records)

        await wait_async(retried, 20, "a retry of the request watch")
        await asyncio.to_thread(init_layout, nats_server.url)
        await bus.kv_put("agent-upgrade", DEV, b"{not an envelope")

        async def rejected() -> bool:
            e = await bus.kv_get("agent-upgrade-status", DEV)
            return e is not None and UpgradeStatus.model_validate_json(e.value).phase == "rejected"

        await wait_async(rejected, 30, "the request handled once the buckets exist")
        assert svc.summary().phase == "rejected"
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await bus.close()
        bus_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bus_task
