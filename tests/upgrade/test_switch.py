"""The root switch against temp dirs, a supervised real agent and a real nats-server.

Covers commit, each kind of bad build rolling back, untrusted staging, unsafe
archives, and — Mender-style — a crash at every journal save point followed by
boot-time recovery, ending with a working agent and a true status in NATS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.upgrade.journal import load_journal
from agent.upgrade.layout import MARKER, Staging
from agent.upgrade.release import current_version, is_complete
from agent.upgrade.states import State
from agent.upgrade.switch import recover_on_boot
from harmony_core.bus import Bus
from harmony_core.contracts import UpgradeStatus
from tests.natsserver import NatsServer
from tests.upgrade.rig import DEVICE, Rig, nats_sink


@pytest.fixture
def rig(tmp_path: Path, nats_js: NatsServer) -> Iterator[Rig]:
    r = Rig(tmp_path, nats_js.url)
    r.sup.start()
    r.running("0.1.0")
    try:
        yield r
    finally:
        r.close()


async def _status(bus: Bus) -> UpgradeStatus:
    e = await bus.kv_get("agent-upgrade-status", DEVICE)
    assert e is not None, "no status in NATS"
    return UpgradeStatus.model_validate_json(e.value)


def _intact(rig: Rig, version: str) -> None:
    """`current` names a complete release of `version` and no half-made release is left."""
    assert current_version(rig.layout.root) == version
    assert (rig.layout.current / "agent" / "version.py").read_text().find(version) >= 0
    assert not list(rig.layout.releases.glob("*.tmp"))


async def test_good_build_commits_and_runs(rig: Rig) -> None:
    deb = rig.deb("0.2.0")
    req = rig.request("0.2.0", deb)
    rig.stage(req, deb[0])
    async with nats_sink(rig.url) as (sink, bus):
        assert await rig.switch(sink).run() is State.COMMITTED
        st = await _status(bus)
    assert (st.phase, st.from_version, st.target_version, st.request_id) == (
        "committed", "0.1.0", "0.2.0", req.request_id)
    _intact(rig, "0.2.0")
    assert is_complete(rig.layout.releases / "0.2.0")
    assert json.loads((rig.layout.releases / "0.2.0" / MARKER).read_text())["sha256"] == deb[1]
    rig.running("0.2.0")
    assert not (rig.staging.staged / Staging.READY).exists()


@pytest.mark.parametrize(
    ("variant", "reason"),
    [
        ("crash", "crashed|exited"),
        ("no-ready", "never sent READY"),
        ("no-nats", "acknowledged by NATS"),
    ],
)
async def test_bad_build_rolls_back_to_a_heartbeating_old_version(
    rig: Rig, variant: str, reason: str
) -> None:
    deb = rig.deb("0.2.0", variant)
    req = rig.request("0.2.0", deb)
    rig.stage(req, deb[0])
    async with nats_sink(rig.url) as (sink, bus):
        assert await rig.switch(sink).run() is State.ROLLED_BACK
        st = await _status(bus)
    assert st.phase == "rolled_back" and st.reason and re.search(reason, st.reason), st
    if variant == "crash":
        assert st.log_tail and any("crashing at start on purpose" in x for x in st.log_tail)
    _intact(rig, "0.1.0")
    assert not (rig.layout.releases / "0.2.0").exists(), "the bad release is removed"
    rig.running("0.1.0")
    # The same digest again is refused by the root side too, not only by the agent.
    again = rig.request("0.2.0", deb)
    rig.stage(again, deb[0])
    assert await rig.switch().run() is State.REJECTED
    rec = load_journal(rig.layout.journal)
    assert rec is not None and rec.reason and "already rolled back" in rec.reason
    mirror = json.loads((rig.staging.base / Staging.ROLLED_BACK).read_text())
    assert deb[1] in mirror["rolled_back"]


async def test_staged_artifact_changed_after_download_is_rejected(rig: Rig) -> None:
    deb = rig.deb("0.2.0")
    req = rig.request("0.2.0", deb)
    rig.stage(req, deb[0])
    art = rig.staging.staged / Staging.ARTIFACT
    data = bytearray(art.read_bytes())
    data[-10] ^= 0xFF
    art.write_bytes(bytes(data))
    assert await rig.switch().run() is State.REJECTED
    rec = load_journal(rig.layout.journal)
    assert rec is not None and rec.reason and "does not match the signed sha256" in rec.reason
    _intact(rig, "0.1.0")
    assert not (rig.layout.releases / "0.2.0").exists()


async def test_staged_symlink_is_not_followed(rig: Rig, tmp_path: Path) -> None:
    deb = rig.deb("0.2.0")
    req = rig.request("0.2.0", deb)
    rig.stage(req, deb[0])
    art = rig.staging.staged / Staging.ARTIFACT
    elsewhere = tmp_path / "elsewhere.deb"
    art.rename(elsewhere)
    art.symlink_to(elsewhere)
    assert await rig.switch().run() is State.REJECTED
    _intact(rig, "0.1.0")


# --- a crash at every save point, then boot-time recovery ---------------------


class _PowerLoss(BaseException):
    pass


def _crash_at(state: State) -> object:
    def hook(s: State) -> None:
        if s is state:
            raise _PowerLoss(s.value)
    return hook


CRASHES = [
    ("good", State.VERIFYING, "failed", "0.1.0"),
    ("good", State.EXTRACTING, "failed", "0.1.0"),
    ("good", State.SWITCHING, "committed", "0.2.0"),
    ("good", State.WATCHING, "committed", "0.2.0"),
    ("good", State.COMMITTING, "committed", "0.2.0"),
    ("good", State.COMMITTED, "committed", "0.2.0"),
    ("crash", State.WATCHING, "rolled_back", "0.1.0"),
    ("crash", State.ROLLING_BACK, "rolled_back", "0.1.0"),
    ("crash", State.ROLLED_BACK, "rolled_back", "0.1.0"),
]


@pytest.mark.parametrize(("variant", "at", "phase", "runs"), CRASHES,
                         ids=[f"{v}-{s.value}" for v, s, _, _ in CRASHES])
async def test_power_loss_at_each_save_point_recovers(
    rig: Rig, variant: str, at: State, phase: str, runs: str
) -> None:
    deb = rig.deb("0.2.0", variant)
    req = rig.request("0.2.0", deb)
    rig.stage(req, deb[0])
    async with nats_sink(rig.url) as (sink, bus):
        with pytest.raises(_PowerLoss):
            await rig.switch(sink, after_save=_crash_at(at)).run()  # type: ignore[arg-type]
        rec = load_journal(rig.layout.journal)
        assert rec is not None and rec.state == at.value
        # Power is lost: the agent dies with the machine; at boot, recovery runs first.
        rig.sup.stop()
        if at is State.EXTRACTING:
            (rig.layout.releases / "0.2.0.tmp").mkdir(exist_ok=True)  # half-written
        needs_switch = recover_on_boot(rig.layout)
        assert current_version(rig.layout.root) in ("0.1.0", "0.2.0")
        assert is_complete(rig.layout.current) or current_version(rig.layout.root) == "0.1.0"
        rig.sup.start()
        assert needs_switch, "an unfinished journal must start the switch service"
        final = await rig.switch(sink).run()
        st = await _status(bus)
    assert final is not None and st.phase == phase, (final, st)
    assert st.request_id == req.request_id
    _intact(rig, runs)
    rig.running(runs)
    rec = load_journal(rig.layout.journal)
    assert rec is not None and rec.published
