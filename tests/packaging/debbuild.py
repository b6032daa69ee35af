"""Build the agent's .deb from tests: `make deb`'s script, on a frozen copy of the source.

Tests never build from the live checkout directly: a snapshot of `agent/`,
`agent.example.toml`, `packaging/` and `docs/`, taken once per test session,
keeps every build of the session consistent while people edit the tree (the
snapshot's own packaging/deb/build.sh runs). Builds are cached per process,
so the packaging tests and the E2E scenarios share them.

    from tests.packaging.debbuild import build_deb
    deb = build_deb(arch="amd64")                     # the checkout's version
    newer = build_deb(arch="amd64", version="0.2.0")  # agent/version.py rewritten
    broken = build_deb(version="0.2.0+crash", src=my_modified_tree)
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = [
    "BUILD_SCRIPT",
    "REPO",
    "DebBuildError",
    "build_deb",
    "build_deb_uncached",
    "newer_version",
    "source_snapshot",
    "source_version",
]

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "packaging" / "deb" / "build.sh"
# A fixed timestamp: builds inside tests do not depend on the last commit.
TEST_SOURCE_DATE_EPOCH = "1704067200"

_lock = threading.RLock()
_cache: dict[tuple[str, str, str], Path] = {}
_workdir: Path | None = None
_snapshot: Path | None = None


class DebBuildError(RuntimeError):
    """packaging/deb/build.sh failed; the message carries its output."""


def _work() -> Path:
    """This process's build directory, deleted at exit (kept with HARMONY_E2E_KEEP=1)."""
    global _workdir
    if _workdir is None:
        _workdir = Path(tempfile.mkdtemp(prefix="harmony-debs-", dir="/var/tmp"))
        if os.environ.get("HARMONY_E2E_KEEP") != "1":
            atexit.register(shutil.rmtree, _workdir, True)
    return _workdir


def source_snapshot() -> Path:
    """A copy of what a build reads from the checkout, taken once per process."""
    global _snapshot
    with _lock:
        if _snapshot is None:
            dest = _work() / "src"
            for tree in ("agent", "harmony_core", "packaging", "docs"):
                if (REPO / tree).is_dir():
                    shutil.copytree(REPO / tree, dest / tree,
                                    ignore=shutil.ignore_patterns("__pycache__"))
            example = REPO / "agent.example.toml"
            if example.exists():
                shutil.copy2(example, dest / "agent.example.toml")
            _snapshot = dest
        return _snapshot


def source_version(src: Path | None = None) -> str:
    text = ((src or source_snapshot()) / "agent" / "version.py").read_text()
    found = re.search(r'^__version__ = "(.+)"$', text, re.M)
    if found is None:
        raise DebBuildError("agent/version.py has no __version__")
    return found.group(1)


def newer_version(version: str, tag: str = "e2e") -> str:
    """A version that both dpkg and semver order after `version`: patch + 1, `+tag`."""
    m = re.match(r"^(\d+)\.(\d+)\.(\d+)", version)
    if m is None:
        return f"{version}+{tag}"
    return f"{m[1]}.{m[2]}.{int(m[3]) + 1}+{tag}"


def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def build_deb_uncached(
    out: Path,
    *,
    arch: str = "amd64",
    version: str | None = None,
    src: Path | None = None,
    source_date_epoch: str = TEST_SOURCE_DATE_EPOCH,
) -> Path:
    """Run packaging/deb/build.sh into `out`; the path of the .deb."""
    env = {
        **os.environ,
        "ARCH": arch,
        "SRC": str(src or source_snapshot()),
        "OUT": str(out),
        "PYTHON": _python(),
        "SOURCE_DATE_EPOCH": source_date_epoch,
    }
    env.pop("VERSION", None)
    if version is not None:
        env["VERSION"] = version
    script = source_snapshot() / "packaging" / "deb" / "build.sh"
    proc = subprocess.run(
        ["bash", str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise DebBuildError(f"build.sh failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    deb = Path(proc.stdout.strip().splitlines()[-1])
    if not deb.is_absolute():
        deb = Path.cwd() / deb
    return deb


def build_deb(arch: str = "amd64", version: str | None = None, src: Path | None = None) -> Path:
    """A .deb of the session's source snapshot (or `src`), built once per process."""
    key = (arch, version or "", str(src or ""))
    with _lock:
        if key not in _cache:
            out = _work() / f"out-{len(_cache)}"
            _cache[key] = build_deb_uncached(out, arch=arch, version=version, src=src)
        return _cache[key]
