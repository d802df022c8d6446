"""Golden values for dispatcher.policy: the next state and attempt time after an outcome, Retry-After, statuses.

Jitter is not drawn here: the claim query draws each attempt's delay (the schedule's entry, varied by the
configured jitter) and books the retry slot with it; `next_step` gets that delay as `retry_delay` and the slot as
`scheduled_at`, and only moves the slot later (Retry-After, the 60 s floor) or drops it (done, gone, held).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.config import RetryConfig
from dispatcher.policy import (
    MIN_BACKOFF_AFTER_TIMEOUT,
    DeliveryState,
    Outcome,
    Verdict,
    classify_status,
    next_step,
    parse_retry_after,
)

pytestmark = pytest.mark.timeout(10)

STARTED = datetime(2026, 11, 22, 9, 27, 30, tzinfo=UTC)
FINISHED = STARTED + timedelta(seconds=2)


def outcome(
    status: int | None,
    *,
    error_class: str | None = None,
    retry_after: float | None = None,
    verdict: Verdict | None = None,
) -> Outcome:
    """An attempt that started at STARTED and finished 2 s later; the verdict follows the status by default."""
    if verdict is None:
        verdict = classify_status(status) if status is not None else Verdict.RETRY
    return Outcome(
        verdict=verdict,
        status=status,
        error_class=error_class if error_class is not None else (None if status is None else "http_status"),
        error=None,
        retry_after=retry_after,
        response="",
        started_at=STARTED,
        finished_at=FINISHED,
    )


def slot(delay: float) -> datetime:
    """The retry slot a claim books: the attempt's scheduled time plus the delay (here from STARTED)."""
    return STARTED + timedelta(seconds=delay)


# -- classify_status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (100, Verdict.RETRY),
        (199, Verdict.RETRY),
        (200, Verdict.DELIVERED),
        (201, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (299, Verdict.DELIVERED),
        (300, Verdict.RETRY),
        (301, Verdict.RETRY),
        (302, Verdict.RETRY),
        (304, Verdict.RETRY),
        (308, Verdict.RETRY),
        (400, Verdict.RETRY),
        (404, Verdict.RETRY),
        (409, Verdict.RETRY),
        (410, Verdict.GONE),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (599, Verdict.RETRY),
    ],
)
def test_classify_status(status: int, verdict: Verdict) -> None:
    """2xx is delivered, 410 is gone, everything else (1xx, 3xx redirects, 4xx, 5xx) is retried."""
    assert classify_status(status) is verdict


# -- next_step: finished deliveries ------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    """A 2xx delivers: no next attempt, whatever the schedule, also on a probe and on the last attempt."""
    assert next_step(outcome(status), 300.0, slot(300)) == (DeliveryState.DELIVERED, None)
    assert next_step(outcome(status), None, STARTED) == (DeliveryState.DELIVERED, None)
    assert next_step(outcome(status), 300.0, slot(300), hold_on_failure=True) == (DeliveryState.DELIVERED, None)


def test_410_fails_for_good() -> None:
    """410 Gone fails the delivery at once, attempts left or not, and is not held on a probe."""
    assert next_step(outcome(410), 300.0, slot(300)) == (DeliveryState.FAILED, None)
    assert next_step(outcome(410), 300.0, slot(300), hold_on_failure=True) == (DeliveryState.FAILED, None)


@pytest.mark.parametrize("status", [302, 404, 429, 500, 503, None])
def test_the_last_attempt_fails(status: int | None) -> None:
    """With no delay left (retry_delay None: the schedule is used up) any failure fails the delivery."""
    result = outcome(status, error_class="timeout" if status is None else None, retry_after=30.0)
    assert next_step(result, None, STARTED) == (DeliveryState.FAILED, None)


@pytest.mark.parametrize("status", [301, 500, 429, None])
def test_hold_on_failure_holds_instead_of_retrying(status: int | None) -> None:
    """On a probe (hold_on_failure) a failure holds the delivery with no next time, even on its last attempt."""
    result = outcome(status, error_class="timeout" if status is None else None)
    assert next_step(result, 5.0, slot(5), hold_on_failure=True) == (DeliveryState.HELD, None)
    assert next_step(result, None, STARTED, hold_on_failure=True) == (DeliveryState.HELD, None)


# -- next_step: the schedule -------------------------------------------------------------------------------


def test_the_default_schedule() -> None:
    """The delays before the 2nd to 8th attempt are 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, varied by 20 %."""
    assert RetryConfig().schedule == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    assert RetryConfig().jitter == 0.2


@pytest.mark.parametrize("delay", [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0])
def test_a_failure_keeps_the_booked_slot(delay: float) -> None:
    """A 500 keeps the slot the claim booked with each scheduled delay, unchanged."""
    assert next_step(outcome(500), delay, slot(delay)) == (DeliveryState.PENDING, slot(delay))


@pytest.mark.parametrize("delay", [4.0, 6.0, 240.0, 360.0, 1440.0, 2160.0])
def test_jittered_delays_keep_the_booked_slot(delay: float) -> None:
    """Delays at the jitter bounds (each schedule entry -/+ 20 %) are taken as drawn: Python adds no jitter."""
    assert next_step(outcome(502), delay, slot(delay)) == (DeliveryState.PENDING, slot(delay))


@pytest.mark.parametrize("status", [300, 301, 302, 307, 308])
def test_3xx_is_a_failure(status: int) -> None:
    """Redirects are not followed: a 3xx is retried on the schedule like any failure."""
    assert next_step(outcome(status), 300.0, slot(300)) == (DeliveryState.PENDING, slot(300))


# -- next_step: the 60 s floor -----------------------------------------------------------------------------


def test_min_backoff_is_60_seconds() -> None:
    """The floor for timeouts and 429s is 60 s."""
    assert MIN_BACKOFF_AFTER_TIMEOUT == 60.0


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(None, "timeout"), (429, "http_status")],
)
def test_timeouts_and_429_wait_at_least_60_s(status: int | None, error_class: str) -> None:
    """After a timeout or a 429, a 5 s delay becomes 60 s counted from the attempt's end."""
    result = outcome(status, error_class=error_class)
    assert next_step(result, 5.0, slot(5)) == (DeliveryState.PENDING, FINISHED + timedelta(seconds=60))


@pytest.mark.parametrize(
    ("status", "error_class"),
    [(None, "timeout"), (429, "http_status")],
)
def test_the_60_s_floor_leaves_longer_delays_alone(status: int | None, error_class: str) -> None:
    """A delay of 60 s or more already meets the floor: the booked slot stays."""
    result = outcome(status, error_class=error_class)
    assert next_step(result, 60.0, slot(60)) == (DeliveryState.PENDING, slot(60))
    assert next_step(result, 300.0, slot(300)) == (DeliveryState.PENDING, slot(300))


@pytest.mark.parametrize("error_class", ["connect", "dns", "tls", "reset", "blocked"])
def test_other_network_errors_have_no_floor(error_class: str) -> None:
    """Only timeouts get the floor: a refused connection retries after the scheduled 5 s."""
    assert next_step(outcome(None, error_class=error_class), 5.0, slot(5)) == (DeliveryState.PENDING, slot(5))


def test_a_moved_slot_is_never_earlier_than_the_booked_one() -> None:
    """When the booked slot is later than the attempt's end plus the floor, the booked slot wins."""
    late = FINISHED + timedelta(seconds=90)
    result = outcome(None, error_class="timeout")
    assert next_step(result, 5.0, late) == (DeliveryState.PENDING, late)


# -- next_step: Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "waits"),
    [
        (0.0, None),  # shorter than the scheduled delay: the delay (the booked slot)
        (100.0, None),
        (300.0, None),  # equal: the booked slot
        (450.0, 450.0),  # between the delay and twice it: honoured
        (600.0, 600.0),  # twice the delay: honoured
        (601.0, 600.0),  # longer: clamped to twice the delay
        (86400.0, 600.0),
    ],
)
def test_retry_after_on_503_is_clamped_between_the_delay_and_twice_it(retry_after: float, waits: float | None) -> None:
    """A 503's Retry-After moves the next attempt to the attempt's end plus Retry-After, clamped to
    [retry_delay, 2 * retry_delay]; at the lower bound the booked slot stays."""
    expected = slot(300) if waits is None else FINISHED + timedelta(seconds=waits)
    assert next_step(outcome(503, retry_after=retry_after), 300.0, slot(300)) == (DeliveryState.PENDING, expected)


@pytest.mark.parametrize(
    ("retry_after", "waits"),
    [(1.0, 60.0), (8.0, 60.0), (30.0, 60.0), (90.0, 60.0)],
)
def test_retry_after_on_429_then_the_60_s_floor(retry_after: float, waits: float) -> None:
    """A 429's Retry-After is clamped to [5 s, 10 s] first, then raised to the 60 s floor."""
    result = outcome(429, retry_after=retry_after)
    assert next_step(result, 5.0, slot(5)) == (DeliveryState.PENDING, FINISHED + timedelta(seconds=waits))


def test_retry_after_on_429_above_the_floor() -> None:
    """With a 300 s delay, a 429 asking for 500 s waits 500 s (within twice the delay, above the floor)."""
    result = outcome(429, retry_after=500.0)
    assert next_step(result, 300.0, slot(300)) == (DeliveryState.PENDING, FINISHED + timedelta(seconds=500))


@pytest.mark.parametrize("status", [500, 502, 504, 302, 404])
def test_retry_after_is_ignored_on_other_statuses(status: int) -> None:
    """Retry-After counts on 429 and 503 only; on other failures the booked slot stays."""
    assert next_step(outcome(status, retry_after=500.0), 300.0, slot(300)) == (DeliveryState.PENDING, slot(300))


# -- parse_retry_after -------------------------------------------------------------------------------------

NOW = datetime(2026, 11, 22, 9, 27, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("86400", 86400.0),
    ],
)
def test_parse_retry_after_seconds(value: str, seconds: float) -> None:
    """delta-seconds: a non-negative decimal integer, surrounding blanks ignored."""
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("Sun, 22 Nov 2026 09:29:30 GMT", 120.0),
        ("Sun, 22 Nov 2026 10:29:30 +0100", 120.0),
        ("Sun, 22 Nov 2026 09:27:30 GMT", 0.0),
        ("Sun, 22 Nov 2026 09:00:00 GMT", 0.0),  # in the past: now
    ],
)
def test_parse_retry_after_http_date(value: str, seconds: float) -> None:
    """An HTTP date gives the seconds from `now` until then, never negative."""
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "-5",
        "+5",
        "1.5",
        "soon",
        "120 s",
        "Sun, 22 Nov 2026 09:29:30 -0000",  # -0000 means "no zone known": not a usable instant
        "Sun, 32 Nov 2026 09:29:30 GMT",
        "\u00b2",  # superscript two: str.isdigit() says yes, float() says no
        "\u0661\u0662",  # Arabic-Indic 12: not the ASCII digits RFC 9110 allows
    ],
)
def test_parse_retry_after_refuses_garbage(value: str | None) -> None:
    """Absent, negative, fractional, zone-less or unreadable values are None (as if there were no header)."""
    assert parse_retry_after(value, NOW) is None
