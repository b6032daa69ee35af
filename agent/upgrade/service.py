"""The agent side of a self-upgrade (unprivileged): watch, check, download, stage, report.

It never raises for upgrade trouble and never stops the agent: every refusal or
failure becomes an UpgradeStatus with a reason. Once staged, the root-owned
switch takes over; it has no network, so it writes each later phase to its
status file and this service relays it to the status key (whichever release
runs: the new one, or the old one after a rollback). It follows the status
key to keep `summary()` true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from datetime import datetime

from pydantic import ValidationError

from agent.config import Config
from agent.deviceinfo.arch import debian_arch
from agent.durable import read_bounded
from agent.service import retrying
from agent.upgrade.admission import RequestRefusedError, admit
from agent.upgrade.checks import CheckContext, DiskSpace
from agent.upgrade.download import download_artifact
from agent.upgrade.handover import clear_staged, stage
from agent.upgrade.keys import load_trusted_keys
from agent.upgrade.layout import Layout, Staging
from agent.upgrade.status import status_bytes
from agent.upgrade.store import ReplayStore, load_json
from agent.version import __version__
from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import (
    UpgradePhase,
    UpgradeRequest,
    UpgradeStatus,
    UpgradeSummary,
    utcnow,
)
from harmony_core.errors import (
    BusError,
    BusUnavailableError,
    ObjectMissingError,
    RevisionMismatchError,
    UpgradeError,
    UpgradeRejectedError,
)

__all__ = ["UpgradeService"]

log = logging.getLogger("agent.upgrade")

_DOWNLOAD_ATTEMPTS = 3
# The root side's status file: one UpgradeStatus (log_tail is 20 lines of 500 chars).
_MAX_ROOT_STATUS = 256 * 1024


class UpgradeService:
    """The daemon's `upgrade` service (agent.service.Service): watch, admit, download, stage."""

    name = "upgrade"

    def __init__(
        self,
        cfg: Config,
        device_id: str,
        bus: Bus,
        *,
        arch: str | None = None,
        layout: Layout | None = None,
        clock: Callable[[], datetime] = utcnow,
        relay_poll_s: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.bus = bus
        self.arch = arch or debian_arch()
        self.layout = layout or Layout.from_env()
        self.clock = clock
        self.relay_poll_s = relay_poll_s
        self.staging = Staging(cfg.agent.state_dir)
        self._store: ReplayStore | None = None
        self._summary = UpgradeSummary()
        self._relayed: bytes | None = None
        self._relay_problem: str | None = None

    # --- faces ----------------------------------------------------------------

    def summary(self) -> UpgradeSummary:
        return self._summary.model_copy()

    def reconfigure(self, cfg: Config) -> None:
        # trusted_keys_dir and confirm_window are read per request; NATS names need a restart.
        self.cfg = cfg.model_copy(update={"nats": self.cfg.nats})

    async def run(self, started: Callable[[], None]) -> None:
        """Watch requests and status until cancelled; `started()` at once (not gated on NATS)."""
        started()
        if (problem := self._handover_problem()) is not None:
            log.warning("%s", problem, extra={"event": "upgrade-unavailable"})
        wait = self.bus.wait_connected
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                retrying("upgrade-requests", self._watch_requests, before=wait),
                name="upgrade-requests",
            )
            tg.create_task(
                retrying("upgrade-status", self._watch_status, before=wait),
                name="upgrade-status",
            )
            tg.create_task(
                retrying("upgrade-relay", self._relay_root_status, before=wait),
                name="upgrade-relay",
            )

    # --- loops ----------------------------------------------------------------

    async def _watch_requests(self) -> None:
        bucket = self.cfg.nats.upgrade_bucket
        async for entry in self.bus.kv_watch(bucket, self.device_id):
            if entry is None or entry.deleted:
                continue
            await self.handle(entry)
        raise BusUnavailableError(f"the watch of {bucket}/{self.device_id} ended")

    async def _watch_status(self) -> None:
        bucket = self.cfg.nats.upgrade_status_bucket
        async for entry in self.bus.kv_watch(bucket, self.device_id):
            if entry is None or entry.deleted:
                continue
            try:
                st = UpgradeStatus.model_validate_json(entry.value)
            except (ValidationError, ValueError):
                continue
            self._summary = UpgradeSummary(
                phase=st.phase,
                request_id=st.request_id,
                target_version=st.target_version,
                reason=st.reason,
                updated_at=st.updated_at,
            )
            if st.phase == "rolled_back" and st.request_id:
                store = self._replay()
                rec = store.seen.get(st.request_id)
                if rec and isinstance(rec.get("sha256"), str):
                    store.mark_rolled_back(rec["sha256"])
        raise BusUnavailableError(f"the watch of {bucket}/{self.device_id} ended")

    async def _relay_root_status(self) -> None:
        """Publish the root side's status file whenever it changes."""
        while True:
            data = self._read_root_status()
            if data is not None and data != self._relayed and await self._relay(data):
                self._relayed = data
            await asyncio.sleep(self.relay_poll_s)

    def _read_root_status(self) -> bytes | None:
        try:
            data = read_bounded(self.layout.status, _MAX_ROOT_STATUS)
        except FileNotFoundError:
            return None
        except OSError as e:
            if str(e) != self._relay_problem:
                log.warning("cannot read the upgrade switch's status: %s", e)
                self._relay_problem = str(e)
            return None
        self._relay_problem = None
        return data

    async def _relay(self, data: bytes) -> bool:
        """One status of the switch to NATS, unless NATS has it or a newer one; False: retry."""
        try:
            st = UpgradeStatus.model_validate_json(data)
        except (ValidationError, ValueError):
            log.warning("the upgrade switch's status file is not an UpgradeStatus; not relayed")
            return True
        if st.device_id != self.device_id:
            log.warning("the upgrade switch's status is for device %r, this is %r; not relayed",
                        st.device_id, self.device_id)
            return True
        bucket = self.cfg.nats.upgrade_status_bucket
        now = await self.bus.kv_get(bucket, self.device_id)
        if now is not None:
            with contextlib.suppress(ValidationError, ValueError):
                if UpgradeStatus.model_validate_json(now.value).updated_at >= st.updated_at:
                    return True  # NATS has this status already, or a newer one
        try:
            # Only over what was compared: a status written meanwhile is never lost.
            last = now.revision if now is not None else None
            await self.bus.kv_update(bucket, self.device_id, status_bytes(st), last)
        except RevisionMismatchError:
            return False  # written meanwhile: compare again at the next poll
        return True

    def _handover_problem(self) -> str | None:
        """Why a staged upgrade would never reach the root side; None when it would."""
        if self.cfg.agent.state_dir != self.layout.state_dir:
            return (
                f"self-upgrade needs [agent] state_dir = \"{self.layout.state_dir}\" "
                f"(harmony-agent-upgrade.path watches it), not \"{self.cfg.agent.state_dir}\"; "
                "set it back and reload"
            )
        return None

    # --- one request ----------------------------------------------------------

    def _replay(self) -> ReplayStore:
        if self._store is None:
            self._store = ReplayStore(self.staging.replay)
        return self._store

    async def handle(self, entry: KvEntry) -> UpgradePhase | None:
        """Act on one value of the request key; the phase it ends in, None if skipped."""
        store = self._replay()
        resuming = False
        if entry.revision == store.last_revision:
            if store.in_progress is None:
                return None  # handled before this agent restarted (e.g. by the upgrade itself)
            resuming = True
        # A download cut short by a restart is this same request again, not a replay.
        seen = set(store.seen) - ({store.in_progress} if resuming else set())
        ctx = self._context(seen)
        try:
            # Key files and signature checks are blocking work: off the event loop.
            req = await asyncio.to_thread(self._admit, entry.value, ctx)
        except RequestRefusedError as e:
            req = e.request
            if resuming or req.request_id in store.seen:
                store.mark_revision(entry.revision)  # keep what the id first meant
            else:
                store.remember(
                    req.request_id, entry.revision, req.artifact.sha256, req.target_version
                )
            store.finish()
            log.warning(
                "upgrade %s rejected: %s", req.request_id, e, extra={"event": "upgrade-rejected"}
            )
            await self._report(req.request_id, req.target_version, "rejected", reason=str(e))
            return "rejected"
        except UpgradeRejectedError as e:
            store.mark_revision(entry.revision)
            await self._report(None, None, "rejected", reason=str(e))
            return "rejected"
        store.remember(req.request_id, entry.revision, req.artifact.sha256, req.target_version)
        if (problem := self._handover_problem()) is not None:
            store.finish()
            await self._report(req.request_id, req.target_version, "rejected", reason=problem)
            return "rejected"
        store.start(req.request_id)
        log.info(
            "upgrade %s to %s received",
            req.request_id,
            req.target_version,
            extra={"event": "upgrade-received"},
        )
        phase = await self._fetch_and_stage(req, entry.value)
        store.finish()
        return phase

    def _admit(self, envelope: bytes, ctx: CheckContext) -> UpgradeRequest:
        """`admission.admit` with the keys on disk now; runs in a worker thread."""
        keys, problems = load_trusted_keys(self.cfg.upgrade.trusted_keys_dir)
        for p in problems:
            log.warning("%s", p, extra={"event": "upgrade-key-refused"})
        return admit(envelope, keys, ctx, problems)

    def _context(self, seen: set[str]) -> CheckContext:
        rolled_back = set(self._replay().rolled_back)
        mirror = load_json(self.staging.base / Staging.ROLLED_BACK) or {}
        rolled_back |= {d for d in mirror.get("rolled_back", []) if isinstance(d, str)}
        spool, releases = self._disks()
        return CheckContext(
            device_id=self.device_id,
            arch=self.arch,
            running_version=__version__,
            now=self.clock(),
            seen_request_ids=seen,
            rolled_back_digests=rolled_back,
            spool_disk=spool,
            releases_disk=releases,
        )

    def _disks(self) -> tuple[DiskSpace | None, DiskSpace | None]:
        """The spool's and the releases' filesystems; (None, None) when they cannot be read."""
        spool = self.cfg.agent.state_dir
        root = self.layout.root
        rel = root if root.exists() else root.parent
        try:
            spool.mkdir(parents=True, exist_ok=True)
            out = []
            for path in (spool, rel):
                vfs = os.statvfs(path)
                out.append(DiskSpace(str(path), os.stat(path).st_dev, vfs.f_bavail * vfs.f_frsize))
        except OSError:
            return None, None
        return out[0], out[1]

    async def _fetch_and_stage(self, req: UpgradeRequest, envelope: bytes) -> UpgradePhase:
        rid, target = req.request_id, req.target_version
        await self._report(rid, target, "received")
        part = self.staging.spool / "artifact.part"
        try:
            clear_staged(self.staging)
            for attempt in range(1, _DOWNLOAD_ATTEMPTS + 1):
                try:
                    await download_artifact(
                        self.bus,
                        req.artifact.bucket,
                        req.artifact.name,
                        part,
                        size=req.artifact.size,
                        sha256=req.artifact.sha256,
                        progress=lambda pct: self._report(rid, target, "downloading", progress=pct),
                    )
                    break
                except ObjectMissingError as e:
                    raise UpgradeError(f"download failed: {e}") from e  # no retry brings it
                except BusError as e:
                    if attempt == _DOWNLOAD_ATTEMPTS:
                        raise UpgradeError(f"download failed: {e}") from e
                    log.warning("download of %s failed (%s); retrying", req.artifact.name, e)
                    await self.bus.wait_connected(60)
            await self._report(rid, target, "verifying")
            # download_artifact checked size and sha256 while writing; staging is a rename.
            stage(self.staging, envelope, part)
        except (UpgradeError, OSError) as e:
            with contextlib.suppress(OSError):
                part.unlink()
            log.error("upgrade %s failed: %s", rid, e, extra={"event": "upgrade-failed"})
            await self._report(rid, target, "failed", reason=str(e))
            return "failed"
        log.info(
            "upgrade %s staged for the root-side switch", rid, extra={"event": "upgrade-staged"}
        )
        await self._report(rid, target, "staged")
        return "staged"

    async def _report(
        self,
        request_id: str | None,
        target: str | None,
        phase: UpgradePhase,
        *,
        reason: str | None = None,
        progress: int | None = None,
    ) -> None:
        now = self.clock()
        self._summary = UpgradeSummary(
            phase=phase, request_id=request_id, target_version=target, reason=reason, updated_at=now
        )
        status = UpgradeStatus(
            device_id=self.device_id,
            request_id=request_id,
            from_version=__version__,
            target_version=target,
            phase=phase,
            progress=progress,
            reason=reason,
            updated_at=now,
        )
        try:
            await self.bus.kv_put(
                self.cfg.nats.upgrade_status_bucket, self.device_id, status_bytes(status)
            )
        except BusError as e:
            log.warning("cannot publish upgrade status %s: %s", phase, e)
