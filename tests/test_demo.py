"""`make demo`: everything under DEMO_DIR, the agent stopped before NATS, only its own processes.

The end-to-end test runs scripts/demo.sh for real (nats-server on a free port, the agent,
the machine's journald) under `strace -f` and reads back every file the demo's processes
created, wrote, renamed or removed: each must lie under DEMO_DIR.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harmony_core.settings import NatsSection
from tests.agentproc import run_bus
from tests.logs.journald import Journald, unique
from tests.natsserver import NatsServer, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "scripts" / "demo.sh"
# Host-wide paths an agent with the default config writes: the demo must never touch them.
HOST_PATHS = (Path("/run/harmony-agent"), Path("/var/lib/harmony-agent"))


def _demo(demo_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEMO), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DEMO_DIR": str(demo_dir), **env},
    )


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "300"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


# --- the pid files: stop signals only what the demo started -----------------------


def test_stop_leaves_alone_a_process_that_merely_has_the_recorded_pid(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    d = tmp_path / "demo"
    d.mkdir()
    for name in ("agent", "nats-server", "journald"):
        # Same pid, another start time: the pid was reused by someone else's process.
        (d / f"{name}.pid").write_text(f"{sleeper.pid} 1\n")
    r = _demo(d, "stop")
    assert r.returncode == 0, r.stderr
    assert sleeper.poll() is None, "demo-stop killed a process it did not start"
    assert "stopped" not in r.stdout.replace("not started", ""), r.stdout
    assert not list(d.glob("*.pid"))


def test_stop_stops_the_agent_before_nats_and_says_so(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    d = tmp_path / "demo"
    d.mkdir()
    nats = subprocess.Popen(["sleep", "300"])
    try:
        (d / "agent.pid").write_text(f"{sleeper.pid} {_start_time(sleeper.pid)}\n")
        (d / "nats-server.pid").write_text(f"{nats.pid} {_start_time(nats.pid)}\n")
        r = _demo(d, "stop")
        assert r.returncode == 0, r.stderr
        assert sleeper.wait(5) == -signal.SIGTERM and nats.wait(5) == -signal.SIGTERM
        lines = r.stdout.splitlines()
        agent = lines.index(f"== stopped the agent (pid {sleeper.pid})")
        server = lines.index(f"== stopped nats-server (pid {nats.pid})")
        assert agent < server, r.stdout
    finally:
        nats.kill()
        nats.wait()


def test_clean_removes_only_a_demo_directory(tmp_path: Path) -> None:
    other = tmp_path / "precious"
    other.mkdir()
    (other / "data").write_text("keep")
    r = _demo(other, "clean")
    assert r.returncode != 0 and "not a demo directory" in r.stderr
    assert (other / "data").read_text() == "keep"


def test_start_refuses_a_nats_port_it_did_not_open(tmp_path: Path) -> None:
    with socket.socket() as other:  # someone else's server on the port
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = _demo(tmp_path / "demo", "start", NATS_PORT=str(port))
    assert r.returncode != 0
    assert f"port {port} is taken by a process this demo did not start" in r.stderr
    assert "NATS_PORT=" in r.stderr
    assert not (tmp_path / "demo" / "nats-server.pid").exists()


# --- the whole demo ---------------------------------------------------------------

_WRITE_FLAGS = re.compile(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+= (?P<ret>-?\d+)")
_PATH = re.compile(r'(?:(AT_FDCWD|\d+<(?P<dir>[^>]*)>), )?"(?P<path>(?:[^"\\]|\\.)*)"')
_TRACED = (
    "open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,link,linkat,"
    "symlink,symlinkat,truncate,chmod,fchmodat,chdir,fchdir,clone,clone3,fork,vfork"
)


def _can_strace() -> bool:
    if not shutil.which("strace"):
        return False
    r = subprocess.run(["strace", "-o", "/dev/null", "true"], capture_output=True)
    return r.returncode == 0


def _traced(trace_dir: Path, *cmd: str) -> list[str]:
    """`cmd` under strace: one file per process in trace_dir, fds shown with their paths."""
    return ["strace", "-ff", "-y", "-qq", "-o", str(trace_dir / "trace"), "-e",
            f"trace={_TRACED}", *cmd]  # fmt: skip


def written_paths(trace_prefix: Path, start_cwd: Path) -> set[str]:
    """Every path the traced processes created, wrote, renamed, linked or removed.

    `strace -ff -y` writes one file per process; a relative path is resolved against
    that process's working directory, which a child inherits at its fork.
    """
    files = {int(p.name.rsplit(".", 1)[1]): p for p in trace_prefix.parent.glob("trace.*")}
    children: dict[int, set[int]] = {}
    calls: dict[int, list[re.Match[str]]] = {}
    for pid, f in files.items():
        calls[pid] = [m for line in f.read_text().splitlines() if (m := _CALL.match(line))]
        children[pid] = {
            int(m["ret"])
            for m in calls[pid]
            if m["name"] in ("clone", "clone3", "fork", "vfork") and int(m["ret"]) > 0
        }
    spawned = set().union(*children.values())
    roots = [p for p in files if p not in spawned]
    assert len(roots) == 1, f"cannot tell the first process of the trace: {roots}"
    out: set[str] = set()
    todo = [(roots[0], str(start_cwd))]
    while todo:
        pid, cwd = todo.pop()
        for m in calls.get(pid, []):
            name, args, ret = m["name"], m["args"], int(m["ret"])
            if ret < 0:
                continue
            found = [
                os.path.normpath(os.path.join(pm["dir"] or cwd, pm["path"]))
                for pm in _PATH.finditer(args)
            ]
            if name in ("clone", "clone3", "fork", "vfork"):
                todo.append((ret, cwd))
            elif name == "chdir":
                cwd = found[0]
            elif name == "fchdir":
                cwd = re.match(r"\d+<([^>]*)>", args)[1]  # type: ignore[index]
            elif name in ("open", "openat"):
                if _WRITE_FLAGS.search(args):
                    out.add(found[0])
            elif name in ("symlink", "symlinkat", "link", "linkat"):
                out.add(found[-1])
            else:
                out.update(found)
    return out


@pytest.mark.journald
@pytest.mark.skipif(os.geteuid() != 0, reason="the demo runs as root (make demo)")
def test_demo_keeps_to_its_dir_and_records_stopped(journald: Journald, tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    port = free_port()
    device = unique("demo")
    env = {
        **os.environ,
        "DEMO_DIR": str(demo_dir),
        "NATS_PORT": str(port),
        "DEMO_DEVICE_ID": device,
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("NATS_URL", None)
    before = {p: p.exists() for p in HOST_PATHS}
    journalds = _journald_pids()
    out = tmp_path / "demo.out"
    traced = _can_strace()
    cmd = ["bash", str(DEMO), "start"]
    if traced:
        trace_dir = tmp_path / "trace"
        trace_dir.mkdir()
        cmd = _traced(trace_dir, *cmd)
    with open(out, "wb") as f:
        # strace ends only when every traced process has (after the stop, below).
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for(
            lambda: "demo-clean" in out.read_text() or "demo: " in out.read_text(),
            90,
            "the demo to come up",
        )
        text = out.read_text()
        log = demo_dir / "agent.log"
        assert "demo: " not in text, text + (log.read_text()[-3000:] if log.exists() else "")
        assert re.search(rf"^{device}\s+Ready\s", text, re.M), text
        # it enrolled itself with its own key through the auth callout
        assert re.search(rf"^approved\s+{device}\s", text, re.M), text
        assert "auth-enrolled" in (demo_dir / "authd.log").read_text()
        assert "using the running systemd-journald" in text
        assert f"127.0.0.1:{port}" in text

        cfg = demo_dir / "agent.toml"
        st = subprocess.run(
            [sys.executable, "-m", "agent.cli", "-c", str(cfg), "status", "--json"],
            capture_output=True,
            text=True,
        )
        assert st.returncode == 0, st
        assert json.loads(st.stdout)["device_id"] == device
        assert (demo_dir / "run" / "health.json").exists()
        assert (demo_dir / "state").is_dir()
    finally:
        stop = _demo(demo_dir, "stop")
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert stop.returncode == 0, stop.stderr
    assert "stopped the agent" in stop.stdout and "stopped nats-server" in stop.stdout
    assert "stopped the auth callout" in stop.stdout
    assert "left running" in stop.stdout
    assert proc.returncode == 0, out.read_text()

    # Nothing outside DEMO_DIR, and the machine's journald untouched.
    assert {p: p.exists() for p in HOST_PATHS} == before
    assert _journald_pids() == journalds
    if traced:
        outside = {
            p
            for p in written_paths(trace_dir / "trace", tmp_path)
            if not p.startswith(f"{demo_dir}/") and p != str(demo_dir)
        }
        # The demo's own directory is made by `mkdir -p`, component by component.
        outside -= {str(tmp_path), "/dev/null", "/dev/tty"}
        assert not outside, f"the demo wrote outside {demo_dir}: {sorted(outside)}"

    # The agent stopped while NATS was still up: its last heartbeat says `stopping`.
    # (The demo's server config: the devices' account, the operator's key.)
    srv = NatsServer(demo_dir / "nats", port=port, extra=["-c", str(demo_dir / "nats.conf")])
    srv.start()
    operator = demo_dir / "auth" / "operator.nk"
    try:
        got = run_bus(
            NatsSection(servers=[srv.url], nkey_seed_file=operator),
            lambda bus: bus.kv_get("device-heartbeat", device),
        )
        assert got is not None and json.loads(got.value)["state"] == "stopping", got
        devices = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "harmony-fleet"), "-s", srv.url, "--nkey",
             str(operator), "devices", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        rows = {r["device_id"]: r for r in json.loads(devices.stdout)}
        assert rows[device]["status"] == "Stopped", rows
    finally:
        srv.stop()

    clean = _demo(demo_dir, "clean")
    assert clean.returncode == 0, clean.stderr
    assert not demo_dir.exists()
    assert f"removed {demo_dir}" in clean.stdout


def _journald_pids() -> set[int]:
    r = subprocess.run(["pgrep", "-x", "systemd-journal"], capture_output=True, text=True)
    return {int(x) for x in r.stdout.split()}


def test_trace_reader_resolves_relative_paths(tmp_path: Path) -> None:
    """The trace reader itself can find a write outside the demo (so the check can fail)."""
    if not _can_strace():
        pytest.skip("strace missing or not permitted here")
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    (tmp_path / "a").mkdir()
    script = "cd a && mkdir -p b/c && echo x > b/c/f && (cd b && touch g) && cat /etc/hostname"
    subprocess.run(
        _traced(trace_dir, "bash", "-c", script),
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    time.sleep(0)  # strace has exited: its files are complete
    got = written_paths(trace_dir / "trace", tmp_path)
    a = tmp_path / "a"
    assert {str(a / "b"), str(a / "b" / "c"), str(a / "b" / "c" / "f"), str(a / "b" / "g")} <= got
    assert "/etc/hostname" not in got
