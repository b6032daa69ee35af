"""The identity part of the daemon: hears `harmony-fleet rotate` and starts the rotation.

The operator's request arrives on the device's own inbox subject (the only
subjects it may subscribe to). The agent makes the new key, keeps the old one,
and logs in anew: the login offers the new key with the old key's statement,
and whichever key the fleet takes stays (`DeviceLogin`). Requests closer than
`min_interval_s` are ignored: another device could replay one to make this one
reconnect, and a rotation the fleet did not ask for is refused anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.config import Config
from agent.identity.login import DeviceLogin
from agent.service import retrying
from harmony_core import nkey
from harmony_core.bus import Bus
from harmony_core.errors import BusUnavailableError
from harmony_core.permissions import rotate_subject

__all__ = ["IdentityService"]

log = logging.getLogger("agent.identity")


class IdentityService:
    """A daemon `Service`: rotation requests in, a new login out."""

    name = "identity"

    def __init__(
        self, bus: Bus, device_id: str, login: DeviceLogin, *, min_interval_s: float = 30.0
    ) -> None:
        self.bus = bus
        self.device_id = device_id
        self.login = login
        self.min_interval_s = min_interval_s
        self._last_rotation = -min_interval_s

    def summary(self) -> None:
        """Nothing of its own: the login's state is in the RuntimeState's problems."""
        return None

    def reconfigure(self, cfg: Config) -> None:
        """[identity] changes take effect at the next restart."""

    async def run(self, started: Callable[[], None]) -> None:
        started()
        await retrying(self.name, self._listen, before=self.bus.wait_connected)

    async def _listen(self) -> None:
        while True:
            await self.bus.wait_connected()
            try:
                async for _ in self.bus.subscribe(rotate_subject(self.device_id)):
                    await self._rotate()
            except BusUnavailableError:
                continue  # a new login (expiry, rotation): subscribe again once connected

    async def _rotate(self) -> None:
        now = time.monotonic()
        if now - self._last_rotation < self.min_interval_s:
            log.warning(
                "rotation request ignored: the last one was %.0fs ago",
                now - self._last_rotation,
                extra={"event": "auth-rotation-ignored"},
            )
            return
        self._last_rotation = now
        new = self.login.begin_rotation()
        log.info(
            "rotating: made key %s, logging in with it (the old key stays until the fleet "
            "takes the new one)",
            nkey.fingerprint(new),
            extra={"event": "auth-rotating"},
        )
        await self.bus.relogin()
