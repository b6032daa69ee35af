"""What every part of the daemon is to it (`Service`), and the one way a part retries (`retrying`).

A service runs inside the daemon's TaskGroup until cancelled; it calls
`started()` once it is set up (or known broken: its summary says which), which
is what READY=1 waits for, never NATS. `summary()` is what the heartbeat, the
health file and `harmony-agent status` show of it; `reconfigure(cfg)` applies a
reloaded config (SIGHUP).

`retrying` is the one retry policy of the agent: capped exponential backoff with
full jitter (the bus's `backoff_delay`), the failure logged once per attempt with
a named event, reset after a run that lasted. Only our own errors (`AgentError`)
and `OSError` are expected; anything else is a defect, logged with its traceback,
and retried all the same: one part failing never ends the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from agent.config import Config
from harmony_core.bus import backoff_delay
from harmony_core.errors import AgentError

__all__ = ["Service", "retrying"]

log = logging.getLogger("agent.service")

S_co = TypeVar("S_co", covariant=True)

# A run that lasted this long was healthy: the next failure starts the backoff anew.
_HEALTHY_RUN_S = 60.0


class Service(Protocol[S_co]):
    """A part of the daemon: one of announce, heartbeat, logs, upgrade."""

    name: str

    async def run(self, started: Callable[[], None]) -> None:
        """Work until cancelled; call `started()` once set up or known broken."""
        ...

    def summary(self) -> S_co:
        """What this part shows in the heartbeat, the health file and `status`."""
        ...

    def reconfigure(self, cfg: Config) -> None:
        """Apply a reloaded config (no I/O; the running loops pick it up)."""
        ...


async def retrying(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    cap_s: float = 60.0,
    base_s: float = 1.0,
    on_error: Callable[[str | None], None] | None = None,
    before: Callable[[], Awaitable[object]] | None = None,
) -> None:
    """Run `body` until it returns; on failure wait (capped, jittered) and run it again.

    `before` is awaited ahead of each attempt (e.g. `bus.wait_connected`);
    `on_error(reason)` is told each failure's reason, and None after a success.
    """
    attempt = 0
    while True:
        if before is not None:
            await before()
        began = time.monotonic()
        try:
            await body()
            if on_error is not None:
                on_error(None)
            return
        except asyncio.CancelledError:
            raise
        except (AgentError, OSError) as e:
            reason = f"{name}: {e}"
            exc_info = False
        except Exception as e:  # a defect: keep the traceback, keep the agent
            reason = f"{name} failed: {type(e).__name__}: {e}"
            exc_info = True
        if time.monotonic() - began >= _HEALTHY_RUN_S:
            attempt = 0
        attempt += 1
        delay = backoff_delay(attempt, cap_s, base_s)
        log.warning(
            "%s; retrying in %.1fs",
            reason,
            delay,
            exc_info=exc_info,
            extra={"event": f"{name}-retry"},
        )
        if on_error is not None:
            on_error(reason)
        await asyncio.sleep(delay)
