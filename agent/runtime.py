"""What the running agent knows about itself, shared by its services through the daemon.

Plain data, no I/O: the DeviceInfo publisher sets ownership/conflicts, the
heartbeat records acks, the daemon renders health, STATUS= and `status` from it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["RuntimeState"]


@dataclass
class RuntimeState:
    device_id: str
    machine_id: str
    started_at: datetime
    started_mono: float = field(default_factory=time.monotonic)
    # True once device-info/<id> holds our DeviceInfo (our machine id): only then heartbeats go out.
    owned: bool = False
    conflict: str | None = None
    # Problems a person must fix (missing bucket, ...), by source; cleared when fixed.
    problems: dict[str, str] = field(default_factory=dict)
    last_heartbeat_ack_at: datetime | None = None
    last_heartbeat_seq: int | None = None
    # monotonic time of the heartbeat loop's last turn: the watchdog's proof of life.
    heartbeat_alive_at: float = field(default_factory=time.monotonic)
    # Set on anything a person or the upgrade watcher should see at once (health, STATUS=).
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def problem(self, source: str, text: str | None) -> None:
        before = self.problems.get(source)
        if text is None:
            self.problems.pop(source, None)
        else:
            self.problems[source] = text
        if before != text:
            self.changed.set()
