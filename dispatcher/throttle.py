"""One webhook's limits in the process that sends to it: concurrency taught by its receiver, rate, Retry-After.

A webhook's deliveries are leased by one process at a time (see dispatcher_claim_owned), so that process alone
decides when each of its requests starts. Three rules, all on the monotonic clock, none touching the database:

- **Concurrency (AIMD).** At most `limit` requests in flight, `limit` starting at the configured cap. A 429 or
  503 halves it (at most once per request round: only an answer to a request started after the last change
  counts); a success after a quiet `window` since the last change grows it by one, back up to the cap.
- **Rate.** With a rate limit, a token bucket of one request's burst refilled at `rate` per second.
- **Retry-After.** Nothing starts before the time the receiver asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

# A throttled webhook's limit grows back by one per this many seconds without a 429 or 503.
AIMD_WINDOW = 1.0
# Statuses that say "slower": the limit halves.
SLOW_DOWN = (429, 503)
# A webhook at its limit whose requests have not been answered for this long is stalled: its receiver hangs.
STALL_AFTER = 1.0


@dataclass(slots=True)
class Throttle:
    cap: int  # [worker] per_webhook_concurrency
    limit: int  # requests in flight allowed now, 1..cap
    rate: float | None  # requests per second, None for no limit
    changed_at: float  # when `limit` last changed
    tokens: float  # the rate's bucket: a request may start at 1 or more
    refilled_at: float
    blocked_until: float = 0.0  # the receiver's Retry-After
    answered_at: float = 0.0  # its last answer (or its start here)
    window: float = AIMD_WINDOW

    @classmethod
    def start(cls, cap: int, limit: int | None, rate: float | None, now: float) -> Throttle:
        """A webhook this process has just taken over: the limit its last sender left (None: the cap)."""
        return cls(
            cap=cap, limit=min(cap, limit or cap), rate=rate, changed_at=now, tokens=1.0, refilled_at=now,
            answered_at=now,
        )  # fmt: skip

    @property
    def throttled(self) -> bool:
        return self.limit < self.cap

    def stored_limit(self) -> int:
        """The limit as the webhook's concurrency_limit column keeps it (0: none, the cap applies)."""
        return 0 if self.limit >= self.cap else self.limit

    def stalled(self, in_flight: int, now: float) -> bool:
        """At its limit with no answer for STALL_AFTER seconds: more leases would only wait for its timeouts."""
        return in_flight >= self.limit and now - self.answered_at > STALL_AFTER

    def wait(self, in_flight: int, now: float) -> float | None:
        """Seconds until one more request may start (0: now), or None until one in flight finishes."""
        if in_flight >= self.limit:
            return None
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.rate is None:
            return 0.0
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def started(self, now: float) -> None:
        """A request started: it spends a token of the rate."""
        if self.rate is not None:
            self._refill(now)
            self.tokens -= 1.0

    def answered(self, status: int | None, started_at: float, retry_after: float | None, now: float) -> bool:
        """Learn from one answer (`status` None: no HTTP answer). Returns whether the limit changed."""
        self.answered_at = now
        if status in SLOW_DOWN:
            if retry_after is not None and retry_after > 0:
                self.blocked_until = max(self.blocked_until, now + retry_after)
            if started_at >= self.changed_at and self.limit > 1:
                self.limit = max(1, self.limit // 2)
                self.changed_at = now
                return True
            return False
        quiet = now - self.changed_at >= self.window
        if status is not None and 200 <= status < 300 and self.limit < self.cap and quiet:
            self.limit += 1
            self.changed_at = now
            return True
        return False

    def _refill(self, now: float) -> None:
        assert self.rate is not None
        self.tokens = min(1.0, self.tokens + (now - self.refilled_at) * self.rate)
        self.refilled_at = now
