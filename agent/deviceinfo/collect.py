"""DeviceInfo (contract §3) from /etc/os-release, /proc, psutil and the config.

A device file that is missing or not UTF-8 gives an unknown value, never an
error: the DeviceInfo still goes out, and the agent keeps running.
"""

from __future__ import annotations

import functools
import logging
import platform
import re
import shutil
import socket
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from agent.config import Config
from agent.deviceinfo.arch import debian_arch
from agent.deviceinfo.bootid import boot_time, read_boot_id
from agent.version import __version__
from harmony_core.contracts import CpuInfo, DeviceInfo, DiskInfo, NetworkInterface, OsInfo, utcnow
from harmony_core.labels import RESERVED_LABEL_PREFIX

__all__ = ["collect_device_info", "os_info", "same_device_info"]

log = logging.getLogger("agent.deviceinfo")

_CPUINFO = Path("/proc/cpuinfo")


@functools.cache
def _unreadable(what: str, why: str) -> None:
    """Say once per process (and per reason) that a device file gives unknown values."""
    log.warning(
        "cannot read %s (%s); DeviceInfo says unknown there",
        what,
        why,
        extra={"event": "deviceinfo-unreadable"},
    )


def os_info(read: Callable[[], Mapping[str, str]] = platform.freedesktop_os_release) -> OsInfo:
    """What os-release says; Linux/linux/"" when it is missing or not UTF-8.

    `platform.freedesktop_os_release` reads /etc/os-release, else
    /usr/lib/os-release, and keeps the first good read for the life of the
    process (a failed read is tried again next time).
    """
    try:
        fields = read()
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        _unreadable("os-release", str(e))
        fields = {}
    return OsInfo(
        id=fields.get("ID", "linux"),
        version_id=fields.get("VERSION_ID", ""),
        pretty_name=fields.get("PRETTY_NAME", "Linux"),
    )


def _cpu_model(path: Path = _CPUINFO) -> str:
    try:
        text = path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or "unknown"


def _label_value(text: str) -> str:
    """`text` made into a valid label value (<=63 of [A-Za-z0-9-_.], alnum at both ends)."""
    v = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63]
    return v.strip("-_.")


def _network() -> list[NetworkInterface]:
    import psutil

    try:
        interfaces = psutil.net_if_addrs()
    except OSError as e:
        _unreadable("the network interfaces", str(e))
        return []
    out: list[NetworkInterface] = []
    for name, addrs in sorted(interfaces.items()):
        if name == "lo":
            continue
        mac = None
        ips: list[str] = []
        for a in addrs:
            if a.family == socket.AF_INET or a.family == socket.AF_INET6:
                ips.append(a.address.split("%")[0])
            elif a.family == psutil.AF_LINK:
                mac = a.address
        out.append(NetworkInterface(name=name, mac=mac, addresses=ips))
    return out


def collect_device_info(
    cfg: Config, device_id: str, machine_id: str, started_at: datetime
) -> DeviceInfo:
    """The DeviceInfo this agent would publish now."""
    import psutil

    osi = os_info()
    arch = debian_arch()
    hostname = socket.gethostname()
    labels = dict(cfg.labels)
    auto = {
        "arch": arch,
        "os": _label_value(f"{osi.id}-{osi.version_id}".strip("-")),
        "hostname": _label_value(hostname),
        "agent-version": _label_value(__version__),
    }
    labels.update({RESERVED_LABEL_PREFIX + k: v for k, v in auto.items()})
    return DeviceInfo(
        device_id=device_id,
        machine_id=machine_id,
        hostname=hostname,
        labels=labels,
        agent_version=__version__,
        os=osi,
        kernel=platform.release(),
        arch=arch,
        boot_id=read_boot_id(),
        booted_at=boot_time(),
        started_at=started_at,
        cpu=CpuInfo(model=_cpu_model(), count=psutil.cpu_count() or 1),
        memory_total_bytes=psutil.virtual_memory().total,
        disk=DiskInfo(root_total_bytes=shutil.disk_usage("/").total),
        network=_network(),
        heartbeat_interval_s=cfg.heartbeat.interval,
        updated_at=utcnow(),
    )


def same_device_info(a: DeviceInfo | None, b: DeviceInfo) -> bool:
    """Equal but for `updated_at` (and `booted_at`, which follows clock steps)."""
    if a is None:
        return False
    skip = {"updated_at", "booted_at"}
    return a.model_dump(exclude=skip) == b.model_dump(exclude=skip)
