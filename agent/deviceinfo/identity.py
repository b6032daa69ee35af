"""Who this device is: machine id and the effective device id."""

from __future__ import annotations

from pathlib import Path

from agent.config import Config
from harmony_core.errors import ConfigError
from harmony_core.labels import DNS1123_LABEL

__all__ = ["MACHINE_ID_PATH", "device_id_of", "read_machine_id"]

MACHINE_ID_PATH = Path("/etc/machine-id")


def read_machine_id(path: Path = MACHINE_ID_PATH) -> str | None:
    """The machine id, or None when missing or empty.

    Bytes that are not UTF-8 are kept as U+FFFD: such an id then fails the
    device-id check with a message that shows it, instead of a traceback.
    """
    try:
        text = path.read_bytes().decode("utf-8", "replace").strip()
    except OSError:
        return None
    return text or None


def device_id_of(cfg: Config, machine_id: str | None) -> str:
    """`[agent] device_id`, else the machine id; ConfigError when neither makes a valid id."""
    if cfg.agent.device_id:
        return cfg.agent.device_id
    if machine_id is None:
        raise ConfigError(
            "agent.toml",
            ["agent.device_id: not set and /etc/machine-id is missing or empty; set device_id"],
        )
    if not DNS1123_LABEL.match(machine_id):
        raise ConfigError(
            "agent.toml",
            [
                f"agent.device_id: not set and /etc/machine-id ({machine_id!r}) is not a "
                "DNS-1123 label; set device_id"
            ],
        )
    return machine_id
