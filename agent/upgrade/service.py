"""The agent side of a self-upgrade (unprivileged): watch, check, download, stage, report.

It never raises for upgrade trouble and never stops the agent: every refusal or
failure becomes an UpgradeStatus with a reason. Once staged, the root-owned
switch takes over and reports the later phases itself; this service follows
them through the status key to keep `summary()` true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from agent.arch import debian_arch
from agent.config import Config
from agent.upgrade.checks import CheckContext, DiskSpace, check_request, disk_needs
from agent.upgrade.download import download_artifact
from agent.upgrade.handover import clear_staged, stage
from agent.upgrade.keys import load_trusted_keys
from agent.upgrade.layout import Layout, Staging
from agent.upgrade.status import status_bytes
from agent.upgrade.store import ReplayStore, load_json
from agent.version import __version__
from harmony_core.bus import Bus, KvEntry
from harmony_core.contracts import UpgradePhase, UpgradeStatus, UpgradeSummary, utcnow
from harmony_core.envelope import Verified, verify_envelope
from harmony_core.errors import BusError, UpgradeError, UpgradeRejectedError

__all__ = ["UpgradeService"]

log = logging.getLogger("agent.upgrade")

_RETRY_S = 5.0
_DOWNLOAD_ATTEMPTS = 3


class UpgradeService:
    """`run(ready)` inside the daemon's TaskGroup; `summary()` for heartbeat, health and status."""

    def __init__(
        self,
        cfg: Config,
        device_id: str,
        bus: Bus,
        *,
        arch: str | None = None,
        releases_root: Path | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.bus = bus
        self.arch = arch or debian_arch()
        self.releases_root = releases_root or Layout.from_env().root
        self.clock = clock
        self.staging = Staging(cfg.agent.state_dir)
        self._store: ReplayStore | None = None
        self._summary = UpgradeSummary()

    # --- faces ----------------------------------------------------------------

    def summary(self) -> UpgradeSummary:
        return self._summary.model_copy()

    def reconfigure(self, cfg: Config) -> None:
        # trusted_keys_dir and confirm_window are read per request; NATS names need a restart.
        self.cfg = cfg.model_copy(update={"nats": self.cfg.nats})

    async def run(self, ready: Callable[[], None]) -> None:
        """Watch requests and status until cancelled; `ready()` at once (not gated on NATS)."""
        ready()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._forever("requests", self._watch_requests), name="upgrade-requests")
            tg.create_task(self._forever("status", self._watch_status), name="upgrade-status")

    # --- loops ----------------------------------------------------------------

    async def _forever(self, what: str, body: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await self.bus.wait_connected()
                await body()
            except asyncio.CancelledError:
                raise
            except BusError as e:
                log.warning("upgrade %s watch: %s; retrying in %.0fs", what, e, _RETRY_S)
            except Exception:  # upgrade trouble never stops the agent
                log.exception("upgrade %s watch failed; retrying in %.0fs", what, _RETRY_S)
            await asyncio.sleep(_RETRY_S)

    async def _watch_requests(self) -> None:
        async for entry in self.bus.kv_watch(self.cfg.nats.upgrade_bucket, self.device_id):
            if entry is None or entry.deleted:
                continue
            await self.handle(entry)

    async def _watch_status(self) -> None:
        async for entry in self.bus.kv_watch(self.cfg.nats.upgrade_status_bucket, self.device_id):
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
        keys, problems = load_trusted_keys(self.cfg.upgrade.trusted_keys_dir)
        for p in problems:
            log.warning("trusted key skipped: %s", p)
        try:
            v = verify_envelope(entry.value, keys)
        except UpgradeRejectedError as e:
            store.mark_revision(entry.revision)
            await self._report(None, None, "rejected", reason=str(e))
            return "rejected"
        req = v.request
        seen = set(store.seen) - ({req.request_id} if resuming else set())
        reasons = check_request(req, self._context(v, seen))
        if reasons:
            if resuming or req.request_id in store.seen:
                store.mark_revision(entry.revision)  # keep what the id first meant
            else:
                store.remember(
                    req.request_id, entry.revision, req.artifact.sha256, req.target_version
                )
            store.finish()
            log.warning(
                "upgrade %s rejected: %s",
                req.request_id,
                reasons[0],
                extra={"event": "upgrade-rejected"},
            )
            await self._report(req.request_id, req.target_version, "rejected", reason=reasons[0])
            return "rejected"
        store.remember(req.request_id, entry.revision, req.artifact.sha256, req.target_version)
        store.start(req.request_id)
        log.info(
            "upgrade %s to %s received",
            req.request_id,
            req.target_version,
            extra={"event": "upgrade-received"},
        )
        phase = await self._fetch_and_stage(v, entry.value)
        store.finish()
        return phase

    def _context(self, v: Verified, seen: set[str]) -> CheckContext:
        rolled_back = set(self._replay().rolled_back)
        mirror = load_json(self.staging.base / Staging.ROLLED_BACK) or {}
        rolled_back |= {d for d in mirror.get("rolled_back", []) if isinstance(d, str)}
        return CheckContext(
            device_id=self.device_id,
            arch=self.arch,
            running_version=__version__,
            now=self.clock(),
            seen_request_ids=seen,
            rolled_back_digests=rolled_back,
            disk=self._disk(v.request.artifact.size),
            retry_rolled_back=v.raw.get("retry_rolled_back") is True,
        )

    def _disk(self, size: int) -> tuple[DiskSpace, ...]:
        spool = self.cfg.agent.state_dir
        rel = self.releases_root if self.releases_root.exists() else self.releases_root.parent
        try:
            spool.mkdir(parents=True, exist_ok=True)
            paths = {str(spool): os.statvfs(spool), str(rel): os.statvfs(rel)}
            devs = {str(spool): os.stat(spool).st_dev, str(rel): os.stat(rel).st_dev}
        except OSError:
            return ()
        needs = disk_needs(size, (str(spool), devs[str(spool)]), (str(rel), devs[str(rel)]))
        out = []
        for path, vfs in paths.items():
            dev = devs[path]
            if dev in needs:
                out.append(DiskSpace(path, vfs.f_bavail * vfs.f_frsize, needs.pop(dev)))
        return tuple(out)

    async def _fetch_and_stage(self, v: Verified, envelope: bytes) -> UpgradePhase:
        req = v.request
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
        except Exception as e:  # nats-py's own errors (digest mismatch, missing object, ...)
            with contextlib.suppress(OSError):
                part.unlink()
            log.error("upgrade %s failed: %s", rid, e, extra={"event": "upgrade-failed"})
            await self._report(
                rid, target, "failed", reason=f"download failed: {e or type(e).__name__}"
            )
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
