"""Least privilege, as an attacker with a real device's key (ADR-023 §5).

A device enrolled through the real callout gets its user JWT; with that login,
everything the agent needs works (through the bus, as the agent calls it, and a
real agent with logs and upgrades on runs without a single permission
violation), and each thing a stolen key might try is refused by nats-server:
the refusal is the server's "Permissions Violation" naming the subject, and the
operator sees that nothing changed.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from harmony_core import nkey
from harmony_core.bus import Bus, NkeyLogin
from harmony_core.identity import LoginClaim
from harmony_core.permissions import inbox_prefix
from harmony_core.settings import NatsSection
from tests.agentproc import AgentProcess
from tests.auth.fleet import AuthFleet, device_config
from tests.natsserver import wait_for

ME = "dev-me"
OTHER = "dev-other"
KV_BUCKETS = ("device-info", "device-heartbeat", "agent-upgrade-status", "agent-upgrade")


@pytest.fixture
def enrolled(auth_fleet: AuthFleet) -> tuple[AuthFleet, str]:
    """The fleet with two enrolled devices (ME and OTHER, each with data); ME's seed."""
    token = auth_fleet.token("--auto-approve", "--reusable")
    seeds = {}
    for dev in (ME, OTHER):
        seeds[dev] = nkey.new_seed()
        asyncio.run(_as_device(auth_fleet.url, seeds[dev], dev, token, _beat(dev)))

    async def seed_data(bus: Bus) -> None:
        for b in KV_BUCKETS:
            await bus.kv_put(b, OTHER, b'{"v": "other"}')
            await bus.kv_put(b, ME, b'{"v": "mine"}')
        await bus.object_upload("agent-artifacts", "pkg.deb", io.BytesIO(b"x" * 300_000))

    auth_fleet.run(seed_data)
    return auth_fleet, seeds[ME]


def _beat(device: str) -> Any:
    async def beat(bus: Bus) -> None:
        await bus.kv_put("device-heartbeat", device, b"{}")

    return beat


def _device_bus(url: str, seed: str, device: str, token: str | None = None) -> Bus:
    claim = LoginClaim(device_id=device, token=token).model_dump_json(exclude_none=True)
    return Bus(
        NatsSection(servers=[url]),
        name=f"attacker {device}",
        login=lambda: NkeyLogin(seed=seed, token=lambda _nonce: claim),
        inbox_prefix=inbox_prefix(device),
    )


async def _as_device(url: str, seed: str, device: str, token: str | None, fn: Any) -> Any:
    bus = _device_bus(url, seed, device, token)
    await bus.connect_once()
    try:
        return await fn(bus)
    finally:
        await bus.close()


async def _first(it: AsyncIterator[Any]) -> Any:
    async for x in it:
        return x
    return None


def test_everything_the_agent_needs_works(enrolled: tuple[AuthFleet, str]) -> None:
    fleet, seed = enrolled

    async def needs(bus: Bus) -> None:
        # DeviceInfo: read own key, compare-and-set it
        e = await bus.kv_get("device-info", ME)
        assert e is not None
        await bus.kv_update("device-info", ME, b'{"v": "again"}', e.revision)
        await bus.kv_put("device-heartbeat", ME, b'{"seq": 1}')
        # upgrade status: read, compare-and-set, watch
        s = await bus.kv_get("agent-upgrade-status", ME)
        assert s is not None
        await bus.kv_update("agent-upgrade-status", ME, b'{"v": 2}', s.revision)
        assert await bus.kv_get("agent-upgrade", ME) is not None
        for bucket in ("agent-upgrade", "agent-upgrade-status"):
            watch = cast(AsyncGenerator[Any, None], bus.kv_watch(bucket, ME))
            first = await asyncio.wait_for(_first(watch), 10)
            assert first is not None and first.key == ME
            await watch.aclose()
        # logs, with JetStream's ack
        ack = await bus.publish(f"logs.{ME}", b'{"records": []}', stream="DEVICE_LOGS")
        assert ack.seq > 0
        # the artifact, read-only
        buf = io.BytesIO()
        assert await bus.object_download("agent-artifacts", "pkg.deb", buf) == 300_000

    asyncio.run(_as_device(fleet.url, seed, ME, None, needs))
    assert fleet.kv("device-info", ME) == {"v": "again"}


def test_a_real_agent_runs_without_a_permission_violation(
    auth_fleet: AuthFleet, tmp_path: Path
) -> None:
    token = auth_fleet.token("--auto-approve")
    cfg = device_config(auth_fleet, tmp_path / "dev", "dev-real", token=token, logs=True)
    cfg.write_text(
        cfg.read_text().replace("[upgrade]\nenabled = false", "[upgrade]\nenabled = true")
    )
    agent = AgentProcess(cfg)
    try:
        wait_for(lambda: auth_fleet.kv("device-heartbeat", "dev-real"), 30, "heartbeat", 0.2)
        wait_for(lambda: "logs shipping" in agent.last_status(), 20, "logs shipping")
        # an upgrade request it must read through its watch: unsigned, so it says rejected
        auth_fleet.run(lambda b: b.kv_put("agent-upgrade", "dev-real", b'{"payload": "x"}'))
        wait_for(
            lambda: (
                (auth_fleet.kv("agent-upgrade-status", "dev-real") or {}).get("phase") == "rejected"
            ),
            30,
            "the agent's upgrade status",
            0.2,
        )
    finally:
        agent.stop()
    log = auth_fleet.server.log.read_text()
    assert "Violation" not in log, [ln for ln in log.splitlines() if "Violation" in ln]


# --- the attacker's matrix --------------------------------------------------------------------


def _other_kv() -> list[tuple[str, str, bytes, dict[str, str] | None]]:
    out: list[tuple[str, str, bytes, dict[str, str] | None]] = []
    for b in KV_BUCKETS:
        out.append((f"put {b}/{OTHER}", f"$KV.{b}.{OTHER}", b"{}", None))
        out.append((f"read {b}/{OTHER}", f"$JS.API.DIRECT.GET.KV_{b}.$KV.{b}.{OTHER}", b"", None))
        out.append(
            (
                f"read {b}/{OTHER} by body",
                f"$JS.API.DIRECT.GET.KV_{b}",
                json.dumps({"last_by_subj": f"$KV.{b}.{OTHER}"}).encode(),
                None,
            )
        )
        out.append(
            (
                f"watch {b}/{OTHER}",
                f"$JS.API.CONSUMER.CREATE.KV_{b}.w1.$KV.{b}.{OTHER}",
                b"{}",
                None,
            )
        )
        out.append((f"watch all of {b}", f"$JS.API.CONSUMER.CREATE.KV_{b}", b"{}", None))
    return out


REFUSED_PUBLISH: list[tuple[str, str, bytes, dict[str, str] | None]] = [
    *_other_kv(),
    ("write own agent-upgrade request", f"$KV.agent-upgrade.{ME}", b"{}", None),
    ("publish logs of another", f"logs.{OTHER}", b"{}", None),
    (
        "STREAM.MSG.GET",
        "$JS.API.STREAM.MSG.GET.KV_device-info",
        json.dumps({"last_by_subj": f"$KV.device-info.{OTHER}"}).encode(),
        None,
    ),
    ("stream create", "$JS.API.STREAM.CREATE.EVIL", b'{"name":"EVIL","subjects":["evil"]}', None),
    ("stream delete", "$JS.API.STREAM.DELETE.KV_device-info", b"", None),
    ("stream purge", "$JS.API.STREAM.PURGE.DEVICE_LOGS", b"", None),
    ("stream update", "$JS.API.STREAM.UPDATE.KV_device-heartbeat", b"{}", None),
    (
        "stream info (lists every key)",
        "$JS.API.STREAM.INFO.KV_device-info",
        b'{"subjects_filter": ">"}',
        None,
    ),
    ("stream names", "$JS.API.STREAM.NAMES", b"", None),
    ("consumer delete", "$JS.API.CONSUMER.DELETE.KV_agent-upgrade.x", b"", None),
    (
        "KV purge another's key",
        f"$KV.device-info.{OTHER}",
        b"",
        {"KV-Operation": "PURGE", "Nats-Rollup": "sub"},
    ),
    ("artifact chunk write", "$O.agent-artifacts.C.evil", b"x", None),
    ("artifact meta write", "$O.agent-artifacts.M.cGtnLmRlYg==", b"{}", None),
    ("artifact store purge", "$JS.API.STREAM.PURGE.OBJ_agent-artifacts", b"", None),
    ("artifact store delete", "$JS.API.STREAM.DELETE.OBJ_agent-artifacts", b"", None),
    (
        "read device-identity",
        "$JS.API.DIRECT.GET.KV_device-identity.$KV.device-identity.>",
        b"",
        None,
    ),
    (
        "read device-identity by body",
        "$JS.API.DIRECT.GET.KV_device-identity",
        b'{"last_by_subj": "$KV.device-identity.tokens.x"}',
        None,
    ),
    ("watch device-identity", "$JS.API.CONSUMER.CREATE.KV_device-identity", b"{}", None),
    ("write device-identity", "$KV.device-identity.tokens.evil", b"{}", None),
    ("answer auth requests", "$SYS.REQ.USER.AUTH", b"x", None),
]

REFUSED_SUBSCRIBE = [
    "_INBOX.>",
    f"_INBOX_{OTHER}.>",
    f"logs.{OTHER}",
    "$KV.device-info.>",
    ">",
    "$SYS.REQ.USER.AUTH",
]


async def _attack(url: str, seed: str) -> tuple[list[str], list[str], list[str]]:
    """(errors the server sent, publishes not refused, subscriptions not refused)."""
    import nats

    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    claim = LoginClaim(device_id=ME).model_dump_json()
    nc = await nats.connect(
        url,
        nkeys_seed_str=seed,
        token=claim,
        inbox_prefix=inbox_prefix(ME),
        error_cb=on_error,
        allow_reconnect=False,
    )
    try:

        def refused(kind: str, subject: str) -> bool:
            return any(
                f'permissions violation for {kind} to "{subject.lower()}"' in e for e in errors
            )

        for _, subject, data, headers in REFUSED_PUBLISH:
            await nc.publish(subject, data, reply=nc.new_inbox(), headers=headers)
        # one it may do, to show the check tells them apart
        await nc.publish(f"$KV.device-heartbeat.{ME}", b"{}", reply=nc.new_inbox())
        for subject in REFUSED_SUBSCRIBE:
            await nc.subscribe(subject)
        await nc.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        missing_pub = [s for _, s, _, _ in REFUSED_PUBLISH]
        missing_sub = list(REFUSED_SUBSCRIBE)
        while loop.time() < deadline and (missing_pub or missing_sub):
            await asyncio.sleep(0.1)
            missing_pub = [s for s in missing_pub if not refused("publish", s)]
            missing_sub = [s for s in missing_sub if not refused("subscription", s)]
        assert not refused("publish", f"$KV.device-heartbeat.{ME}")
        return errors, missing_pub, missing_sub
    finally:
        await nc.close()


def test_each_attack_is_refused(enrolled: tuple[AuthFleet, str]) -> None:
    fleet, seed = enrolled
    _, not_refused_pub, not_refused_sub = asyncio.run(_attack(fleet.url, seed))
    assert not_refused_pub == [], "published without a violation"
    assert not_refused_sub == [], "subscribed without a violation"
    # and the operator sees nothing changed
    for b in KV_BUCKETS:
        assert fleet.kv(b, OTHER) == {"v": "other"}, b

    async def intact(bus: Bus) -> None:
        buf = io.BytesIO()
        assert await bus.object_download("agent-artifacts", "pkg.deb", buf) == 300_000
        assert await bus.kv_entries("device-identity")

    fleet.run(intact)


def test_a_watch_of_its_own_key_cannot_filter_another(enrolled: tuple[AuthFleet, str]) -> None:
    """The subject's filter is checked against the body's: own key in one, another's in the
    other is refused by JetStream itself."""
    fleet, seed = enrolled

    async def sneaky(bus: Bus) -> dict[str, Any]:
        nc = bus._nc
        body = {
            "stream_name": "KV_agent-upgrade",
            "config": {
                "name": "w2",
                "filter_subject": f"$KV.agent-upgrade.{OTHER}",
                "deliver_subject": nc.new_inbox(),
                "ack_policy": "none",
            },
        }
        msg = await nc.request(
            f"$JS.API.CONSUMER.CREATE.KV_agent-upgrade.w2.$KV.agent-upgrade.{ME}",
            json.dumps(body).encode(),
            timeout=5,
        )
        out: dict[str, Any] = json.loads(msg.data)
        return out

    resp = asyncio.run(_as_device(fleet.url, seed, ME, None, sneaky))
    assert "error" in resp, resp
