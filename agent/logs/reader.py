"""The journal, through systemd-python's raw Reader calls. Blocking: runs in the pump thread.

Matches are pushed into libsystemd, so a filtered reader jumps over lines it
does not want through the journal's field indexes instead of reading them. A
second, unfiltered handle (`probe`) answers what a filtered one cannot see: the
tail of the whole journal (for checkpoints past filtered-out lines) and whether
a saved cursor still exists (for gap detection).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import socket
import time
from collections.abc import Mapping
from typing import Any, Literal

from agent.logs.filters import Filters, build_matches
from harmony_core.errors import JournalError

__all__ = ["Entry", "JournalReader", "StartAt"]

log = logging.getLogger("agent.logs")

StartAt = Literal["now", "boot", "all"]
Entry = tuple[str, int, Mapping[str, Any]]

# Errors libsystemd returns when a file it reads was rotated, vacuumed or is corrupt.
_REOPEN_ERRNOS = {errno.EBADMSG, errno.EADDRNOTAVAIL, errno.EIO, errno.ENODATA, errno.ESTALE}


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _file_resident() -> int:
    """Resident file-backed (shared) bytes of this process, from /proc/self/statm."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _journal() -> Any:
    try:
        from systemd import journal
    except ImportError as e:
        raise JournalError(
            "systemd-python is not installed; install python3-systemd (Debian) "
            "or `pip install systemd-python`"
        ) from e
    return journal


class JournalReader:
    """One filtered libsystemd handle plus an unfiltered probe; reopenable.

    `wait()` can be cut short from another thread (`wake()`): it polls the
    journal's inotify descriptor together with a socket pair of its own (made on
    the first wait, closed with the journal), as `sd_journal_wait()` would poll
    the first alone.
    """

    def __init__(self, filters: Filters, max_message_bytes: int) -> None:
        self._filters = filters
        self._limit = max_message_bytes
        self._r: Any = None
        self._probe: Any = None
        self._peeked = False
        self._base_resident = 0
        self.last_cursor: str | None = None
        # Socket objects, not raw fds: a wake() racing close() finds a closed
        # socket (an error), never an fd number reused by someone else.
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._woken = False

    # --- opening and seeking ------------------------------------------------

    def open(self) -> None:
        j = _journal()
        self.close()
        try:
            r = j.Reader(flags=j.LOCAL_ONLY, converters={})
            probe = j.Reader(flags=j.LOCAL_ONLY, converters={})
        except OSError as e:
            raise JournalError(f"cannot open the journal: {e}") from e
        # A hint to libsystemd: we never need more of a field than we ship.
        r.data_threshold = self._limit + 1
        for group in build_matches(self._filters):
            for i, alternative in enumerate(group):
                if i:
                    r.add_disjunction()
                for m in alternative:
                    r.add_match(m)
            r.add_conjunction()
        # get_fd() starts inotify, so process() later sees rotation and new files.
        r.fileno()
        probe.fileno()
        self._r, self._probe, self._peeked = r, probe, False
        self._base_resident = _file_resident()

    def reopen(self) -> None:
        """Close and open again after the last line read (drops libsystemd's mappings)."""
        last = self.last_cursor
        self.open()
        if last is not None:
            self.seek_after(last)

    def mapped_bytes(self) -> int:
        """File-backed resident memory of this process beyond what it had at open()."""
        return _file_resident() - self._base_resident

    def close(self) -> None:
        for h in (self._r, self._probe):
            if h is not None:
                h.close()
        self._r = self._probe = None
        wake, self._wake = self._wake, None
        if wake is not None:
            for s in wake:
                s.close()

    def seek_after(self, cursor: str) -> None:
        """Position so that next() returns the first wanted line after `cursor`."""
        r = self._r
        r.seek_cursor(cursor)
        self._peeked = False
        if r._next():
            if r.test_cursor(cursor):
                self.last_cursor = cursor
            else:
                self._peeked = True  # the cursor's line is gone or filtered out: keep this one

    def seek_start(self, start_at: StartAt) -> None:
        r = self._r
        self._peeked = False
        if start_at == "all":
            r.seek_head()
        elif start_at == "boot":
            r.seek_monotonic(0)
        else:
            r.seek_realtime(time.time())

    # --- reading --------------------------------------------------------------

    def next(self) -> Entry | None:
        """The next wanted line as (cursor, realtime µs, raw fields), or None at the end."""
        r = self._r
        if self._peeked:
            self._peeked = False
        elif not r._next():
            return None
        cursor: str = r._get_cursor()
        self.last_cursor = cursor
        return cursor, r._get_realtime(), r._get_all()

    def raw_calls(self) -> tuple[Any, Any, Any, Any]:
        """libsystemd's next, cursor, realtime and all-fields calls, for the hot loop."""
        r = self._r
        return r._next, r._get_cursor, r._get_realtime, r._get_all

    def wait(self, timeout: float) -> int:
        """Block until the journal changes, `wake()` is called, or `timeout` s pass."""
        r = self._r
        if self._wake is None:
            pair = socket.socketpair()
            for s in pair:
                s.setblocking(False)
            self._wake = pair
        wake_r = self._wake[0]
        # After the sockets exist: a wake() from now on either set this already or
        # will write to them.
        if self._woken:
            self._woken = False
            return int(r.process())
        ms = int(timeout * 1000)
        lib_ms = r.get_timeout_ms()  # libsystemd's own deadline (a rescan), or -1
        if lib_ms >= 0:
            ms = min(ms, lib_ms)
        p = select.poll()
        p.register(r.fileno(), r.get_events())
        p.register(wake_r.fileno(), select.POLLIN)
        if any(fd == wake_r.fileno() for fd, _ev in p.poll(ms)):
            self._woken = False
            with contextlib.suppress(OSError):
                while wake_r.recv(64):
                    pass
        return int(r.process())

    def wake(self) -> None:
        """Make a `wait()` in progress, or the next one, return at once (any thread)."""
        self._woken = True
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(OSError):  # full (already woken), or closed
                wake[1].send(b"w")

    @staticmethod
    def is_reopen_error(e: OSError) -> bool:
        return e.errno in _REOPEN_ERRNOS

    # --- the unfiltered view ----------------------------------------------------

    def tail(self) -> tuple[str, int] | None:
        """(cursor, realtime µs) of the last line of the whole journal, or None when empty."""
        p = self._probe
        p.process()
        p.seek_tail()
        if not p._previous():
            return None
        return p._get_cursor(), p._get_realtime()

    def exists(self, cursor: str) -> tuple[bool, int | None]:
        """Whether `cursor`'s line is still in the journal; else the realtime of the next one."""
        p = self._probe
        p.process()
        p.seek_cursor(cursor)
        if not p._next():
            return False, None
        if p.test_cursor(cursor):
            return True, None
        return False, int(p._get_realtime())
