"""`harmony-agent run`: every service under one asyncio.TaskGroup, talking to systemd.

READY=1 goes out once the config is loaded and every service said it started
(never gated on NATS). WATCHDOG=1 only while the heartbeat loop really turns.
SIGHUP re-reads the config between RELOADING=1 and READY=1 (an invalid one is
logged and the running one kept); SIGTERM writes a last `stopping` heartbeat
and exits 0 within 5 s. Each service runs under `agent.service.retrying`: its
failure is logged, shown in `status`, and retried, never the agent's end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from agent.config import Config, check_files, load_config
from agent.deviceinfo import Announcer, read_boot_id
from agent.health import write_health
from agent.heartbeat import HeartbeatService
from agent.identity import AuthState, DeviceLogin, IdentityService, KeyStore
from agent.identity.login import device_facts
from agent.logs import LogsService
from agent.logsetup import setup_logging
from agent.runtime import RuntimeState
from agent.sdnotify import Notifier, watchdog_interval
from agent.service import Service, retrying
from agent.statusline import status_line
from agent.upgrade import UpgradeService
from agent.version import __version__
from harmony_core.bus import Bus, BusState
from harmony_core.contracts import Health, LogsSummary, NatsHealth, UpgradeSummary, utcnow
from harmony_core.errors import ConfigError
from harmony_core.permissions import inbox_prefix

__all__ = ["serve"]

log = logging.getLogger("agent.daemon")

_TICK_S = 5.0
_HEALTH_REFRESH_S = 5.0
_STOP_BUDGET_S = 4.0
# A task that swallows its cancellation (nats-py can, inside a request) must not
# keep a stopping agent alive: past this, the process ends anyway, exit code 0.
_STOP_HARD_S = 4.8
_RECANCEL_S = 0.5


class _Stop(Exception):
    """Raised inside the TaskGroup to end it in order."""


async def _first(*events: asyncio.Event, timeout: float) -> None:
    """Wait until any of `events` is set, or `timeout`."""
    if any(e.is_set() for e in events):
        return
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def _arm_hard_exit(after_s: float) -> None:
    def _exit() -> None:
        log.error(
            "stopping took longer than %.1fs; exiting now", after_s, extra={"event": "stop-forced"}
        )
        os._exit(0)

    timer = threading.Timer(after_s, _exit)
    timer.daemon = True
    timer.start()


class _Daemon:
    def __init__(self, cfg_path: Path, cfg: Config, device_id: str, machine_id: str) -> None:
        self.cfg_path = cfg_path
        self.cfg = cfg
        self.notifier = Notifier()
        self.state = RuntimeState(device_id, machine_id, utcnow())
        # With no credential in [nats], the device logs in with its own key (ADR-023).
        self.login = (
            DeviceLogin(
                KeyStore(cfg.key_dir),
                device_facts(device_id, machine_id, __version__),
                cfg.identity.enroll_token_file,
                on_state=self._auth_changed,
            )
            if cfg.uses_own_key
            else None
        )
        self.bus = Bus(
            cfg.nats,
            name=f"harmony-agent {device_id}",
            on_change=self._bus_changed,
            login=self.login,
            inbox_prefix=inbox_prefix(device_id),
        )
        self.identity = (
            IdentityService(self.bus, device_id, self.login) if self.login is not None else None
        )
        self.announcer = Announcer(cfg, self.bus, self.state)
        self.heartbeat = HeartbeatService(
            cfg, self.bus, self.state, self.summaries, boot_id=read_boot_id()
        )
        # Off in the config at start: not run at all (a restart turns them on).
        self.logs = LogsService(cfg, device_id, self.bus) if cfg.logs.enabled else None
        self.upgrade = UpgradeService(cfg, device_id, self.bus) if cfg.upgrade.enabled else None
        self.stop = asyncio.Event()
        self.reload = asyncio.Event()
        self.ready_sent = False
        self._last_status = ""
        self._last_health: dict[str, object] = {}
        self._health_written = 0.0

    def _bus_changed(self, _: BusState) -> None:
        self.state.changed.set()

    def _auth_changed(self, st: AuthState) -> None:
        self.state.problem("auth", None if st.state == "admitted" else st.text)

    def services(self) -> list[Service[object]]:
        """The services that run, in start order."""
        out: list[Service[object]] = [self.announcer, self.heartbeat]
        if self.logs is not None:
            out.append(self.logs)
        if self.upgrade is not None:
            out.append(self.upgrade)
        if self.identity is not None:
            out.append(self.identity)
        return out

    def summaries(self) -> tuple[LogsSummary | None, UpgradeSummary | None]:
        logs = self.logs.summary() if self.logs is not None else None
        upgrade = self.upgrade.summary() if self.upgrade is not None else None
        return logs, upgrade

    def health(self) -> Health:
        b = self.bus.state
        logs, upgrade = self.summaries()
        problems = list(self.state.problems.values())
        return Health(
            version=__version__,
            pid=os.getpid(),
            device_id=self.state.device_id,
            started_at=self.state.started_at,
            updated_at=utcnow(),
            ready=self.ready_sent,
            nats=NatsHealth(state=b.state, server=b.server, since=b.since, last_error=b.last_error),
            last_heartbeat_ack_at=self.state.last_heartbeat_ack_at,
            last_heartbeat_seq=self.state.last_heartbeat_seq,
            conflict=self.state.conflict,
            problems=problems,
            logs=logs,
            upgrade=upgrade,
        )

    def publish_health(self, force: bool = False) -> None:
        h = self.health()
        line = status_line(h, h.updated_at)
        key = h.model_dump(exclude={"updated_at"})
        now = time.monotonic()
        if force or key != self._last_health or now - self._health_written >= _HEALTH_REFRESH_S:
            try:
                write_health(self.cfg.agent.health_file, h)
            except OSError as e:
                self.state.problem("health", f"cannot write {self.cfg.agent.health_file}: {e}")
            else:
                self.state.problem("health", None)
            self._last_health = key
            self._health_written = now
        # STATUS= changes with "Ns ago" every second; send it only when the words change.
        if line != self._last_status:
            self.notifier.status(line)
            self._last_status = line

    def do_reload(self) -> None:
        try:
            new = load_config(self.cfg_path)
            problems = check_files(new)
            if problems:
                raise ConfigError(str(self.cfg_path), problems)
        except ConfigError as e:
            log.error(
                "config reload rejected, keeping the running config: %s",
                e,
                extra={"event": "config-reload-rejected"},
            )
            return
        if new.agent.device_id != self.cfg.agent.device_id or new.nats != self.cfg.nats:
            log.warning(
                "[agent] device_id and [nats] changes take effect at the next restart",
                extra={"event": "config-restart-needed"},
            )
        old = self.cfg
        self.cfg = new.model_copy(update={"nats": old.nats})
        setup_logging(self.state.device_id, new.agent.log_level)
        for svc in self.services():
            svc.reconfigure(self.cfg)
        log.info("config reloaded from %s", self.cfg_path, extra={"event": "config-reloaded"})

    async def supervise(self, readies: list[asyncio.Event]) -> None:
        wd = watchdog_interval()
        for ev in readies:
            await ev.wait()
        self.ready_sent = True
        self.publish_health(force=True)
        self.notifier.ready(self._last_status or "started")
        log.info(
            "harmony-agent %s started as device %s",
            __version__,
            self.state.device_id,
            extra={"event": "started"},
        )
        tick = min(_TICK_S, wd) if wd else _TICK_S
        while not self.stop.is_set():
            if self.reload.is_set():
                self.reload.clear()
                self.notifier.reloading()
                self.do_reload()
                self.publish_health(force=True)
                self.notifier.ready(self._last_status or "reloaded")
            self.publish_health()
            if wd is not None:
                # The watchdog must prove the heartbeat loop turns, not just this one.
                stall = max(3 * self.cfg.heartbeat.interval, 30.0)
                if time.monotonic() - self.state.heartbeat_alive_at < stall:
                    self.notifier.watchdog()
            self.state.changed.clear()
            await _first(self.stop, self.state.changed, self.reload, timeout=tick)
        _arm_hard_exit(_STOP_HARD_S)
        raise _Stop

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload.set)
        readies: list[asyncio.Event] = []

        def started_of(name: str) -> Callable[[], None]:
            ev = asyncio.Event()
            readies.append(ev)

            def started() -> None:
                ev.set()
                self.state.problem(f"service:{name}", None)  # (re)started: no longer failed

            return started

        tasks: list[asyncio.Task[None]] = []

        def recancel() -> None:
            # The TaskGroup cancels each task once; nats-py on Python 3.11 can swallow that
            # cancel (an asyncio.wait_for race), and then the last `stopping` heartbeat
            # would never go out before the hard exit. Repeat it until all have ended.
            pending = [t for t in tasks if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.call_later(_RECANCEL_S, recancel)

        try:
            async with asyncio.TaskGroup() as tg:
                tasks.append(tg.create_task(self.bus.run(), name="bus"))
                for svc in self.services():
                    run = retrying(
                        svc.name,
                        partial(svc.run, started_of(svc.name)),
                        on_error=partial(self.state.problem, f"service:{svc.name}"),
                    )
                    tasks.append(tg.create_task(run, name=svc.name))
                sup = tg.create_task(self.supervise(readies), name="supervise")
                # However the group ends (stop, or a task's crash), make sure it does end.
                sup.add_done_callback(lambda _: loop.call_later(_RECANCEL_S, recancel))
        except* _Stop:
            pass
        await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        self.notifier.stopping("stopping: sending a last heartbeat")
        deadline = time.monotonic() + _STOP_BUDGET_S
        try:
            sent = await self.heartbeat.send("stopping", timeout=2.0)
        except Exception:  # a device file that cannot be read: still stop in order
            log.exception("the last heartbeat could not be built", extra={"event": "stopping"})
            sent = False
        log.info(
            "stopping (last heartbeat %s)",
            "acknowledged" if sent else "not delivered",
            extra={"event": "stopping"},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.bus.close(), max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(OSError):
            self.cfg.agent.health_file.unlink()


async def serve(cfg_path: Path, cfg: Config, device_id: str, machine_id: str) -> int:
    """Run the agent until SIGTERM; returns the exit code."""
    return await _Daemon(cfg_path, cfg, device_id, machine_id).main()
