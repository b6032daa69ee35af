"""LogsService: the journal shipped to `logs.<device_id>`, at least once, bounded.

One run is a sequence of generations: check that the journal is visible (else
report `blind` and check again), start a pump thread from the last committed
cursor and a shipper, and keep them until cancelled, reconfigured, or failed.
A failed generation (a journal error) is shown as `error` in the summary and
started again on the agent's one retry policy (`agent.service.retrying`).
The committed cursor is the only state carried between generations and runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from agent.config import Config
from agent.logs.cursor import CursorStore, SavedCursor
from agent.logs.pump import Batch, Pump
from agent.logs.shipper import Shipper, encoder_of
from agent.logs.visibility import JournalPaths, blind_reason
from agent.service import retrying
from harmony_core.bus import Bus
from harmony_core.contracts import LogsSummary

__all__ = ["LogsService"]

log = logging.getLogger("agent.logs")

_State = Literal["starting", "shipping", "waiting-for-nats", "blind", "disabled", "error"]
_RECHECK_S = 10.0
_SPARE_SLOTS = 2


class _Restart(Exception):
    """Ends a generation so the next one starts with the current config."""


class LogsService:
    """Ships the journal, a daemon `Service`: `run(started)`, `summary()`, `reconfigure(cfg)`."""

    name = "logs"

    def __init__(
        self,
        cfg: Config,
        device_id: str,
        bus: Bus,
        *,
        journal_paths: JournalPaths | None = None,
        recheck_s: float = _RECHECK_S,
    ) -> None:
        self.cfg = cfg
        self.device_id = device_id
        self.bus = bus
        self.paths = journal_paths or JournalPaths()
        self.recheck_s = recheck_s
        self.store = CursorStore(cfg.agent.state_dir / "logs" / "cursor")
        self.committed: SavedCursor | None = None
        self._loaded = False
        self._changed = asyncio.Event()
        self._pump: Pump | None = None
        self._thread: threading.Thread | None = None
        self._shipper: Shipper | None = None
        self._blind: str | None = None
        self._error: str | None = None
        self._started: Callable[[], None] = _nothing
        self._shipped = 0
        self._dropped = 0
        self._gaps = 0

    # --- the daemon's interface ---------------------------------------------------

    def reconfigure(self, cfg: Config) -> None:
        """Apply a new config (SIGHUP): the reader reopens with the new filters."""
        if cfg.logs != self.cfg.logs:
            self.cfg = cfg
            self._changed.set()

    def summary(self) -> LogsSummary:
        if not self.cfg.logs.enabled:
            return LogsSummary(state="disabled")
        pump, sh = self._pump, self._shipper
        shipped = self._shipped + (sh.shipped if sh else 0)
        dropped = self._dropped + (pump.dropped if pump else 0)
        gaps = self._gaps + (sh.gaps if sh else 0)
        in_flight = sh.in_flight if sh else 0
        lag = self._lag(pump, sh)
        error = self._error or (sh.error if sh else None)
        state: _State
        detail: str | None = None
        if self._blind is not None:
            state, detail = "blind", self._blind
        elif error is not None:
            state, detail = "error", error
        elif pump is None or not pump.positioned:
            state = "starting"
        elif not self.bus.connected or (sh is not None and sh.failing_since is not None):
            state = "waiting-for-nats"
        else:
            state = "shipping"
        return LogsSummary(
            state=state,
            detail=detail,
            lag_s=lag,
            shipped=shipped,
            in_flight=in_flight,
            dropped=dropped,
            gaps=gaps,
        )

    @staticmethod
    def _lag(pump: Pump | None, sh: Shipper | None) -> float | None:
        if pump is None:
            return None
        now_us = time.time_ns() // 1000
        oldest = sh.oldest_unshipped_us() if sh else None
        if oldest is None and not pump.at_tail:
            oldest = pump.current_us
        if oldest is None:
            return 0.0
        return round(max(0.0, (now_us - oldest) / 1e6), 3)

    async def run(self, started: Callable[[], None]) -> None:
        """Ship until cancelled; `started()` once the reader is set up, found blind, or failed."""
        if not self._loaded:
            self.committed = await asyncio.to_thread(self.store.load)
            self._loaded = True
        self._started = _once(started)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.store.run(), name="logs-cursor")
            tg.create_task(retrying(self.name, self._ship_forever), name="logs-ship")

    async def _ship_forever(self) -> None:
        """Generation after generation; a failed one ends this (retried by `retrying`)."""
        while True:
            if not self.cfg.logs.enabled:
                self._started()
                await self._changed.wait()
                self._changed.clear()
                continue
            self._blind = await asyncio.to_thread(blind_reason, self.paths)
            if self._blind is not None:
                log.warning("logs: blind: %s", self._blind, extra={"event": "logs-blind"})
                self._started()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.recheck_s)
                self._changed.clear()
                continue
            try:
                await self._generation(self._started)
            except _Restart:
                pass
            except Exception as e:
                self._error = str(e) or type(e).__name__
                # Readiness means "set up or known broken": the summary says which.
                self._started()
                raise
            self._changed.clear()

    # --- one generation ----------------------------------------------------------

    def _on_commit(self, saved: SavedCursor) -> None:
        self.committed = saved
        self.store.save(saved)

    async def _generation(self, ready: Callable[[], None]) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        lc = cfg.logs
        slots = threading.Semaphore(lc.max_in_flight + _SPARE_SLOTS)
        stop = threading.Event()
        shipper = Shipper(
            self.bus,
            f"{cfg.nats.logs_subject_prefix}.{self.device_id}",
            cfg.nats.logs_stream,
            max_in_flight=lc.max_in_flight,
            ack_timeout=lc.ack_timeout,
            slots=slots,
            commit=self._on_commit,
            encode=encoder_of(lc.compression),
        )

        def handoff(batch: Batch) -> bool:
            while not stop.is_set():
                if slots.acquire(timeout=0.2):
                    loop.call_soon_threadsafe(shipper.put, batch)
                    return True
            return False

        bus = self.bus
        pump = Pump(lc, self.device_id, self.committed, handoff, stop, lambda: bus.max_payload)
        done: asyncio.Future[None] = loop.create_future()

        def body() -> None:
            try:
                pump.run()
            except BaseException as e:
                loop.call_soon_threadsafe(_settle, done, e)
            else:
                loop.call_soon_threadsafe(_settle, done, None)

        thread = threading.Thread(target=body, name="logs-pump", daemon=True)
        self._pump, self._shipper, self._thread = pump, shipper, thread
        self._error = None
        thread.start()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(shipper.run(), name="logs-shipper")
                tg.create_task(self._watch(pump, done, ready), name="logs-watch")
        except ExceptionGroup as eg:
            raise _why_it_ended(eg) from None
        finally:
            pump.request_stop()
            self._shipped += shipper.shipped
            self._dropped += pump.dropped
            self._gaps += shipper.gaps
            self._pump = self._shipper = None
            # Woken, the thread stops at once (or within 0.2 s when it waits for a
            # slot); let it close the journal first.
            await asyncio.to_thread(thread.join, 5.0)

    async def _watch(
        self, pump: Pump, done: asyncio.Future[None], ready: Callable[[], None]
    ) -> None:
        """Signal readiness, recheck visibility, end the generation on change or failure."""
        while not pump.positioned and not done.done():
            await asyncio.wait([done], timeout=0.05)
        if pump.positioned:
            ready()
        while True:
            changed: asyncio.Future[bool] = asyncio.ensure_future(self._changed.wait())
            waits: list[asyncio.Future[Any]] = [done, changed]
            try:
                await asyncio.wait(
                    waits, timeout=self.recheck_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                changed.cancel()
            if done.done():
                exc = done.exception()
                if exc is not None:
                    raise exc
                raise _Restart()
            if self._changed.is_set():
                await self._drain(pump)
                raise _Restart()
            self._blind = await asyncio.to_thread(blind_reason, self.paths)

    async def _drain(self, pump: Pump) -> None:
        """Before a reconfigure: stop reading, give the batches in flight a chance to be acked."""
        pump.request_stop()
        sh = self._shipper
        if sh is not None:
            await sh.drained(2 * self.cfg.logs.ack_timeout)


def _nothing() -> None:
    pass


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    """`fn`, called at most once however often the result is."""
    called = False

    def call() -> None:
        nonlocal called
        if not called:
            called = True
            fn()

    return call


def _why_it_ended(eg: BaseExceptionGroup[Exception]) -> Exception:
    """The one exception a generation ended with: a failure before a mere restart."""
    leaves: list[Exception] = []

    def flatten(g: BaseExceptionGroup[Exception]) -> None:
        for e in g.exceptions:
            if isinstance(e, BaseExceptionGroup):
                flatten(e)
            else:
                leaves.append(e)

    flatten(eg)
    failures = [e for e in leaves if not isinstance(e, _Restart)]
    return (failures or leaves)[0]


def _settle(fut: asyncio.Future[None], exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is None:
        fut.set_result(None)
    else:
        fut.set_exception(exc)
