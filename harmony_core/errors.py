"""Every error of ours, one root per domain; each message says what to do next."""

from __future__ import annotations

__all__ = [
    "AgentError",
    "BucketMissingError",
    "BusError",
    "BusUnavailableError",
    "ConfigError",
    "DeviceConflictError",
    "IdentityError",
    "JournalError",
    "ObjectMissingError",
    "PayloadError",
    "RevisionMismatchError",
    "RolloutError",
    "UnknownDeviceError",
    "UpgradeError",
    "UpgradeRejectedError",
]


class AgentError(Exception):
    """Root of every error harmony-agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration is invalid; `problems` lists each one as `path: reason`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} configuration error(s):\n{lines}")


class BusError(AgentError):
    """Talking to NATS failed."""


class BusUnavailableError(BusError):
    """NATS is not connected right now; the caller retries later."""


class RevisionMismatchError(BusError):
    """A compare-and-set KV write found another revision than expected."""


class BucketMissingError(BusError):
    """A KV bucket, object store or stream the agent needs does not exist."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind = kind
        self.name = name
        super().__init__(
            f"{kind} {name!r} does not exist on the NATS server; "
            "create it with `harmony-fleet init` (the agent never creates it itself)"
        )


class ObjectMissingError(BusError):
    """An object store exists but lacks the object asked for."""

    def __init__(self, bucket: str, name: str) -> None:
        self.bucket = bucket
        self.name = name
        super().__init__(f"object {name!r} is not in object store {bucket!r}")


class DeviceConflictError(BusError):
    """Another machine already owns this device id in `device-info`."""

    def __init__(self, device_id: str, ours: str, theirs: str) -> None:
        self.device_id = device_id
        self.ours = ours
        self.theirs = theirs
        super().__init__(
            f"device id {device_id!r} is already used by machine {theirs} "
            f"(this machine is {ours}); set a unique [agent] device_id, or run "
            f"`harmony-fleet forget {device_id}` if that machine was re-imaged"
        )


class UnknownDeviceError(AgentError):
    """The operator named a device NATS knows nothing of (no keys, no logs)."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        super().__init__(f'no device "{device_id}" (see harmony-fleet devices)')


class RolloutError(AgentError):
    """A rollout cannot be planned, driven or changed as asked; the message says what to do."""


class IdentityError(AgentError):
    """Device identity (ADR-023): a key, the registry, enrollment, the auth callout."""


class JournalError(AgentError):
    """Reading the systemd journal failed."""


class PayloadError(AgentError):
    """A payload cannot be encoded or read: no zstandard, unknown encoding, too large, corrupt."""


class UpgradeError(AgentError):
    """A self-upgrade step failed."""


class UpgradeRejectedError(UpgradeError):
    """An upgrade request was refused before anything changed."""
