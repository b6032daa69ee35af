"""The root switch against temp dirs, a supervised real agent and a real nats-server.

Covers commit, each kind of bad build rolling back, untrusted staging, unsafe
archives, and — Mender-style — a crash at every journal save point followed by
boot-time recovery, ending with a working agent and a true status in NATS (the
switch writes its status file; the supervised agent relays it).
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.upgrade.checks import DiskSpace
from agent.upgrade.handover import read_staged_envelope
from agent.upgrade.journal import load_history, load_journal
from agent.upgrade.layout import MARKER, Staging
from agent.upgrade.release import current_version, flip_current, is_complete
from agent.upgrade.root import recover_on_boot
from agent.upgrade.states import State
from harmony_core.bus import Bus
from harmony_core.contracts import UpgradeStatus
from tests.logs.helpers import wait_async
from tests.natsserver import NatsServer
from tests.upgrade.rig import DEVICE, Rig, status_bus


@pytest.fixture
def rig(tmp_path: Path, nats_js: NatsServer) -> Iterator[Rig]:
    r = Rig(tmp_path, nats_js.url)
    r.sup.start()
    r.running("0.1.0")
    try:
        yield r
    finally:
        r.close()


async def _status(bus: Bus, request_id: str | None = None) -> UpgradeStatus:
    """The final status of `request_id` once the agent relayed it to NATS."""
    final = {"committed", "rolled_back", "failed", "rejected"}

    async def get() -> UpgradeStatus | None:
        e = await bus.kv_get("agent-upgrade-status", DEVICE)
        st = UpgradeStatus.model_validate_json(e.value) if e is not None else None
        ok = st is not None and st.phase in final and (
            request_id is None or st.request_id == request_id)
        return st if ok else None

    await wait_async(get, 30, f"the final status of {request_id} relayed to NATS")
    st = await get()
    assert st is not None
    return st


def _intact(rig: Rig, version: str) -> None:
    """`current` names a complete release of `version` and no half-made release is left."""
    assert current_version(rig.layout.root) == version
    assert (rig.layout.current / "agent" / "version.py").read_text().find(version) >= 0
    assert not list(rig.layout.releases.glob("*.tmp"))


async def test_good_build_commits_and_runs(rig: Rig) -> None:
    deb = rig.deb("0.2.0")
    req = rig.request("0.2.0", deb)
    rig.stage(req, deb[0])
    async with status_bus(rig.url) as bus:
        assert await rig.switch().run() is State.COMMITTED
        st = await _status(bus, req.request_id)
    assert (st.phase, st.from_version, st.target_version, st.request_id) == (
        "committed", "0.1.0", "0.2.0", req.request_id)
    _intact(rig, "0.2.0")
    assert is_complete(rig.layout.releases / "0.2.0")
    assert json.loads((rig.layout.releases / "0.2.0" / MARKER).read_text())["sha256"] == deb[1]
    rig.running("0.2.0")
    assert not (rig.staging.staged / Staging.READY).exists()
    # The agent reads the status file it relays, never the journal.
    modes = [stat.S_IMODE(p.stat().st_mode) for p in
             (rig.layout.journal_dir, rig.layout.status, rig.layout.journal, rig.layout.history)]
    assert modes == [0o711, 0o644, 0o600, 0o600]


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
    async with status_bus(rig.url) as bus:
        assert await rig.switch().run() is State.ROLLED_BACK
        st = await _status(bus, req.request_id)
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


def _crash_at(state: State) -> Callable[[State], None]:
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
    async with status_bus(rig.url) as bus:
        with pytest.raises(_PowerLoss):
            await rig.switch(after_save=_crash_at(at)).run()
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
        final = await rig.switch().run()
        st = await _status(bus, req.request_id)
    assert final is not None and st.phase == phase, (final, st)
    assert st.request_id == req.request_id
    _intact(rig, runs)
    rig.running(runs)
    rec = load_journal(rig.layout.journal)
    assert rec is not None and rec.published


# --- issue 9: what the root side must never do ----------------------------------


def _status_file(rig: Rig) -> UpgradeStatus:
    return UpgradeStatus.model_validate_json(rig.layout.status.read_bytes())


def _ready_dir(rig: Rig, tmp: Path) -> None:
    ready = rig.staging.staged / Staging.READY
    ready.unlink()
    (ready / "sub").mkdir(parents=True)
    (ready / "sub" / "x").write_text("x")


def _ready_link(rig: Rig, tmp: Path) -> None:
    ready = rig.staging.staged / Staging.READY
    ready.unlink()
    (tmp / "elsewhere").write_text("1\n")
    ready.symlink_to(tmp / "elsewhere")


def _ready_fifo(rig: Rig, tmp: Path) -> None:
    ready = rig.staging.staged / Staging.READY
    ready.unlink()
    os.mkfifo(ready)


def _staged_link(rig: Rig, tmp: Path) -> None:
    real = tmp / "decoy"
    rig.staging.staged.rename(real)
    rig.staging.staged.symlink_to(real)


def _upgrade_link(rig: Rig, tmp: Path) -> None:
    real = tmp / "decoy"
    rig.staging.base.rename(real)
    rig.staging.base.symlink_to(real)


UNSAFE_STAGING = [
    (_ready_dir, "ready is not a regular file"),
    (_ready_link, "ready is not a regular file"),
    (_ready_fifo, "ready is not a regular file"),
    (_staged_link, "staged is a symlink"),
    (_upgrade_link, "upgrade is a symlink"),
]


@pytest.mark.parametrize(("make", "reason"), UNSAFE_STAGING,
                         ids=[m.__name__.strip("_") for m, _ in UNSAFE_STAGING])
async def test_unsafe_staging_is_consumed_and_refused_once(
    rig: Rig, tmp_path: Path, make: Callable[[Rig, Path], None], reason: str
) -> None:
    """Finding 2: left in place, the path unit would start the switch again and again."""
    deb = rig.deb("0.2.0")
    rig.stage(rig.request("0.2.0", deb), deb[0])
    make(rig, tmp_path)
    assert await rig.switch().run() is State.REJECTED
    st = _status_file(rig)
    assert st.phase == "rejected" and st.reason and re.search(reason, st.reason), st
    # Nothing left that fires the path unit, and nothing done through a link.
    assert not os.path.lexists(rig.staging.staged / Staging.READY)
    assert not rig.staging.staged.is_symlink() and not rig.staging.base.is_symlink()
    assert read_staged_envelope(rig.staging) is None
    if (tmp_path / "decoy").exists():
        assert (tmp_path / "decoy").is_dir()
    _intact(rig, "0.1.0")


async def test_too_little_disk_fails_before_anything_changes(rig: Rig) -> None:
    """Finding 13: the root side checks free space itself before it copies and extracts."""
    deb = rig.deb("0.2.0")
    req = rig.request("0.2.0", deb)
    rig.stage(req, deb[0])

    def full(path: Path) -> DiskSpace:
        return DiskSpace(str(path), 7, 10 * 2**20)

    assert await rig.switch(disk=full).run() is State.FAILED
    st = _status_file(rig)
    assert st.phase == "failed" and st.request_id == req.request_id
    assert st.reason and "not enough free disk" in st.reason, st
    _intact(rig, "0.1.0")
    assert not (rig.layout.releases / "0.2.0").exists()
    assert not (rig.layout.work / "artifact.deb").exists()
    assert not (rig.staging.staged / Staging.READY).exists()


async def test_the_rollback_mirror_is_never_written_through_a_link(
    rig: Rig, tmp_path: Path
) -> None:
    """Finding 4: `upgrade/` is the agent's; swapped for a link, root must not write there."""
    victim = tmp_path / "victim"
    victim.mkdir()
    deb = rig.deb("0.2.0", "crash")
    rig.stage(rig.request("0.2.0", deb), deb[0])

    def swap(state: State) -> None:
        if state is State.ROLLING_BACK:
            rig.staging.base.rename(tmp_path / "upgrade-aside")
            rig.staging.base.symlink_to(victim)

    assert await rig.switch(after_save=swap).run() is State.ROLLED_BACK
    assert not [p.name for p in victim.iterdir() if "rolled-back" in p.name]
    assert deb[1] in load_history(rig.layout.history).rolled_back  # root's own record stands
    assert (tmp_path / "upgrade-aside").is_dir()
    _intact(rig, "0.1.0")


async def test_resuming_the_watch_saves_before_it_flips(rig: Rig) -> None:
    """The journal names the step under way before `current` changes, also when resuming."""
    deb = rig.deb("0.2.0")
    req = rig.request("0.2.0", deb)
    rig.stage(req, deb[0])
    with pytest.raises(_PowerLoss):
        await rig.switch(after_save=_crash_at(State.WATCHING)).run()
    # Killed right after saving `watching` (the flip done); `current` points back at 0.1.0.
    flip_current(rig.layout.root, "0.1.0")
    seen: list[tuple[State, str | None]] = []
    final = await rig.switch(
        after_save=lambda s: seen.append((s, current_version(rig.layout.root)))).run()
    assert seen[0] == (State.WATCHING, "0.1.0"), seen
    assert final is State.COMMITTED
    _intact(rig, "0.2.0")
    rec = load_journal(rig.layout.journal)
    assert rec is not None and rec.resumes == 1
