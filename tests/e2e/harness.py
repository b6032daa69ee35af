"""A booted Debian 12 for end-to-end tests: debootstrap + systemd-nspawn + nsenter.

What it gives you (root, a host with debootstrap, systemd-container, util-linux):

    base = base_tree()                      # debootstrap'd once, cached by package list
    with Container.create(base, name="e2e-demo") as c:   # `cp -a` of the base
        c.boot()                            # systemd-nspawn --boot, waits for systemd
        c.install_deb(deb)                  # apt-get install /root/<deb> (no network needed)
        c.wait_active("harmony-agent")
        c.run(["harmony-agent", "status"])  # nsenter into every namespace of the init
        c.journal("harmony-agent")          # journalctl -o json, parsed
        c.reboot()                          # poweroff() + boot(): same tree, same machine-id
        c.kill()                            # power cut: SIGKILL of the container's init
    # leaving the `with` powers off and deletes the tree (HARMONY_E2E_KEEP=1 keeps it)

Fixtures and helpers for scenarios are in tests/e2e/conftest.py: `base` (the
tree), `debs` (the checkout's version and a newer build, built once per
session by tests/packaging/debbuild.py), `nats` (a nats-server with the fleet
layout), `agent_toml()` and `provision()` (a config pointing at it).

Facts worth knowing:
- The network is the host's (no --private-network): a nats-server the test
  starts on 127.0.0.1 is reachable from inside as 127.0.0.1 too.
- /tmp and /run inside are fresh tmpfs mounts: `copy_in` targets like /root or
  /var survive a reboot, anything under /tmp does not.
- Every container gets its own stable /etc/machine-id (the agent's default
  device_id), kept across reboots; `Container.machine_id` tells it.
- The base tree has no apt lists and needs no mirror after debootstrap: every
  Depends of the package is preinstalled (`DEFAULT_PACKAGES` + `extra`).
- The tree cache lives in $HARMONY_E2E_CACHE (default /var/cache/harmony-e2e),
  one directory per hash of (suite, mirror, package list); delete it to rebuild.
  Containers live under $HARMONY_E2E_WORK (default /var/tmp/harmony-e2e).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "DEFAULT_PACKAGES",
    "Container",
    "ContainerError",
    "base_tree",
    "booted",
    "missing_tools",
    "package_depends",
]

SUITE = "bookworm"
MIRROR = os.environ.get("HARMONY_E2E_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("HARMONY_E2E_CACHE", "/var/cache/harmony-e2e"))
WORK = Path(os.environ.get("HARMONY_E2E_WORK", "/var/tmp/harmony-e2e"))
KEEP = os.environ.get("HARMONY_E2E_KEEP") == "1"
# Bump when the preparation below changes, so old caches are not reused.
_TREE_FORMAT = "3"

CONTROL = Path(__file__).resolve().parents[2] / "packaging" / "deb" / "control.in"


def package_depends(control: Path = CONTROL) -> tuple[str, ...]:
    """The package names in the Depends of packaging/deb/control.in (no versions)."""
    for line in control.read_text().splitlines():
        if line.startswith("Depends:"):
            names = (d.split("(")[0].split("|")[0].strip() for d in line[8:].split(","))
            return tuple(sorted({n for n in names if n}))
    return ()


# A booting systemd, apt, and every Depends of the harmony-agent package, so
# installing it needs no mirror. debootstrap does not resolve virtual packages:
# python3-zstandard's python3-cffi-backend-api-* come from python3-cffi-backend.
DEFAULT_PACKAGES = tuple(
    sorted({"systemd", "systemd-sysv", "dbus", "apt", "python3-cffi-backend",
            *package_depends()})
)
# Units that would only add noise or run apt behind a test's back.
_MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "systemd-timesyncd.service",
)
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}
_TOOLS = ("debootstrap", "systemd-nspawn", "nsenter", "dpkg-deb")


class ContainerError(RuntimeError):
    """The container could not be built, booted, or did not reach the asked state."""


def missing_tools() -> list[str]:
    """What this host lacks to run containers (root and the tools); empty when all is there."""
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0:
        missing.insert(0, "root")
    return missing


def _wait(cond: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ContainerError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def base_tree(extra: Sequence[str] = ()) -> Path:
    """A debootstrap'd bookworm with `DEFAULT_PACKAGES` + `extra`, built once and cached.

    Safe to call from concurrent test sessions: a lock file serialises the build.
    """
    packages = sorted(set(DEFAULT_PACKAGES) | set(extra))
    key = hashlib.sha256(
        "\n".join([_TREE_FORMAT, SUITE, MIRROR, *packages]).encode()
    ).hexdigest()[:16]
    home = CACHE / key
    tree = home / "root"
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (home / "complete").exists():
            return tree
        tmp = home / "root.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tree, ignore_errors=True)
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
             SUITE, str(tmp), MIRROR],
            capture_output=True, text=True, timeout=900,
        )
        if proc.returncode != 0:
            raise ContainerError(f"debootstrap failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        _prepare_tree(tmp)
        tmp.rename(tree)
        (home / "packages").write_text("\n".join(packages) + "\n")
        (home / "complete").write_text("")
    return tree


def _prepare_tree(root: Path) -> None:
    """Make the fresh tree a quiet, offline, identity-less image."""
    for unit in _MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # Identity is per container (Container.create writes it).
    (root / "etc/machine-id").write_text("")
    shutil.rmtree(root / "var/log/journal", ignore_errors=True)
    (root / "var/log/journal").mkdir()
    # No apt lists: nothing may come from the network after debootstrap.
    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=False, capture_output=True)
    for f in (root / "var/lib/apt/lists").glob("*_*"):
        f.unlink()


class Container:
    """One systemd-nspawn container over its own copy of a base tree."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.workdir = root.parent
        self.console_log = self.workdir / "console.log"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._init_pid: int | None = None

    # --- life cycle ---------------------------------------------------------

    @classmethod
    def create(cls, base: Path, name: str | None = None) -> Container:
        """Copy `base` (cp -a) to a new work directory and give it an identity."""
        name = name or f"e2e-{uuid.uuid4().hex[:8]}"
        WORK.mkdir(parents=True, exist_ok=True)
        workdir = WORK / f"{name}-{uuid.uuid4().hex[:6]}"
        workdir.mkdir()
        root = workdir / "root"
        subprocess.run(["cp", "-a", str(base), str(root)], check=True)
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        (root / "etc/hostname").write_text(name + "\n")
        return cls(root, name)

    @property
    def machine_id(self) -> str:
        return (self.root / "etc/machine-id").read_text().strip()

    @property
    def running(self) -> bool:
        return self._nspawn is not None and self._nspawn.poll() is None

    def boot(self, timeout: float = 90) -> None:
        """Boot the tree and wait until systemd reports running (or degraded)."""
        if self.running:
            raise ContainerError(f"{self.name} is already running")
        with open(self.console_log, "ab") as console:
            self._nspawn = subprocess.Popen(
                ["systemd-nspawn", "--boot", "--register=no", "--keep-unit", "--console=passive",
                 f"--machine={self.name}", "-D", str(self.root)],
                stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._init_pid = None
        self._init_pid = _wait(self._find_init, 30, f"{self.name}'s init")
        state = _wait(self._system_state, timeout, f"{self.name} to boot")
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend"]).stdout
            print(f"{self.name} booted degraded; failed units:\n{failed}")

    def _find_init(self) -> int | None:
        if self._nspawn is None or self._nspawn.poll() is not None:
            raise ContainerError(f"systemd-nspawn exited:\n{self.console_tail()}")
        parent = str(self._nspawn.pid)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                comm = (stat.parent / "comm").read_text().strip()
            except OSError:
                continue
            # The nspawn child execs systemd as the container's PID 1.
            if fields[1] == parent and comm == "systemd":
                return int(stat.parent.name)
        return None

    def _system_state(self) -> str | None:
        out = self.run(["systemctl", "is-system-running"], timeout=10).stdout.strip()
        return out if out in ("running", "degraded") else None

    def poweroff(self, timeout: float = 60) -> None:
        """A clean shutdown from inside; kills the container if it does not stop in time."""
        if not self.running:
            return
        assert self._nspawn is not None
        with contextlib.suppress(ContainerError, subprocess.TimeoutExpired):
            self.run(["systemctl", "poweroff", "--no-block"], timeout=10)
        try:
            self._nspawn.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ContainerError(f"{self.name} did not power off in {timeout}s") from None
        finally:
            self._init_pid = None

    def reboot(self, timeout: float = 90) -> None:
        """Power off cleanly and boot the same tree again (nspawn ends on a guest reboot)."""
        self.poweroff()
        self.boot(timeout)

    def kill(self) -> None:
        """Power cut: SIGKILL the container's init (and with it every process inside)."""
        if self._init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._init_pid, signal.SIGKILL)
        if self._nspawn is not None:
            try:
                self._nspawn.wait(15)
            except subprocess.TimeoutExpired:
                self._nspawn.kill()
                self._nspawn.wait(15)
        self._init_pid = None

    def destroy(self) -> None:
        """Stop it if needed and delete its tree (unless HARMONY_E2E_KEEP=1)."""
        try:
            self.poweroff()
        except ContainerError:
            self.kill()
        if KEEP:
            print(f"kept container tree {self.root}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- commands -----------------------------------------------------------

    def run(
        self,
        cmd: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 120,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` inside every namespace of the container's init; text output."""
        if self._init_pid is None:
            raise ContainerError(f"{self.name} is not booted")
        proc = subprocess.run(
            ["/usr/bin/nsenter", "-t", str(self._init_pid), "-a", *cmd],
            input=input, capture_output=True, text=True, timeout=timeout,
            env={**_ENV, **(env or {})},
        )
        if check and proc.returncode != 0:
            raise ContainerError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """`run(["sh", "-c", script])`."""
        return self.run(["sh", "-c", script], **kw)

    def write_file(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Write a file inside; through the container when booted (tmpfs paths work too)."""
        raw = data.encode() if isinstance(data, str) else data
        if self._init_pid is None:
            target = self.root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(raw)
            target.chmod(mode)
            return
        proc = subprocess.run(
            ["/usr/bin/nsenter", "-t", str(self._init_pid), "-a",
             "sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
             "sh", path, f"{mode:o}"],
            input=raw, capture_output=True, timeout=60, env=_ENV,
        )
        if proc.returncode != 0:
            raise ContainerError(f"writing {path} failed: {proc.stderr.decode(errors='replace')}")

    def read_file(self, path: str) -> str:
        return self.run(["cat", path], check=True).stdout

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path]).returncode == 0

    def copy_in(self, src: Path, dest: str) -> str:
        """Copy a host file to `dest` inside (not under /tmp or /run: those are tmpfs)."""
        if dest.startswith(("/tmp/", "/run/")) and self._init_pid is not None:
            self.write_file(dest, src.read_bytes())
            return dest
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        return dest

    def install_deb(self, deb: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`apt-get install` the .deb (copied to /root); Depends resolve from the installed set."""
        inside = self.copy_in(deb, f"/root/{deb.name}")
        return self.apt(["install", "-y", "--no-install-recommends", inside], check=check)

    def apt(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """apt-get, non-interactive, keeping changed conffiles (like an unattended device)."""
        return self.run(
            ["apt-get", "-o", "Dpkg::Options::=--force-confold", "-o", "Dpkg::Use-Pty=0", *args],
            check=check, timeout=300, env={"DEBIAN_FRONTEND": "noninteractive"},
        )

    # --- systemd ------------------------------------------------------------

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show -p ...` as a dict."""
        args = [a for p in props for a in ("-p", p)]
        out = self.run(["systemctl", "show", *args, unit], check=True).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait_state(self, unit: str, states: Sequence[str], timeout: float = 60) -> str:
        """Wait until `unit`'s ActiveState is one of `states`; returns it."""
        def current() -> str | None:
            state = self.show(unit, "ActiveState")["ActiveState"]
            return state if state in states else None

        try:
            result: str = _wait(current, timeout, f"{unit} to become {'/'.join(states)}")
        except ContainerError as e:
            raise ContainerError(f"{e}\n{self.status(unit)}") from None
        return result

    def wait_active(self, unit: str, timeout: float = 60) -> None:
        self.wait_state(unit, ["active"], timeout)

    def status(self, unit: str) -> str:
        """`systemctl status` plus the unit's last journal lines, for failure messages."""
        return self.run(["systemctl", "status", "--no-pager", "-l", "-n", "30", unit]).stdout

    def journal(self, unit: str | None = None, *args: str) -> list[dict[str, Any]]:
        """The journal (of `unit`, this boot unless args say otherwise) as JSON records."""
        cmd = ["journalctl", "--no-pager", "-o", "json", *args]
        if unit is not None:
            cmd += ["-u", unit]
        out = self.run(cmd, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def messages(self, unit: str, *args: str) -> list[str]:
        """Just the MESSAGE text of `journal(unit)`."""
        return [str(r.get("MESSAGE", "")) for r in self.journal(unit, *args)]


@contextlib.contextmanager
def booted(base: Path, name: str | None = None) -> Iterator[Container]:
    """A created and booted container, destroyed afterwards."""
    with Container.create(base, name) as c:
        c.boot()
        yield c
