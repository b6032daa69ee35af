"""The agent's own log lines: to journald with structured fields under systemd, else stderr.

Every line carries `DEVICE_ID` and `HARMONY_EVENT` (from `extra={"event": ...}`,
else the logger's name) so `journalctl -u harmony-agent HARMONY_EVENT=...` finds it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["journal_wanted", "setup_logging"]

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _event(record: logging.LogRecord) -> str:
    ev = getattr(record, "event", None)
    return str(ev) if ev else record.name.removeprefix("agent.").replace(".", "-")


class _JournalHandler(logging.Handler):
    def __init__(self, device_id: str) -> None:
        super().__init__()
        from systemd import journal

        self._send = journal.send
        self.device_id = device_id

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_info:
                msg += "\n" + logging.Formatter().formatException(record.exc_info)
            fields: dict[str, Any] = {
                "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
                "SYSLOG_IDENTIFIER": "harmony-agent",
                "DEVICE_ID": self.device_id,
                "HARMONY_EVENT": _event(record),
                "CODE_FILE": record.pathname,
                "CODE_LINE": record.lineno,
                "CODE_FUNC": record.funcName,
            }
            self._send(msg, **fields)
        except Exception:
            self.handleError(record)


class _StderrFormatter(logging.Formatter):
    def __init__(self, device_id: str) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")
        self.device_id = device_id

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        return f"{base} [device={self.device_id} event={_event(record)}]"


def journal_wanted() -> bool:
    """Run by systemd (JOURNAL_STREAM set), or asked for with HARMONY_AGENT_LOG=journal."""
    return (
        bool(os.environ.get("JOURNAL_STREAM")) or os.environ.get("HARMONY_AGENT_LOG") == "journal"
    )


def setup_logging(device_id: str, level: str = "info") -> None:
    """Route the `agent` loggers, and the shared core's (the bus) the agent runs;
    journald when run by systemd (JOURNAL_STREAM set)."""
    handler: logging.Handler | None = None
    if journal_wanted():
        try:
            handler = _JournalHandler(device_id)
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_StderrFormatter(device_id))
    for name in ("agent", "harmony_core"):
        root = logging.getLogger(name)
        root.handlers.clear()
        root.setLevel(level.upper())
        root.propagate = False
        root.addHandler(handler)
    # nats-py logs reconnect noise at ERROR on its own logger; keep it quiet, we report it.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
