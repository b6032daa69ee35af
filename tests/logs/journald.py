"""A real systemd-journald for tests and the benchmark, and ways to write lines into it.

`Journald.ensure()` reuses a running journald or starts `/lib/systemd/systemd-journald`
as a plain background process (no systemd as PID 1 needed: it creates its own
sockets under /run/systemd/journal/ and writes to /run/log/journal). Lines come
from `systemd.journal.send`, `systemd-cat`, or a writer process placed in a
cgroup named like a unit (`UnitWriter`): journald reads the sender's cgroup,
which is how `_SYSTEMD_UNIT` (a trusted field) gets set without systemd.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.logs.visibility import journald_running
from tests.natsserver import stop_process, wait_for

__all__ = [
    "JOURNALD",
    "Journald",
    "UnitWriter",
    "cgroup_root",
    "journal_cursors",
    "journalctl_json",
    "journald_running",
    "send",
    "seqnum",
    "systemd_cat",
    "tail_cursor",
    "unique",
]

JOURNALD = "/lib/systemd/systemd-journald"


def unique(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Journald:
    """The machine's journald: started here (and stopped again) if none runs."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ours(self) -> bool:
        return self.proc is not None

    def ensure(self) -> Journald:
        if journald_running():
            return self
        if not Path(JOURNALD).exists():
            raise RuntimeError(f"{JOURNALD} missing: apt-get install systemd")
        self.proc = subprocess.Popen(
            [JOURNALD],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(journald_running, 10, "systemd-journald's socket")
        # It is up once a line written now can be read back.
        marker = unique("journald-up")
        send(marker, marker)
        wait_for(lambda: len(journalctl_json("-t", marker)) == 1, 10, "journald to store a line")
        return self

    def rotate(self) -> None:
        subprocess.run(["journalctl", "--rotate"], check=True, capture_output=True)

    def vacuum_files(self, keep: int) -> None:
        subprocess.run(["journalctl", f"--vacuum-files={keep}"], check=True, capture_output=True)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


def send(message: str | bytes, identifier: str, priority: int = 6, **fields: Any) -> None:
    """One line through journald's native protocol."""
    from systemd import journal

    if isinstance(message, bytes):
        journal.sendv(
            b"MESSAGE=" + message,
            f"SYSLOG_IDENTIFIER={identifier}",
            f"PRIORITY={priority}",
            *(f"{k}={v}" for k, v in fields.items()),
        )
    else:
        journal.send(message, SYSLOG_IDENTIFIER=identifier, PRIORITY=str(priority), **fields)


def systemd_cat(lines: list[str], identifier: str, priority: str = "info") -> None:
    """Lines through journald's stdout stream, as a service's output would arrive."""
    subprocess.run(
        ["systemd-cat", "-t", identifier, "-p", priority],
        input="".join(f"{line}\n" for line in lines).encode(),
        check=True,
    )


def journalctl_json(*args: str) -> list[dict[str, Any]]:
    """`journalctl -o json ARGS` as dicts (the oracle)."""
    out = subprocess.run(
        ["journalctl", "--no-pager", "-o", "json", *args],
        check=True,
        capture_output=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def journal_cursors(*args: str) -> list[str]:
    return [e["__CURSOR"] for e in journalctl_json(*args)]


def seqnum(cursor: str) -> int:
    """The `i=` (sequence number) of a journal cursor, later lines larger; -1 if it has none."""
    for part in cursor.split(";"):
        if part.startswith("i="):
            try:
                return int(part[2:], 16)
            except ValueError:
                break
    return -1


def tail_cursor() -> str:
    """The cursor of the journal's last line right now."""
    entries = journalctl_json("-n", "1")
    if not entries:
        marker = unique("tail")
        send(marker, marker)
        wait_for(lambda: len(journalctl_json("-t", marker)) == 1, 10, "the marker line")
        entries = journalctl_json("-n", "1")
    return str(entries[-1]["__CURSOR"])


def cgroup_root() -> Path | None:
    """Where journald looks up a sender's unit: the cgroup2 (unified) hierarchy."""
    for p in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (p / "cgroup.procs").exists() and (p / "cgroup.controllers").exists():
            return p
    return None


_WRITER = r"""
import json, sys
from systemd import journal
for line in sys.stdin:
    d = json.loads(line)
    msg = d.pop("message")
    journal.send(msg, **d)
    print("ok", flush=True)
"""


class UnitWriter:
    """A writer process inside cgroup `<unit>`, so its lines carry `_SYSTEMD_UNIT=<unit>`.

    It stays alive until closed: journald reads the sender's cgroup from /proc
    when it handles the line, so a sender that already exited has no unit.
    """

    def __init__(self, unit: str) -> None:
        root = cgroup_root()
        if root is None:
            raise RuntimeError("no cgroup2 hierarchy to put a unit's processes in")
        self.unit = unit
        self.cgroup = root / unit
        self.cgroup.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        (self.cgroup / "cgroup.procs").write_text(str(self.proc.pid))

    def send(self, message: str, identifier: str, priority: int = 6) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        d = {"message": message, "SYSLOG_IDENTIFIER": identifier, "PRIORITY": str(priority)}
        self.proc.stdin.write((json.dumps(d) + "\n").encode())
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == b"ok"

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        with contextlib.suppress(OSError):
            self.cgroup.rmdir()

    def __enter__(self) -> UnitWriter:
        return self

    def __exit__(
        self,
        t: type[BaseException] | None,
        e: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
