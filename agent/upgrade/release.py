"""Releases on disk: strict extraction from the .deb, the `current` flip, pruning.

Root side. The artifact is untrusted input even after its digest checked out
(a signed artifact can still be a mistake): only regular files and directories
under ./opt/harmony-agent/releases/<version>/ are extracted. A symlink is
refused (real releases have none; one to `/var/lib/harmony-agent/...` would
load code the agent can write into a root process), modes are clamped to
0755/0644 (root's code is never writable by anyone else), sizes are bounded,
and the bytecode is compiled without following a link. dpkg is never run
(ADR-022 §9); `dpkg-deb --fsys-tarfile` only reads.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO

from agent.durable import fsync_dir
from agent.upgrade.layout import MARKER
from harmony_core.errors import UpgradeError
from harmony_core.versions import Version, parse_version

__all__ = [
    "ExtractLimits",
    "current_version",
    "extract_release",
    "flip_current",
    "is_complete",
    "is_safe_release_dir",
    "packaged_versions",
    "prune_releases",
    "remove_partials",
]


class ExtractLimits:
    def __init__(self, max_bytes: int = 2 * 1024**3, max_members: int = 100_000) -> None:
        self.max_bytes = max_bytes
        self.max_members = max_members


def is_complete(release: Path) -> bool:
    return (release / MARKER).is_file() and not (release / MARKER).is_symlink()


def current_version(root: Path) -> str | None:
    """The release name `root/current` points at, or None when it is missing or odd."""
    try:
        target = os.readlink(root / "current")
    except OSError:
        return None
    p = PurePosixPath(target)
    if len(p.parts) >= 2 and p.parent.name == "releases":
        return p.name
    return None


def flip_current(root: Path, version: str) -> None:
    """Point `root/current` at releases/<version> atomically: symlink to a temp name + rename."""
    tmp = root / f".current.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(f"releases/{version}", tmp)
    os.replace(tmp, root / "current")
    fsync_dir(root)


def packaged_versions(dpkg_list: Path, releases: Path) -> set[str]:
    """Release names dpkg installed (listed in its .list file): never pruned, never deleted."""
    out: set[str] = set()
    try:
        lines = dpkg_list.read_text(errors="replace").splitlines()
    except OSError:
        return out
    prefix = str(releases).rstrip("/") + "/"
    for line in lines:
        if line.startswith(prefix):
            name = line[len(prefix):].split("/", 1)[0]
            if name:
                out.add(name)
    return out


def remove_partials(releases: Path, also: Iterable[str] = ()) -> list[str]:
    """Delete half-written releases (`*.tmp`, plus the named ones if they lack their marker)."""
    removed: list[str] = []
    if not releases.is_dir():
        return removed
    for p in releases.iterdir():
        partial = p.name.endswith(".tmp") or (p.name in also and not is_complete(p))
        if partial and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            removed.append(p.name)
    if removed:
        fsync_dir(releases)
    return removed


def prune_releases(
    releases: Path, keep: int, running: str, previous: str | None, protect: set[str]
) -> list[str]:
    """Remove complete releases beyond `keep` (running first, then previous, then newest)."""
    names = [p.name for p in releases.iterdir() if p.is_dir() and not p.name.endswith(".tmp")]
    ranked = [running] + ([previous] if previous and previous != running else [])
    versions: list[tuple[Version, str]] = []
    odd: list[str] = []
    for n in names:
        if n in ranked:
            continue
        try:
            versions.append((parse_version(n), n))
        except ValueError:
            odd.append(n)
    rest = [n for _, n in sorted(versions, key=lambda x: x[0], reverse=True)] + sorted(odd)
    keep_set = set(ranked[:keep]) | set(rest[: max(0, keep - len(ranked))]) | protect
    removed = []
    for name in names:
        if name not in keep_set:
            shutil.rmtree(releases / name, ignore_errors=True)
            removed.append(name)
    if removed:
        fsync_dir(releases)
    return removed


def _member_rel(name: str, prefix: PurePosixPath) -> PurePosixPath | None:
    """The path of `name` inside the release, None when outside it; UpgradeError when unsafe."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise UpgradeError(f"the artifact has an unsafe path {name!r}")
    parts = [x for x in p.parts if x != "."]
    n = len(prefix.parts)
    if parts[:n] != list(prefix.parts):
        return None
    return PurePosixPath(*parts[n:]) if len(parts) > n else PurePosixPath()


def _extract_stream(
    tar: tarfile.TarFile, dest: Path, prefix: PurePosixPath, limits: ExtractLimits
) -> int:
    total = 0
    count = 0
    files: set[PurePosixPath] = set()
    dirs: set[PurePosixPath] = set()
    for m in tar:
        count += 1
        if count > limits.max_members:
            raise UpgradeError(f"the artifact has more than {limits.max_members} entries")
        rel = _member_rel(m.name, prefix)
        if rel is None or rel == PurePosixPath() or rel == PurePosixPath(MARKER):
            continue
        if rel in files or (rel in dirs and not m.isdir()):
            raise UpgradeError(f"the artifact has {m.name!r} twice")
        target = dest / rel
        # Root's code: writable by root alone, executable where the build said so.
        mode = 0o755 if m.mode & 0o111 else 0o644
        if m.isdir():
            target.mkdir(mode=0o755, parents=True, exist_ok=True)
            os.chmod(target, 0o755, follow_symlinks=False)
            dirs.add(rel)
        elif m.isreg():
            total += m.size
            if total > limits.max_bytes:
                raise UpgradeError(f"the artifact unpacks to more than {limits.max_bytes} bytes")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            if src is None:  # pragma: no cover - isreg() members always have data
                raise UpgradeError(f"cannot read {m.name!r} from the artifact")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(src, out, 1024 * 1024)
                os.fchmod(out.fileno(), mode)
            files.add(rel)
        elif m.issym():
            raise UpgradeError(
                f"the artifact has a symlink {m.name!r} -> {m.linkname!r} "
                "(a release has none: build it with packaging/deb/build.sh)"
            )
        elif m.islnk():
            # A hard link to a file extracted before it, inside the release: copy it.
            src_rel = _member_rel(m.linkname, prefix)
            if src_rel is None or src_rel not in files:
                raise UpgradeError(f"the artifact hard-links outside its release: {m.name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dest / src_rel, target, follow_symlinks=False)
            os.chmod(target, mode, follow_symlinks=False)
            files.add(rel)
        else:
            raise UpgradeError(f"the artifact has a device, fifo or other special file: {m.name!r}")
    return total


def _compile_bytecode(tmp: Path, final: Path) -> None:
    """Bytecode for the new release (each start ~0.3 s faster), named for its final path.

    A cache: the launcher runs `python3 -B`, which reads it and never writes; a
    file that does not compile is left to compile in memory at import. The walk
    never follows a link and a `__pycache__` that is not a real directory of
    ours is skipped, so no .pyc is ever written outside the release.
    """
    import importlib.util
    import py_compile

    for here, subdirs, names in os.walk(tmp, followlinks=False):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"]
        for name in names:
            src = Path(here) / name
            if not name.endswith(".py") or not stat.S_ISREG(os.lstat(src).st_mode):
                continue
            rel = src.relative_to(tmp)
            cfile = Path(importlib.util.cache_from_source(str(src)))
            cache = cfile.parent
            try:
                cache.mkdir(mode=0o755, exist_ok=True)
                if not stat.S_ISDIR(os.lstat(cache).st_mode):
                    continue
                py_compile.compile(
                    str(src),
                    cfile=str(cfile),
                    dfile=str(final / rel),
                    doraise=True,
                    invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
                )
                os.chmod(cfile, 0o644, follow_symlinks=False)
            except (py_compile.PyCompileError, OSError, ValueError, SyntaxError):
                continue


def extract_release(
    deb: Path,
    releases: Path,
    version: str,
    *,
    marker_text: str,
    dpkg_deb: str = "dpkg-deb",
    limits: ExtractLimits | None = None,
) -> Path:
    """Unpack ./opt/harmony-agent/releases/<version>/ of `deb` into releases/<version>.

    Written to `<version>.tmp`, synced, the marker written last, then renamed;
    a crash at any point leaves either no release or a complete one.
    """
    limits = limits or ExtractLimits()
    final = releases / version
    tmp = releases / f"{version}.tmp"
    if final.exists() and is_complete(final):
        return final
    releases.mkdir(parents=True, exist_ok=True)
    for stale in (tmp, final):
        if stale.is_symlink() or stale.is_file():
            stale.unlink()
        elif stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir(mode=0o755)
    prefix = PurePosixPath("opt", "harmony-agent", "releases", version)
    proc = subprocess.Popen(
        [dpkg_deb, "--fsys-tarfile", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        stream: IO[bytes] = proc.stdout
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                total = _extract_stream(tar, tmp, prefix, limits)
        except tarfile.TarError as e:
            raise UpgradeError(f"the artifact's data is not a valid tar archive: {e}") from e
        stream.read()  # drain, so dpkg-deb never blocks on a full pipe
    except BaseException:
        proc.kill()
        raise
    finally:
        try:
            err = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
    if proc.returncode != 0:
        raise UpgradeError(
            f"dpkg-deb could not read the artifact: {err.decode(errors='replace').strip()}"
        )
    if total == 0 or not any(tmp.iterdir()):
        raise UpgradeError(
            f"the artifact has no files under /opt/harmony-agent/releases/{version}/ "
            "(is it a harmony-agent .deb of that version?)"
        )
    _compile_bytecode(tmp, final)
    os.sync()  # every extracted file on disk before the marker says "complete"
    fd = os.open(tmp / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(marker_text)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    os.rename(tmp, final)
    fsync_dir(releases)
    return final


def is_safe_release_dir(path: Path) -> bool:
    """A real directory (not a symlink) — what a rollback target must be."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode)
