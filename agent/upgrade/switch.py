"""The root side of an upgrade: verify again, extract, flip `current`, watch, commit or roll back.

Run by `harmony-agent-upgrade.service` (path-activated when the agent stages a
request) as `python3 -m agent.upgrade.switch`, with the code of the release that
runs now, outside the agent's cgroup; `--recover` is the boot-time part, run by
`harmony-agent-upgrade-recover.service` before the agent starts.

Every state goes to the fsync'd journal *before* its side effects, then to
`agent-upgrade-status/<device_id>`. The journal is the truth: NATS may be down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from agent.arch import debian_arch
from agent.config import Config
from agent.health import atomic_write, read_health
from agent.upgrade.checks import CheckContext, check_request
from agent.upgrade.confirm import Judge, Observation
from agent.upgrade.handover import read_staged_envelope, take_staged_artifact
from agent.upgrade.journal import (
    JournalRecord,
    ensure_private_dir,
    load_history,
    load_journal,
    save_history,
    save_journal,
)
from agent.upgrade.keys import load_trusted_keys
from agent.upgrade.layout import Layout, Staging
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
    Recovery,
    State,
    next_state,
    phase_of,
    recovery_for,
)
from agent.upgrade.units import UnitControl
from agent.version import __version__
from harmony_core.contracts import UpgradeStatus, utcnow
from harmony_core.envelope import verify_envelope
from harmony_core.errors import UpgradeError, UpgradeRejectedError

__all__ = ["StatusSink", "Switch", "recover_on_boot"]

log = logging.getLogger("agent.upgrade.switch")

# How long the old version gets to come back after a rollback before we report anyway.
_OLD_BACK_TIMEOUT_S = 60.0
_FINAL_PUBLISH_TIMEOUT_S = 30.0
_STEP_PUBLISH_TIMEOUT_S = 2.0


class StatusSink(Protocol):
    async def publish(self, status: UpgradeStatus, timeout: float) -> bool: ...


class Switch:
    """One run of the root side: finish an unfinished journal, then take what is staged."""

    def __init__(
        self,
        layout: Layout,
        cfg: Config,
        device_id: str,
        unit: UnitControl,
        sink: StatusSink,
        *,
        arch: str | None = None,
        poll_s: float = 0.25,
        after_save: Callable[[State], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.layout = layout
        self.cfg = cfg
        self.device_id = device_id
        self.unit = unit
        self.sink = sink
        self.arch = arch or debian_arch()
        self.poll_s = poll_s
        self.after_save = after_save
        self.clock = clock
        self.staging = Staging(cfg.agent.state_dir)

    # --- journal ------------------------------------------------------------

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
        final = state in TERMINAL
        ok = await self.sink.publish(
            self._status(rec), _FINAL_PUBLISH_TIMEOUT_S if final else _STEP_PUBLISH_TIMEOUT_S
        )
        if final and ok:
            rec = rec.model_copy(update={"published": True})
            save_journal(self.layout.journal, rec, self.clock())
        return rec

    async def _to(self, rec: JournalRecord, event: Event, **changes: Any) -> JournalRecord:
        return await self._save(rec, next_state(State(rec.state), event), **changes)

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
        ensure_private_dir(self.layout.journal_dir)
        last: State | None = None
        rec = load_journal(self.layout.journal)
        if rec is not None:
            rec = await self._resume(rec)
            last = _state(rec)
        envelope: bytes | None = None
        try:
            envelope = read_staged_envelope(self.staging)
        except UpgradeRejectedError as e:
            rec = JournalRecord(
                state=State.VERIFYING.value, device_id=self.device_id, from_version=self._running()
            )
            rec = await self._to(rec, Event.REFUSED, reason=str(e))
            return State.REJECTED
        if envelope is not None:
            rec = await self._upgrade(envelope)
            last = _state(rec)
        return last

    def _running(self) -> str:
        return current_version(self.layout.root) or __version__

    # --- the upgrade --------------------------------------------------------

    async def _upgrade(self, envelope: bytes) -> JournalRecord:
        running = self._running()
        rec = JournalRecord(
            state=State.VERIFYING.value,
            device_id=self.device_id,
            envelope=envelope.decode(errors="replace"),
            from_version=running,
        )
        keys, problems = load_trusted_keys(self.cfg.upgrade.trusted_keys_dir)
        for p in problems:
            log.warning("trusted key skipped: %s", p)
        try:
            v = verify_envelope(envelope, keys)
        except UpgradeRejectedError as e:
            return await self._to(rec, Event.REFUSED, reason=str(e))
        req = v.request
        window = req.confirm_window_s if req.confirm_window_s else self.cfg.upgrade.confirm_window
        rec = await self._save(
            rec,
            State.VERIFYING,
            request_id=req.request_id,
            to_version=req.target_version,
            sha256=req.artifact.sha256,
            confirm_window_s=window,
        )
        history = load_history(self.layout.history)
        ctx = CheckContext(
            device_id=self.device_id,
            arch=self.arch,
            running_version=running,
            now=self.clock(),
            seen_request_ids=set(history.handled),
            rolled_back_digests=set(history.rolled_back),
            retry_rolled_back=v.raw.get("retry_rolled_back") is True,
        )
        artifact = self.layout.work / "artifact.deb"
        try:
            if reasons := check_request(req, ctx):
                raise UpgradeRejectedError(reasons[0])
            history.handled.append(req.request_id)
            save_history(self.layout.history, history)
            ensure_private_dir(self.layout.work)
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
        # A copy for the agent's own checks (it cannot read the journal dir).
        try:
            atomic_write(
                self.staging.base / Staging.ROLLED_BACK, dump_json_list(history.rolled_back), 0o644
            )
        except OSError as e:
            log.warning("cannot tell the agent about the rollback: %s", e)

    # --- resuming -----------------------------------------------------------

    async def _resume(self, rec: JournalRecord) -> JournalRecord:
        action = recovery_for(rec.state, resumes=rec.resumes, store_count=rec.store_count)
        if action is Recovery.NOTHING:
            if not rec.published and await self.sink.publish(
                self._status(rec), _FINAL_PUBLISH_TIMEOUT_S
            ):
                rec = rec.model_copy(update={"published": True})
                save_journal(self.layout.journal, rec, self.clock())
            return rec
        log.warning("resuming the upgrade journal found in %s: %s", rec.state, action.value)
        rec = rec.model_copy(update={"resumes": rec.resumes + 1})
        if action is Recovery.ABANDON:
            remove_partials(self.layout.releases, also=[rec.to_version] if rec.to_version else [])
            return await self._save(
                rec,
                State.FAILED,
                reason=(
                    "the switch was interrupted before anything changed (power loss or killed); "
                    "the old version kept running"
                ),
            )
        if action is Recovery.FINISH_COMMIT:
            return await self._commit(rec)
        if action is Recovery.ROLL_BACK:
            reason = (
                rec.reason
                if rec.state == State.ROLLING_BACK.value
                else (f"the upgrade was interrupted in {rec.state} too often; rolled back")
            )
            rec = await self._save(rec, State.ROLLING_BACK, reason=reason)
            return await self._roll_back(rec)
        # RESUME: switching -> flip (again) and watch; watching -> restart and watch again.
        if rec.state == State.SWITCHING.value:
            rec = await self._save(rec, State.SWITCHING)
            return await self._switch_and_watch(rec)
        if rec.to_version is None or not is_complete(self.layout.releases / rec.to_version):
            rec = await self._save(
                rec, State.ROLLING_BACK, reason="the new release is gone; rolled back"
            )
            return await self._roll_back(rec)
        if current_version(self.layout.root) != rec.to_version:
            flip_current(self.layout.root, rec.to_version)
        rec = await self._save(rec, State.WATCHING, restarted_at=self.clock())
        return await self._restart_and_watch(rec)


def dump_json_list(items: list[str]) -> bytes:
    import json

    return json.dumps({"schema_version": 1, "rolled_back": items}).encode()


def _state(rec: JournalRecord) -> State | None:
    try:
        return State(rec.state)
    except ValueError:
        return None


def recover_on_boot(layout: Layout) -> bool:
    """The boot-time part (no NATS, fast): remove partial releases and make `current` safe.

    Returns True when the journal is unfinished or its end unpublished, i.e. the
    switch service must run to finish it (it watches, rolls back, reports).
    """
    remove_partials(layout.releases)
    rec = load_journal(layout.journal)
    if rec is None:
        return False
    action = recovery_for(rec.state, resumes=rec.resumes, store_count=rec.store_count)
    cur = current_version(layout.root)
    old, new = rec.from_version, rec.to_version
    if action is Recovery.ABANDON and new:
        remove_partials(layout.releases, also=[new])
    wants_new = action in (Recovery.RESUME, Recovery.FINISH_COMMIT)
    if wants_new and new and is_complete(layout.releases / new):
        target: str | None = new
    elif action is Recovery.NOTHING:
        target = None
    else:
        target = old
    # Boot the agent straight into the release the journal will end with.
    if target and cur != target and is_safe_release_dir(layout.releases / target):
        flip_current(layout.root, target)
    elif cur is None or not is_safe_release_dir(layout.releases / cur):
        # `current` dangles: fall back to the newest complete release there is.
        complete = sorted(p.name for p in layout.releases.glob("*") if is_complete(p))
        if complete:
            flip_current(layout.root, (old if old in complete else complete[-1]) or complete[-1])
    return action is not Recovery.NOTHING or not rec.published


if __name__ == "__main__":
    import sys

    from agent.upgrade.root import main

    sys.exit(main(sys.argv[1:]))
