"""Journald -> JetStream log streaming (issue 5): at least once, filtered in libsystemd, bounded.

`LogsService(cfg, device_id, bus)` is the whole public surface; see docs/logs.md.
"""

from agent.logs.service import LogsService

__all__ = ["LogsService"]
