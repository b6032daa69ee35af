"""Rate limiting of shipped lines: token buckets, and the tally of what was dropped.

Pure: time comes in as an argument. A bucket holds `rate * burst` tokens, so a
burst above the rate passes as long as it lasts less than `burst` seconds; only
sustained overload drops lines. Lines of priority err (3) or more severe are
never dropped (they still use up tokens, so they count towards the overload).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["NEVER_DROP_AT_OR_BELOW", "DropTally", "RateLimiter", "TokenBucket"]

NEVER_DROP_AT_OR_BELOW = 3  # err


class TokenBucket:
    """`rate` tokens/s, at most `capacity` saved up; starts full."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(capacity, 1.0)
        self.tokens = self.capacity
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self.tokens = min(self.capacity, self.tokens + (now - self._at) * self.rate)
        self._at = now

    def take(self, n: float, now: float) -> bool:
        """Take `n` tokens if there are that many."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def force(self, n: float, now: float) -> None:
        """Take `n` tokens even into debt (for lines that must pass)."""
        self._refill(now)
        self.tokens = max(self.tokens - n, -self.capacity)


class RateLimiter:
    """Lines/s and bytes/s buckets (either may be off: rate 0)."""

    def __init__(self, lines_per_s: int, bytes_per_s: int, burst_s: float, now: float) -> None:
        burst = max(burst_s, 0.001)
        self._lines = TokenBucket(lines_per_s, lines_per_s * burst, now) if lines_per_s else None
        self._bytes = TokenBucket(bytes_per_s, bytes_per_s * burst, now) if bytes_per_s else None

    @property
    def active(self) -> bool:
        return self._lines is not None or self._bytes is not None

    def admit(self, priority: int, nbytes: int, now: float) -> bool:
        """Whether this line ships; err-or-more-severe lines always do."""
        lines, byts = self._lines, self._bytes
        if priority <= NEVER_DROP_AT_OR_BELOW:
            if lines is not None:
                lines.force(1, now)
            if byts is not None:
                byts.force(nbytes, now)
            return True
        if lines is not None and not lines.take(1, now):
            return False
        if byts is not None and not byts.take(nbytes, now):
            if lines is not None:
                lines.tokens += 1  # give back: the line did not ship
            return False
        return True


@dataclass
class DropTally:
    """Lines dropped since the last announcement, by priority."""

    first_cursor: str | None = None
    since_us: int = 0
    until_us: int = 0
    by_priority: dict[int, int] = field(default_factory=dict)
    total: int = 0

    def add(self, cursor: str, priority: int, realtime_us: int) -> None:
        if self.first_cursor is None:
            self.first_cursor = cursor
            self.since_us = realtime_us
        self.until_us = realtime_us
        self.by_priority[priority] = self.by_priority.get(priority, 0) + 1
        self.total += 1

    def __bool__(self) -> bool:
        return self.first_cursor is not None
