"""A small stand-in for systemd outside systemd: runs the release `current` points at.

It implements the switch's UnitControl with a real process and a real
NOTIFY_SOCKET: READY=1 makes it active/running, an exit makes it restart after
`restart_s` with NRestarts counted, a manual restart zeroes the count (as
systemd does). The real-systemd proof is the E2E; this lets the switch run
against temp dirs in a normal test.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from agent.upgrade.confirm import UnitState

__all__ = ["Supervisor"]


class Supervisor:
    def __init__(self, current: Path, config: Path, workdir: Path, restart_s: float = 0.3,
                 env: dict[str, str] | None = None) -> None:
        self.current = current
        self.config = config
        self.workdir = workdir
        self.restart_s = restart_s
        self.env = env or {}
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._active = "inactive"
        self._sub = "dead"
        self._restarts = 0
        self._status = 0
        self._wanted = False
        self._stop = threading.Event()
        self.lines: collections.deque[tuple[datetime, str]] = collections.deque(maxlen=500)
        self.notify_path = workdir / f"notify-{time.monotonic_ns()}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.notify_path))
        self._sock.settimeout(0.1)
        self._threads = [threading.Thread(target=self._notify_loop, daemon=True),
                         threading.Thread(target=self._reap_loop, daemon=True)]
        for t in self._threads:
            t.start()

    # --- UnitControl --------------------------------------------------------

    def restart(self) -> None:
        with self._lock:
            self._terminate()
            self._restarts = 0
            self._wanted = True
            self._spawn()

    def state(self) -> UnitState:
        with self._lock:
            pid = self._proc.pid if self._proc is not None and self._proc.poll() is None else 0
            return UnitState(self._active, self._sub, self._restarts, pid, self._status or None)

    def log_tail(self, since: datetime, lines: int = 20) -> list[str]:
        with self._lock:
            return [f"{t.isoformat()} {text}" for t, text in self.lines if t >= since][-lines:]

    # --- test helpers -------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._wanted = True
            if self._proc is None:
                self._spawn()

    def kill_agent(self) -> None:
        """SIGKILL the agent (it restarts like under Restart=always)."""
        with self._lock:
            if self._proc is not None:
                self._proc.kill()

    def stop(self) -> None:
        with self._lock:
            self._wanted = False
            self._terminate()

    def close(self) -> None:
        self.stop()
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self._sock.close()
        with contextlib.suppress(OSError):
            self.notify_path.unlink()

    # --- internals ----------------------------------------------------------

    def _spawn(self) -> None:
        release = os.path.realpath(self.current)
        env = {**os.environ, **self.env, "PYTHONPATH": release,
               "NOTIFY_SOCKET": str(self.notify_path)}
        env.pop("JOURNAL_STREAM", None)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "-c", str(self.config), "run"],
            cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._active, self._sub, self._status = "activating", "start", 0
        proc = self._proc
        threading.Thread(target=self._read_stderr, args=(proc,), daemon=True).start()

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for raw in proc.stderr:
                self.lines.append((datetime.now(UTC), raw.decode(errors="replace").rstrip()))

    def _terminate(self) -> None:
        p = self._proc
        self._proc = None
        if p is not None and p.poll() is None:
            self._active, self._sub = "deactivating", "stop-sigterm"
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self._active, self._sub = "inactive", "dead"

    def _notify_loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(x.split("=", 1) for x in data.decode().splitlines() if "=" in x)
            with self._lock:
                if fields.get("READY") == "1" and self._proc is not None:
                    self._active, self._sub = "active", "running"

    def _reap_loop(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                p = self._proc
                if p is None or p.poll() is None:
                    continue
                self._status = p.returncode
                self._proc = None
                if not self._wanted:
                    self._active, self._sub = "inactive", "dead"
                    continue
                self._active, self._sub = "activating", "auto-restart"
                self._restarts += 1
            if self._stop.wait(self.restart_s):
                return
            with self._lock:
                if self._wanted and self._proc is None and self._sub == "auto-restart":
                    self._spawn()
