"""A webhook's limits in the process sending to it (dispatcher.throttle): AIMD on 429/503, the rate's token
bucket, Retry-After. Times are plain seconds on a made-up monotonic clock."""

from __future__ import annotations

import pytest

from dispatcher.throttle import Throttle

pytestmark = pytest.mark.timeout(10)


def test_a_new_sender_starts_from_the_limit_its_last_sender_left() -> None:
    """The stored limit (None: none) bounded by the cap; stored back as 0 when it is the cap."""
    assert Throttle.start(10, None, None, 0.0).limit == 10
    assert Throttle.start(10, 4, None, 0.0).limit == 4
    assert Throttle.start(10, 40, None, 0.0).limit == 10  # the cap was lowered since
    assert Throttle.start(10, None, None, 0.0).stored_limit() == 0
    assert Throttle.start(10, 4, None, 0.0).stored_limit() == 4


def test_the_limit_bounds_requests_in_flight() -> None:
    throttle = Throttle.start(3, None, None, 0.0)
    assert [throttle.wait(n, 1.0) for n in range(5)] == [0.0, 0.0, 0.0, None, None]


def test_a_429_halves_the_limit_once_per_round_and_quiet_windows_grow_it_back() -> None:
    """10 -> 5 on the first 429; answers to requests started before that change do not halve it again; a 429
    to a request started after it does (5 -> 2, then 1, never 0); a success a window (1 s) after the last change
    grows it by one, back up to the cap and no further."""
    t = Throttle.start(10, None, None, 0.0)
    assert t.answered(429, started_at=0.5, retry_after=None, now=1.0) and t.limit == 5
    assert not t.answered(429, started_at=0.6, retry_after=None, now=1.1) and t.limit == 5  # same round
    assert not t.answered(503, started_at=0.9, retry_after=None, now=1.2) and t.limit == 5
    assert t.answered(503, started_at=1.5, retry_after=None, now=1.6) and t.limit == 2
    assert t.answered(429, started_at=1.7, retry_after=None, now=1.8) and t.limit == 1
    assert not t.answered(429, started_at=1.9, retry_after=None, now=2.0) and t.limit == 1
    assert not t.answered(200, started_at=2.0, retry_after=None, now=2.5) and t.limit == 1  # within the window
    grown = [t.limit for now in (3.0, 4.5, 6.0) if t.answered(200, started_at=now - 0.1, retry_after=None, now=now)]
    assert grown == [2, 3, 4]
    for second in range(5, 20):
        t.answered(204, started_at=second - 0.1, retry_after=None, now=float(second))
    assert t.limit == 10 and not t.throttled and t.stored_limit() == 0


def test_errors_other_than_429_and_503_leave_the_limit_alone() -> None:
    t = Throttle.start(8, None, None, 0.0)
    for status in (None, 400, 404, 410, 500, 502):
        assert not t.answered(status, started_at=1.0, retry_after=None, now=2.0)
    assert t.limit == 8


def test_retry_after_holds_every_start_until_then() -> None:
    t = Throttle.start(10, None, None, 0.0)
    t.answered(429, started_at=1.0, retry_after=30.0, now=2.0)
    assert t.wait(0, 2.0) == 30.0
    assert t.wait(0, 31.5) == 0.5
    assert t.wait(0, 32.0) == 0.0
    t.answered(503, started_at=40.0, retry_after=5.0, now=41.0)
    t.answered(503, started_at=40.0, retry_after=1.0, now=41.0)  # an earlier time does not shorten the wait
    assert t.wait(0, 41.0) == 5.0


def test_a_rate_limit_spaces_the_starts() -> None:
    """4 per second: one may start at once, the next a quarter second later, and unused time does not build a
    burst beyond one request."""
    t = Throttle.start(10, None, 4.0, 0.0)
    assert t.wait(0, 0.0) == 0.0
    t.started(0.0)
    assert t.wait(1, 0.0) == pytest.approx(0.25)
    assert t.wait(1, 0.1) == pytest.approx(0.15)
    assert t.wait(1, 0.25) == 0.0
    t.started(0.25)
    assert t.wait(0, 100.0) == 0.0  # after a long idle spell: one start, then spaced again
    t.started(100.0)
    assert t.wait(0, 100.0) == pytest.approx(0.25)
    starts = 0
    now = 101.0
    while now < 111.0:  # ten seconds of starting whenever allowed
        wait = t.wait(0, now)
        assert wait is not None
        if wait == 0.0:
            t.started(now)
            starts += 1
        now += 1 / 16  # a step that adds up exactly in binary floating point
    assert starts == 40


def test_a_webhook_at_its_limit_without_answers_for_a_second_is_stalled() -> None:
    """Stalled only at its limit and only after a second without an answer; an answer clears it."""
    t = Throttle.start(10, None, None, 0.0)
    assert not t.stalled(10, 1.0)  # a second since it was taken over, not more
    assert t.stalled(10, 1.5)
    assert not t.stalled(9, 1.5)  # a free slot: nothing waits on it
    t.answered(200, started_at=0.2, retry_after=None, now=2.0)
    assert not t.stalled(10, 2.5) and t.stalled(10, 3.1)
