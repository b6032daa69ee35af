"""A deadline for calls that must not block (a FIFO opened for reading blocks forever)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

__all__ = ["BlockedError", "must_return_within"]


class BlockedError(BaseException):
    """Raised in the test's main thread when the guarded call outlived its deadline.

    A BaseException, so no `except OSError` / `except Exception` in the code under
    test can swallow it and pass the test by accident.
    """


@contextlib.contextmanager
def must_return_within(seconds: float) -> Iterator[None]:
    def _expired(signum: int, frame: FrameType | None) -> None:
        raise BlockedError(f"the call blocked for more than {seconds}s")

    old = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
