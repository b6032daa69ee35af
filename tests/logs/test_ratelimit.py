"""Token buckets: bursts pass, sustained overload drops, err and worse always pass."""

from __future__ import annotations

from agent.logs.ratelimit import DropTally, RateLimiter, TokenBucket


def test_bucket_refills_at_rate_up_to_capacity() -> None:
    b = TokenBucket(10, 20, now=0.0)
    assert all(b.take(1, 0.0) for _ in range(20))
    assert not b.take(1, 0.0)
    assert b.take(5, 0.5) and not b.take(1, 0.5)
    assert b.take(20, 100.0) and not b.take(1, 100.0)


def test_burst_shorter_than_the_window_passes() -> None:
    lim = RateLimiter(100, 0, burst_s=2.0, now=0.0)
    # 150 lines/s for 1 s: 50/s over the rate for half the window
    passed = sum(lim.admit(6, 10, i / 150) for i in range(150))
    assert passed == 150


def test_sustained_overload_drops_but_never_err() -> None:
    lim = RateLimiter(100, 0, burst_s=1.0, now=0.0)
    shipped = {3: 0, 6: 0}
    for i in range(3000):  # 1000 lines/s for 3 s, a tenth of them err
        prio = 3 if i % 10 == 0 else 6
        shipped[prio] += lim.admit(prio, 10, i / 1000)
    assert shipped[3] == 300
    assert shipped[6] < 2700 / 2


def test_bytes_limit() -> None:
    lim = RateLimiter(0, 1000, burst_s=1.0, now=0.0)
    assert lim.admit(6, 1000, 0.0)
    assert not lim.admit(6, 1, 0.0)
    assert lim.admit(2, 5000, 0.0)


def test_off_by_default() -> None:
    assert not RateLimiter(0, 0, 10.0, 0.0).active


def test_tally() -> None:
    t = DropTally()
    assert not t
    t.add("c1", 6, 10)
    t.add("c2", 7, 20)
    t.add("c3", 6, 30)
    assert t and t.first_cursor == "c1" and (t.since_us, t.until_us) == (10, 30)
    assert t.by_priority == {6: 2, 7: 1} and t.total == 3
