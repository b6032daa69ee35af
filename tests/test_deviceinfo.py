"""Device info read from the device's own files: odd files give unknown values, never errors."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from agent.config import Config
from agent.deviceinfo import collect_device_info, device_id_of, read_boot_id, read_machine_id
from agent.deviceinfo.bootid import boot_time
from agent.deviceinfo.collect import os_info
from harmony_core.contracts import OsInfo
from harmony_core.errors import ConfigError

UNKNOWN = OsInfo(id="linux", version_id="", pretty_name="Linux")


def _raises(e: Exception) -> Callable[[], Mapping[str, str]]:
    def read() -> Mapping[str, str]:
        raise e

    return read


def _file(path: Path) -> Callable[[], Mapping[str, str]]:
    """Read `path` as platform.freedesktop_os_release reads its files (UTF-8, strict)."""

    def read() -> Mapping[str, str]:
        with open(path, encoding="utf-8") as f:
            return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)

    return read


@pytest.mark.parametrize(
    ("read", "want"),
    [
        (
            lambda: {"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian 12"},
            OsInfo(id="debian", version_id="12", pretty_name="Debian 12"),
        ),
        (lambda: {"ID": "debian"}, OsInfo(id="debian", version_id="", pretty_name="Linux")),
        (_raises(OSError(2, "Unable to read files /etc/os-release, /usr/lib/os-release")), UNKNOWN),
        (_raises(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")), UNKNOWN),
    ],
    ids=["full", "partial", "missing", "not-utf8"],
)
def test_os_info(read: Callable[[], Mapping[str, str]], want: OsInfo) -> None:
    assert os_info(read) == want


def test_os_info_of_a_real_file_that_is_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "os-release"
    bad.write_bytes(b'ID=debian\nPRETTY_NAME="Debian \xff"\n')
    assert os_info(_file(bad)) == UNKNOWN


def test_os_info_of_this_machine() -> None:
    info = os_info()
    assert info.id and info.pretty_name


def test_boot_id(tmp_path: Path) -> None:
    good = tmp_path / "boot_id"
    good.write_text("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\n")
    assert read_boot_id(good) == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    bad = tmp_path / "bad"
    bad.write_bytes(b"\xff\xfe\n")
    assert read_boot_id(bad) == ""
    assert read_boot_id(tmp_path / "missing") == ""
    assert len(read_boot_id()) == 36  # this machine's


def test_boot_time_is_the_kernels() -> None:
    # /proc/stat's btime, as psutil reads it, to the second (both follow clock steps).
    assert abs(boot_time().timestamp() - psutil.boot_time()) <= 1.0
    assert boot_time() <= datetime.now(UTC)


def test_machine_id_that_is_not_utf8_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    f = tmp_path / "machine-id"
    f.write_bytes(b"\xff" * 32 + b"\n")
    mid = read_machine_id(f)
    assert mid is not None and "\ufffd" in mid
    cfg = Config.model_validate({"nats": {"servers": ["nats://127.0.0.1:4222"]}})
    with pytest.raises(ConfigError, match="not a DNS-1123 label; set device_id"):
        device_id_of(cfg, mid)
    assert read_machine_id(tmp_path / "missing") is None


def test_collect_on_this_machine() -> None:
    cfg = Config.model_validate(
        {"nats": {"servers": ["nats://127.0.0.1:4222"]}, "labels": {"site": "lab"}}
    )
    started = datetime.now(UTC)
    info = collect_device_info(cfg, "dev-1", "m" * 32, started)
    assert info.boot_id == read_boot_id() and info.started_at == started
    assert info.labels["site"] == "lab"
    assert info.labels["harmony.nationtech.io/arch"] == info.arch
    uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
    assert abs(info.booted_at.timestamp() + uptime - time.time()) <= 1.5
