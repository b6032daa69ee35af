"""The root side of an upgrade: admit again, extract, flip `current`, watch, commit or roll back.

Run through its process entry `agent.upgrade.root` (`python3 -m agent.upgrade.root`)
by `harmony-agent-upgrade.service` (path-activated when the agent stages a
request), with the code of the release that runs now, outside the agent's
cgroup. The boot-time part (`--recover`, `root.recover_on_boot`) decides with
`boot.plan_boot` what a journal found unfinished at boot needs.

Every state goes to the fsync'd journal *before* its side effects, then to the
status file (`Layout.status`), which the agent relays to
`agent-upgrade-status/<device_id>`: the switch itself has no network. The
journal is the truth. A staged request it cannot take (unsafe staging, an
invalid config, too little disk) is consumed and reported, never left to
start the switch again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.config import Config
from agent.deviceinfo.arch import debian_arch
from agent.durable import atomic_write
from agent.health import read_health
from agent.upgrade.admission import RequestRefusedError, admit
from agent.upgrade.checks import EXTRACT_FACTOR, MARGIN_BYTES, CheckContext, DiskSpace
from agent.upgrade.confirm import Judge, Observation
from agent.upgrade.handover import (
    read_staged_envelope,
    take_staged_artifact,
    write_rolled_back,
)
from agent.upgrade.journal import (
    JournalRecord,
    ensure_root_dir,
    load_history,
    load_journal,
    save_history,
    save_journal,
)
from agent.upgrade.keys import load_trusted_keys
from agent.upgrade.layout import Layout
from agent.upgrade.release import (
    current_version,
    extract_release,
    flip_current,
    is_complete,
    is_safe_release_dir,
    packaged_versions,
    prune_releases,
    remove_partials,
)
from agent.upgrade.states import (
    TERMINAL,
    Event,
    State,
    next_state,
    phase_of,
    resume_state,
)
from agent.upgrade.status import status_bytes
from agent.upgrade.units import UnitControl
from agent.version import __version__
from harmony_core.contracts import UpgradeRequest, UpgradeStatus, utcnow
from harmony_core.envelope import verify_envelope
from harmony_core.errors import UpgradeError, UpgradeRejectedError

__all__ = ["Switch", "disk_space"]

log = logging.getLogger("agent.upgrade.switch")

# How long the old version gets to come back after a rollback before we report anyway.
_OLD_BACK_TIMEOUT_S = 60.0


def disk_space(path: Path) -> DiskSpace:
    """The filesystem of `path` (or of its nearest existing parent) and its free bytes."""
    while not path.exists() and path != path.parent:
        path = path.parent
    vfs = os.statvfs(path)
    return DiskSpace(str(path), os.stat(path).st_dev, vfs.f_bavail * vfs.f_frsize)


class Switch:
    """One run of the root side: finish an unfinished journal, then take what is staged.

    `config_problem` says why the config could not be loaded (`cfg` is then
    what could be salvaged of it): a staged request is refused with it.
    """

    def __init__(
        self,
        layout: Layout,
        cfg: Config,
        device_id: str,
        unit: UnitControl,
        *,
        config_problem: str | None = None,
        arch: str | None = None,
        poll_s: float = 0.25,
        after_save: Callable[[State], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        disk: Callable[[Path], DiskSpace] = disk_space,
    ) -> None:
        self.layout = layout
        self.cfg = cfg
        self.device_id = device_id
        self.unit = unit
        self.config_problem = config_problem
        self.arch = arch or debian_arch()
        self.poll_s = poll_s
        self.after_save = after_save
        self.clock = clock
        self.disk = disk
        self.staging = layout.staging

    # --- journal and status -------------------------------------------------

    async def _save(self, rec: JournalRecord, state: State, **changes: Any) -> JournalRecord:
        rec = rec.model_copy(update={**changes, "state": state.value, "published": False})
        rec = save_journal(self.layout.journal, rec, self.clock())
        log.info(
            "upgrade %s: %s%s",
            rec.request_id,
            state.value,
            f" ({rec.reason})" if rec.reason and state in TERMINAL else "",
        )
        if self.after_save is not None:
            self.after_save(state)
        if (pause := self.layout.pause_at.get(state.value)) is not None:
            await asyncio.sleep(pause)
        if self._publish(rec) and state in TERMINAL:
            rec = rec.model_copy(update={"published": True})
            save_journal(self.layout.journal, rec, self.clock())
        return rec

    async def _to(self, rec: JournalRecord, event: Event, **changes: Any) -> JournalRecord:
        return await self._save(rec, next_state(State(rec.state), event), **changes)

    def _publish(self, rec: JournalRecord) -> bool:
        """Write the status file (root-owned, agent-readable); the agent relays it to NATS."""
        try:
            atomic_write(self.layout.status, status_bytes(self._status(rec)), mode=0o644)
        except OSError as e:
            log.warning("cannot write the upgrade status %s: %s", rec.state, e)
            return False
        return True

    def _status(self, rec: JournalRecord) -> UpgradeStatus:
        try:
            phase = phase_of(State(rec.state))
        except ValueError:
            phase = "failed"
        return UpgradeStatus(
            device_id=self.device_id,
            request_id=rec.request_id,
            from_version=rec.from_version,
            target_version=rec.to_version,
            phase=phase,
            reason=rec.reason,
            log_tail=rec.log_tail if phase == "rolled_back" else None,
            updated_at=rec.updated_at,
        )

    # --- entry point --------------------------------------------------------

    async def run(self) -> State | None:
        """Finish what the journal says is unfinished, then the staged request if any."""
        ensure_root_dir(self.layout.journal_dir, 0o711)
        last: State | None = None
        rec = load_journal(self.layout.journal)
        if rec is not None:
            rec = await self._resume(rec)
            last = _state(rec)
        try:
            envelope = read_staged_envelope(self.staging)
        except UpgradeRejectedError as e:
            return _state(await self._to(self._record(), Event.REFUSED, reason=str(e)))
        if envelope is None:
            return last
        if self.config_problem is not None:
            return _state(await self._refuse_for_config(envelope, self.config_problem))
        return _state(await self._upgrade(envelope))

    def _running(self) -> str:
        return current_version(self.layout.root) or __version__

    def _record(self, envelope: bytes | None = None) -> JournalRecord:
        return JournalRecord(
            state=State.VERIFYING.value,
            device_id=self.device_id,
            envelope=envelope.decode(errors="replace") if envelope is not None else None,
            from_version=self._running(),
        )

    async def _refuse_for_config(self, envelope: bytes, problem: str) -> JournalRecord:
        """Fail a staged request when the config is invalid: restarting the agent would stop it."""
        rec = self._record(envelope)
        keys, _ = load_trusted_keys(self.cfg.upgrade.trusted_keys_dir)
        with contextlib.suppress(UpgradeRejectedError):  # named in the report only if signed
            rec = rec.model_copy(update=self._about(verify_envelope(envelope, keys).request))
        reason = (
            f"{problem}; the running agent keeps its old config, but a restarted one would "
            "not start: fix the config, then send a new request"
        )
        return await self._to(rec, Event.ERROR, reason=reason)

    # --- the upgrade --------------------------------------------------------

    async def _upgrade(self, envelope: bytes) -> JournalRecord:
        rec = self._record(envelope)
        keys, problems = load_trusted_keys(self.cfg.upgrade.trusted_keys_dir)
        for p in problems:
            log.warning("trusted key skipped: %s", p)
        history = load_history(self.layout.history)
        ctx = CheckContext(
            device_id=self.device_id,
            arch=self.arch,
            running_version=rec.from_version or __version__,
            now=self.clock(),
            seen_request_ids=set(history.handled),
            rolled_back_digests=set(history.rolled_back),
        )
        try:
            req = admit(envelope, keys, ctx)
        except RequestRefusedError as e:
            rec = rec.model_copy(update=self._about(e.request))
            return await self._to(rec, Event.REFUSED, reason=str(e))
        except UpgradeRejectedError as e:
            return await self._to(rec, Event.REFUSED, reason=str(e))
        rec = await self._save(rec, State.VERIFYING, **self._about(req))
        artifact = self.layout.work / "artifact.deb"
        try:
            history.handled.append(req.request_id)
            save_history(self.layout.history, history)
            if (short := self._disk_problem(req.artifact.size)) is not None:
                return await self._to(rec, Event.ERROR, reason=short)
            ensure_root_dir(self.layout.work, 0o700)
            take_staged_artifact(self.staging, req.artifact.size, req.artifact.sha256, artifact)
        except UpgradeRejectedError as e:
            return await self._to(rec, Event.REFUSED, reason=str(e))
        except OSError as e:
            return await self._to(rec, Event.ERROR, reason=f"cannot take the staged artifact: {e}")
        rec = await self._to(rec, Event.VERIFIED)
        try:
            await asyncio.to_thread(
                extract_release,
                artifact,
                self.layout.releases,
                req.target_version,
                marker_text=f'{{"schema_version": 1, "version": "{req.target_version}", '
                f'"sha256": "{req.artifact.sha256}"}}\n',
                dpkg_deb=self.layout.dpkg_deb,
            )
        except (UpgradeError, OSError) as e:
            remove_partials(self.layout.releases, also=[req.target_version])
            return await self._to(rec, Event.ERROR, reason=f"cannot install the release: {e}")
        finally:
            with contextlib.suppress(OSError):
                artifact.unlink()
        rec = await self._to(rec, Event.EXTRACTED)
        return await self._switch_and_watch(rec)

    def _about(self, req: UpgradeRequest) -> dict[str, Any]:
        """The journal's fields that name the request."""
        window = req.confirm_window_s if req.confirm_window_s else self.cfg.upgrade.confirm_window
        return {
            "request_id": req.request_id,
            "to_version": req.target_version,
            "sha256": req.artifact.sha256,
            "confirm_window_s": window,
        }

    def _disk_problem(self, size: int) -> str | None:
        """Why the copy of the artifact and the release would not fit; None when they do."""
        try:
            work, releases = self.disk(self.layout.work), self.disk(self.layout.releases)
        except OSError as e:
            return f"cannot check the free disk space: {e}"
        needs: dict[int, int] = {}
        for fs, amount in ((work, size), (releases, EXTRACT_FACTOR * size)):
            needs[fs.dev] = needs.get(fs.dev, 0) + amount
        for fs in (work, releases):
            needed = needs.pop(fs.dev, None)
            if needed is not None and fs.free < needed + MARGIN_BYTES:
                return (
                    f"not enough free disk on {fs.path}: {fs.free // 2**20} MiB free, "
                    f"{(needed + MARGIN_BYTES) // 2**20} MiB needed; nothing was changed, "
                    "free some space and send a new request"
                )
        return None

    async def _switch_and_watch(self, rec: JournalRecord) -> JournalRecord:
        """From `switching`: flip `current`, restart, watch the window, then commit or roll back."""
        assert rec.to_version
        try:
            if not is_complete(self.layout.releases / rec.to_version):
                raise UpgradeError(f"release {rec.to_version} is missing or incomplete")
            flip_current(self.layout.root, rec.to_version)
        except (UpgradeError, OSError) as e:
            rec = await self._to(rec, Event.ERROR, reason=f"cannot switch: {e}")
            return await self._roll_back(rec)
        rec = await self._to(rec, Event.SWITCHED, restarted_at=self.clock())
        return await self._restart_and_watch(rec)

    async def _restart_and_watch(self, rec: JournalRecord) -> JournalRecord:
        target, restarted_at = rec.to_version, rec.restarted_at
        assert target and restarted_at
        try:
            before = self.unit.state()
            self.unit.restart()
        except Exception as e:
            rec = await self._to(rec, Event.ERROR, reason=f"cannot restart the agent: {e}")
            return await self._roll_back(rec)
        window = rec.confirm_window_s or self.cfg.upgrade.confirm_window
        judge = Judge(
            target,
            restarted_at,
            window,
            baseline_restarts=before.n_restarts,
            old_pid=before.main_pid,
        )
        while True:
            try:
                obs = Observation(
                    self.unit.state(), read_health(self.cfg.agent.health_file), self.clock()
                )
            except Exception as e:
                log.warning("cannot observe the agent: %s", e)
                await asyncio.sleep(self.poll_s)
                continue
            verdict = judge.observe(obs)
            if verdict is not None:
                break
            await asyncio.sleep(self.poll_s)
        if verdict.healthy:
            rec = await self._to(rec, Event.HEALTHY, reason=verdict.reason)
            return await self._commit(rec)
        rec = await self._to(
            rec, Event.UNHEALTHY, reason=verdict.reason, log_tail=self._log_tail(rec.restarted_at)
        )
        return await self._roll_back(rec)

    def _log_tail(self, since: datetime | None) -> list[str]:
        try:
            return self.unit.log_tail(since or self.clock())
        except Exception:
            return []

    async def _commit(self, rec: JournalRecord) -> JournalRecord:
        assert rec.to_version
        protect = packaged_versions(self.layout.dpkg_list, self.layout.releases)
        try:
            removed = prune_releases(
                self.layout.releases,
                self.cfg.upgrade.keep_releases,
                rec.to_version,
                rec.from_version,
                protect,
            )
            if removed:
                log.info("pruned releases %s", ", ".join(removed))
        except OSError as e:
            log.warning("pruning old releases failed: %s", e)
        return await self._to(rec, Event.PRUNED)

    async def _roll_back(self, rec: JournalRecord) -> JournalRecord:
        """From `rolling-back`: point `current` at the old release again and restart it."""
        old = rec.from_version
        if old and is_safe_release_dir(self.layout.releases / old):
            with contextlib.suppress(OSError):
                flip_current(self.layout.root, old)
        else:
            log.error("no release %s to roll back to; leaving current as it is", old)
        try:
            self.unit.restart()
            await self._wait_active(_OLD_BACK_TIMEOUT_S)
        except Exception as e:
            log.error("restarting the old version failed: %s", e)
        new = rec.to_version
        protect = packaged_versions(self.layout.dpkg_list, self.layout.releases) | {old or ""}
        if new and new not in protect and current_version(self.layout.root) != new:
            shutil.rmtree(self.layout.releases / new, ignore_errors=True)
        if rec.sha256:
            self._remember_rolled_back(rec.sha256)
        return await self._to(rec, Event.RESTORED)

    async def _wait_active(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.unit.state().active_state == "active":
                return
            await asyncio.sleep(self.poll_s)

    def _remember_rolled_back(self, sha256: str) -> None:
        history = load_history(self.layout.history)
        if sha256 not in history.rolled_back:
            history.rolled_back.append(sha256)
            save_history(self.layout.history, history)
        # A copy for the agent's own checks (it cannot read the journal).
        try:
            write_rolled_back(self.staging, _rolled_back_mirror(history.rolled_back))
        except OSError as e:
            log.warning("cannot tell the agent about the rollback: %s", e)

    # --- resuming -----------------------------------------------------------

    async def _resume(self, rec: JournalRecord) -> JournalRecord:
        """Finish a journal found unfinished, through the table (states.resume_state)."""
        to = resume_state(rec.state, resumes=rec.resumes, store_count=rec.store_count)
        if to is None:
            if not rec.published and self._publish(rec):
                rec = rec.model_copy(update={"published": True})
                save_journal(self.layout.journal, rec, self.clock())
            return rec
        log.warning("resuming the upgrade journal found in %s: %s", rec.state, to.value)
        rec = rec.model_copy(update={"resumes": rec.resumes + 1})
        if to is State.FAILED:
            rec = await self._save(rec, to, reason=(
                "the switch was interrupted before anything changed (power loss or killed); "
                "the old version kept running"))
            remove_partials(self.layout.releases, also=[rec.to_version] if rec.to_version else [])
            return rec
        if to is State.ROLLING_BACK:
            if rec.state == State.ROLLING_BACK.value:
                reason = rec.reason
            elif _state(rec) is None:
                reason = f"{rec.reason or 'the upgrade journal was unreadable'}; rolled back"
            else:
                reason = f"the upgrade was interrupted in {rec.state} too often; rolled back"
            rec = await self._save(rec, to, reason=reason)
            return await self._roll_back(rec)
        if to is State.COMMITTING:
            return await self._commit(await self._save(rec, to))
        if to is State.SWITCHING:
            return await self._switch_and_watch(await self._save(rec, to))
        # WATCHING: the new release runs (recovery flipped to it at boot); watch it again.
        new = rec.to_version
        if new is None or not is_complete(self.layout.releases / new):
            return await self._roll_back(
                await self._to(rec, Event.ERROR, reason="the new release is gone; rolled back")
            )
        rec = await self._save(rec, to, restarted_at=self.clock())
        try:
            if current_version(self.layout.root) != new:
                flip_current(self.layout.root, new)  # saved first, flipped after
        except OSError as e:
            rec = await self._to(rec, Event.ERROR, reason=f"cannot switch: {e}")
            return await self._roll_back(rec)
        return await self._restart_and_watch(rec)


def _rolled_back_mirror(digests: list[str]) -> bytes:
    return json.dumps({"schema_version": 1, "rolled_back": digests}).encode()


def _state(rec: JournalRecord) -> State | None:
    try:
        return State(rec.state)
    except ValueError:
        return None


if __name__ == "__main__":
    # Units installed by an older package run `-m agent.upgrade.switch`. Hand over to
    # the one entry in a fresh process (same pid, same flags), so this module is never
    # loaded twice and never imports its entry.
    import os
    import sys

    flags = [f for f, on in (("-s", sys.flags.no_user_site), ("-B", sys.flags.dont_write_bytecode))
             if on]
    os.execv(sys.executable, [sys.executable, *flags, "-m", "agent.upgrade.root", *sys.argv[1:]])
