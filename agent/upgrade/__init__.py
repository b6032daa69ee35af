"""Self-upgrade with rollback (ADR-022).

The agent side (`UpgradeService`) admits and stages signed requests as the
unprivileged agent; the root side (`python3 -m agent.upgrade.root`) admits them
again, installs, flips, watches, commits or rolls back. The decisions
(admission, state table, confirmation) are pure modules shared by both.
"""

from agent.upgrade.service import UpgradeService

__all__ = ["UpgradeService"]
