"""Pure: what an attempt's outcome means for its delivery (next state, next attempt time)."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import assert_never

from dispatcher.vocab import DeliveryState

# Timeouts and 429s wait at least this long before the next try, whatever the schedule says.
MIN_BACKOFF_AFTER_TIMEOUT = 60.0


class Verdict(StrEnum):
    """How an attempt ended."""

    DELIVERED = "delivered"  # 2xx
    GONE = "gone"  # 410: the receiver says the endpoint is gone for good
    RETRY = "retry"  # everything else


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one HTTP try, as the sender saw it. `error` is what the webhook's last_error shows."""

    verdict: Verdict
    status: int | None
    error_class: str | None
    error: str | None
    retry_after: float | None
    response: str
    started_at: datetime
    finished_at: datetime

    @property
    def duration_ms(self) -> int:
        """Wall time of the try in whole milliseconds."""
        return int((self.finished_at - self.started_at).total_seconds() * 1000)


def classify_status(status: int) -> Verdict:
    """2xx delivered, 410 gone, any other status is retried (3xx included: redirects are never followed)."""
    if 200 <= status <= 299:
        return Verdict.DELIVERED
    if status == 410:
        return Verdict.GONE
    return Verdict.RETRY


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() is true of "²" and "١٢" too, which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def next_step(
    outcome: Outcome, retry_delay: float | None, scheduled_at: datetime, *, hold_on_failure: bool = False
) -> tuple[DeliveryState, datetime | None]:
    """The delivery's state after `outcome`, and when to try again if it is pending.

    `retry_delay` is the jittered delay drawn at claim time (None when this was the last attempt) and
    `scheduled_at` the retry slot the claim booked with it. A `Retry-After` on 429/503 is honoured, clamped
    between the scheduled delay and twice it; timeouts and 429s wait at least 60 s. With `hold_on_failure`
    (a probe or redelivery to an invalid webhook) a failure holds the delivery instead: the retry clock stops.
    """
    match outcome.verdict:
        case Verdict.DELIVERED:
            return DeliveryState.DELIVERED, None
        case Verdict.GONE:
            return DeliveryState.FAILED, None
        case Verdict.RETRY:
            pass
        case _:
            assert_never(outcome.verdict)
    if hold_on_failure:
        return DeliveryState.HELD, None
    if retry_delay is None:
        return DeliveryState.FAILED, None
    delay = retry_delay
    if outcome.retry_after is not None and outcome.status in (429, 503):
        delay = min(max(outcome.retry_after, retry_delay), 2 * retry_delay)
    if outcome.error_class == "timeout" or outcome.status == 429:
        delay = max(delay, MIN_BACKOFF_AFTER_TIMEOUT)
    if delay == retry_delay:
        return DeliveryState.PENDING, scheduled_at
    return DeliveryState.PENDING, max(scheduled_at, outcome.finished_at + timedelta(seconds=delay))
