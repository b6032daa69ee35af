"""agent.durable: atomic replacement that survives a crash; reads that refuse what is not ours."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.durable import UnsafeFileError, atomic_write, fsync_dir, open_regular, read_bounded
from tests.blocking import must_return_within

REPO = Path(__file__).resolve().parent.parent


def test_atomic_write_replaces_with_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    atomic_write(path, b"one", mode=0o640)
    atomic_write(path, b"two", mode=0o600)
    assert path.read_bytes() == b"two"
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]


def test_atomic_write_without_fsync_still_replaces(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    atomic_write(path, b"a", mode=0o644, fsync=False)
    atomic_write(path, b"b", mode=0o644, fsync=False)
    assert path.read_bytes() == b"b" and path.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    atomic_write(path, b"old")
    (tmp_path / "blocker").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "blocker", b"new")  # os.replace onto a directory fails
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "state.json"]


def test_a_crash_between_write_and_replace_leaves_the_old_file(tmp_path: Path) -> None:
    """A real process dies (os._exit, no cleanup) after the temp file is synced, not renamed."""
    path = tmp_path / "state.json"
    atomic_write(path, b"old")
    child = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from agent import durable
        os.replace = lambda *a, **k: os._exit(9)  # the power goes out here
        durable.atomic_write(Path({str(path)!r}), b"new")
    """)
    proc = subprocess.run([sys.executable, "-c", child], cwd=REPO, timeout=60)
    assert proc.returncode == 9
    assert path.read_bytes() == b"old"
    left = [p for p in tmp_path.iterdir() if p.name != "state.json"]
    assert [p.read_bytes() for p in left] == [b"new"], "the synced temp file, never the target"
    atomic_write(path, b"next")  # a later write is not disturbed by the leftover
    assert path.read_bytes() == b"next"


def test_fsync_dir_accepts_a_directory_only(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")


def test_read_bounded_reads_up_to_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    assert read_bounded(path, 100) == b"x" * 100
    assert read_bounded(path, 10_000) == b"x" * 100
    (tmp_path / "empty").write_bytes(b"")
    assert read_bounded(tmp_path / "empty", 0) == b""


def test_read_bounded_refuses_an_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 101)
    with pytest.raises(UnsafeFileError, match="larger than 100 bytes") as e:
        read_bounded(path, 100)
    assert e.value.errno == errno.EFBIG and str(path) in str(e.value)


def test_read_bounded_stops_at_limit_plus_one_when_the_size_lies() -> None:
    """/proc files say st_size 0; the read must still stop, not trust the size."""
    with pytest.raises(UnsafeFileError, match="larger than 8 bytes"):
        read_bounded("/proc/self/status", 8)


def test_read_bounded_does_not_block_on_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with must_return_within(5), pytest.raises(UnsafeFileError, match="not a regular file"):
        read_bounded(fifo, 1024)


def test_read_bounded_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"secret")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UnsafeFileError, match="symlink") as e:
        read_bounded(link, 1024)
    assert e.value.errno == errno.ELOOP


def test_read_bounded_refuses_dev_zero_directly_and_through_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    with must_return_within(5):
        with pytest.raises(UnsafeFileError, match="symlink"):
            read_bounded(link, 1024)
        with pytest.raises(UnsafeFileError, match="not a regular file"):
            read_bounded("/dev/zero", 1024)


def test_read_bounded_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        read_bounded(tmp_path, 1024)


def test_read_bounded_relative_to_a_directory_fd(tmp_path: Path) -> None:
    (tmp_path / "name").write_bytes(b"here")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_bounded("name", 10, dir_fd=dfd) == b"here"
        with pytest.raises(FileNotFoundError):
            read_bounded("absent", 10, dir_fd=dfd)
    finally:
        os.close(dfd)


def test_open_regular_gives_an_fd_and_its_stat(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    fd, st = open_regular(tmp_path / "f")
    try:
        assert st.st_size == 3 and os.read(fd, 10) == b"abc"
    finally:
        os.close(fd)


# --- dir-fd variants: root writing into a directory the agent owns ---------------


def test_open_dir_refuses_a_symlink_and_a_file(tmp_path: Path) -> None:
    from agent.durable import open_dir

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("x")
    os.close(open_dir(tmp_path / "real"))
    for name in ("link", "file"):
        with pytest.raises(UnsafeFileError):
            open_dir(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        open_dir(tmp_path / "missing")


def test_atomic_write_at_replaces_a_link_instead_of_following_it(tmp_path: Path) -> None:
    from agent.durable import atomic_write_at, open_dir

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    d = tmp_path / "agents"
    d.mkdir()
    (d / "rolled-back.json").symlink_to(victim)
    fd = open_dir(d)
    try:
        atomic_write_at(fd, "rolled-back.json", b"{}", mode=0o644)
    finally:
        os.close(fd)
    assert victim.read_text() == "precious"
    assert not (d / "rolled-back.json").is_symlink()
    assert (d / "rolled-back.json").read_bytes() == b"{}"
    assert (d / "rolled-back.json").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in d.iterdir()) == ["rolled-back.json"]
    with pytest.raises(ValueError):
        atomic_write_at(0, "../escape", b"")
