"""DeviceInfo (contract §3) from /etc/os-release, /proc, /etc/machine-id and psutil."""

from __future__ import annotations

import platform
import re
import shutil
import socket
from datetime import UTC, datetime
from pathlib import Path

from agent.arch import debian_arch
from agent.config import Config
from agent.version import __version__
from harmony_core.contracts import CpuInfo, DeviceInfo, DiskInfo, NetworkInterface, OsInfo, utcnow
from harmony_core.labels import RESERVED_LABEL_PREFIX

__all__ = ["collect_device_info", "debian_arch", "read_boot_id", "same_device_info"]


def read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _os_release(path: Path = Path("/etc/os-release")) -> OsInfo:
    values: dict[str, str] = {}
    for p in (path, Path("/usr/lib/os-release")):
        try:
            text = p.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            k, sep, v = line.partition("=")
            if sep:
                values[k.strip()] = v.strip().strip('"').strip("'")
        break
    return OsInfo(
        id=values.get("ID", "linux"),
        version_id=values.get("VERSION_ID", ""),
        pretty_name=values.get("PRETTY_NAME", "Linux"),
    )


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
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

    out: list[NetworkInterface] = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
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

    os_info = _os_release()
    arch = debian_arch()
    hostname = socket.gethostname()
    labels = dict(cfg.labels)
    auto = {
        "arch": arch,
        "os": _label_value(f"{os_info.id}-{os_info.version_id}".strip("-")),
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
        os=os_info,
        kernel=platform.release(),
        arch=arch,
        boot_id=read_boot_id(),
        booted_at=datetime.fromtimestamp(psutil.boot_time(), UTC),
        started_at=started_at,
        cpu=CpuInfo(model=_cpu_model(), count=psutil.cpu_count() or 1),
        memory_total_bytes=psutil.virtual_memory().total,
        disk=DiskInfo(root_total_bytes=shutil.disk_usage("/").total),
        network=_network(),
        heartbeat_interval_s=cfg.heartbeat.interval,
        updated_at=utcnow(),
    )


def same_device_info(a: DeviceInfo | None, b: DeviceInfo) -> bool:
    """Equal but for `updated_at` (and `booted_at` jitter of psutil's rounding)."""
    if a is None:
        return False
    skip = {"updated_at", "booted_at"}
    return a.model_dump(exclude=skip) == b.model_dump(exclude=skip)
