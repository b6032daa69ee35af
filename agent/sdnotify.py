"""sd_notify(3) over NOTIFY_SOCKET, without libsystemd.

READY, RELOADING (then READY again), STATUS, WATCHDOG and STOPPING.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["Notifier", "watchdog_interval"]


class Notifier:
    """Sends datagrams to systemd; a no-op when not run by systemd."""

    def __init__(self, address: str | None = None) -> None:
        addr = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._addr: str | None = None
        self._sock: socket.socket | None = None
        if addr:
            self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Never wait on systemd: with its datagram queue full a blocking send would
            # freeze the event loop (heartbeats included); a dropped STATUS= is harmless.
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        if self._sock is None or self._addr is None:
            return False
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            self._sock.sendto(text.encode(), self._addr)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status, mainpid=os.getpid())

    def status(self, text: str) -> None:
        self.send(status=text)

    def watchdog(self) -> None:
        self.send(watchdog=1)

    def stopping(self, status: str = "stopping") -> None:
        self.send(stopping=1, status=status)

    def reloading(self) -> None:
        """RELOADING=1, stamped with CLOCK_MONOTONIC as sd_notify(3) asks; READY=1 ends it."""
        self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when off."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
