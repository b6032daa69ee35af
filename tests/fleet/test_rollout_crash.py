"""A controller that dies at any save point, or right after any request it wrote, and a new
one that takes over: no device is asked twice, none is skipped (Mender's crash table).

The controller runs in this process so the crash can be placed exactly: `store.save`
or the request write raises once the k-th one is done, and the crash gives nothing
up (no lease released). The SIGKILL of a real `rollout run` process is in
test_rollout.py; this covers every point in between.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from harmony_core.contracts import Rollout, RolloutDevice
from harmony_fleet.rollout import controller, store
from harmony_fleet.rollout.controller import drive
from harmony_fleet.rollout.state import request_id
from tests.fleet.fakefleet import FakeDevice, fake_fleet
from tests.fleet.rollouts import Env

_SAVES = 6  # claim, wave 1 asking, asked, wave 2 asking, asked, completed (at least)
_WRITES = 6


class _Crash(BaseException):
    """The process died here."""


def _after(n: int, real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """`real`, raising _Crash right after its n-th call returned."""
    calls = 0

    async def crashing(*args: Any) -> Any:
        nonlocal calls
        got = await real(*args)
        calls += 1
        if calls == n:
            raise _Crash
        return got

    return crashing


async def _nothing(*_: object) -> None:
    return None


@pytest.mark.parametrize(
    ("point", "k"),
    [("save", k) for k in range(1, _SAVES + 1)] + [("write", k) for k in range(1, _WRITES + 1)],
)
async def test_a_crash_anywhere_then_a_new_controller(
    env: Env, monkeypatch: pytest.MonkeyPatch, point: str, k: int
) -> None:
    devs = [FakeDevice(f"dev-{i}", labels={"site": "x"}, delay_s=0.05) for i in range(6)]
    async with fake_fleet(env.bus, devs, env.keys):
        await env.create("r1", "-l", "site=x", "--waves", "34%,100%", "--bake", "200ms",
                         "--deadline", "20s")  # fmt: skip
        with monkeypatch.context() as m:
            if point == "save":
                m.setattr(store, "save", _after(k, store.save))
            else:
                write: Callable[[Any, Rollout, RolloutDevice], Awaitable[None]]
                write = controller._Run._write
                m.setattr(controller._Run, "_write", _after(k, write))
            m.setattr(controller, "_release", _nothing)  # a dead process gives nothing up
            with pytest.raises(_Crash):
                await drive(env.bus, env.n, "r1", env.key, trusted=env.keys, lease_ttl=1.5,
                            out=io.StringIO())  # fmt: skip
        out = io.StringIO()
        rc = await drive(env.bus, env.n, "r1", env.key, trusted=env.keys, out=out)
        assert rc == 0, out.getvalue()
    r = await env.record("r1")
    assert {d.outcome for w in r.waves for d in w.devices} == {"succeeded"}, out.getvalue()
    for d in devs:
        assert d.request_ids == [request_id(r, d.id)], (d, out.getvalue())
