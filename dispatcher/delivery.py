"""Delivery: claim due deliveries, sign and send each, hand the result to the recorder.

Data flows one way: claimed row -> Claimed -> Request -> Outcome -> (state, next attempt) -> Result.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import structlog

from dispatcher import envelope
from dispatcher.aio import wait_any
from dispatcher.config import Config
from dispatcher.db import Database, is_transient
from dispatcher.db.rows import ClaimRow
from dispatcher.envelope import EventData
from dispatcher.formats import FORMATS
from dispatcher.formats.jwtbody import JwtPolicy, jwt_body
from dispatcher.metrics import Metrics
from dispatcher.policy import Outcome, Verdict, next_step
from dispatcher.recorder import Recorder, Result
from dispatcher.secretbox import CLEAR, Keyring
from dispatcher.sender import Request, Sender
from dispatcher.throttle import Throttle
from dispatcher.vocab import DeliveryKind, DeliveryState, WebhookFormat, WebhookState

log = structlog.get_logger("dispatcher.delivery")

# A test is one attempt with this timeout, whatever [delivery] timeout says.
TEST_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Claimed:
    """A leased delivery with everything needed to send it."""

    id: UUID
    event_id: UUID
    webhook_id: int
    kind: DeliveryKind
    attempt: int
    lease_token: int
    retry_delay: float | None
    next_attempt_at: datetime
    event: EventData
    url: str
    format: WebhookFormat
    webhook_name: str
    secrets: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    webhook_state: WebhookState
    policy: JwtPolicy | None = None  # the webhook's JWT policy: its bodies are {"jwt": ...}

    @classmethod
    def from_row(cls, row: ClaimRow, now: datetime, keys: Keyring = CLEAR) -> Claimed:
        """Build from a claimed row; `now` decides which secrets are still live, `keys` open the stored secrets and
        policy key (values stored in clear pass through; one under an unknown key raises, failing this attempt)."""
        return cls(
            id=row.id,
            event_id=row.event_id,
            webhook_id=row.webhook_id,
            kind=row.kind,
            attempt=row.attempts,
            lease_token=row.lease_token,
            retry_delay=row.retry_delay,
            next_attempt_at=row.next_attempt_at,
            event=EventData(
                id=str(row.event_id),
                organisation=row.organisation,
                type=row.type,
                object_id=row.object_id,
                payload=row.payload,
                actor=row.actor,
                created_at=row.created_at,
            ),
            url=row.url,
            format=row.format,
            webhook_name=row.webhook_name,
            secrets=live_secrets(json.loads(row.secrets), now, keys),
            headers=tuple(json.loads(row.headers).items()),
            webhook_state=row.webhook_state,
            policy=JwtPolicy(
                id=row.policy_id,
                disabled=bool(row.policy_disabled),
                alg=row.jwt_alg or "",
                audience=row.jwt_audience,
                expires_in_minutes=row.jwt_claim_expires_in,
                key=keys.open(row.signing_key or ""),
            )
            if row.policy_id is not None
            else None,
        )


@dataclass(frozen=True, slots=True)
class Attempted:
    """What recording an attempt needs of its delivery: known from the claimed row even when nothing else of it
    could be decoded."""

    id: UUID
    event_id: UUID
    webhook_id: int
    organisation: str
    type: str
    kind: DeliveryKind
    attempt: int
    lease_token: int
    retry_delay: float | None
    next_attempt_at: datetime
    webhook_state: WebhookState

    @classmethod
    def of_row(cls, row: ClaimRow) -> Attempted:
        return cls(
            row.id, row.event_id, row.webhook_id, row.organisation, row.type, row.kind, row.attempts,
            row.lease_token, row.retry_delay, row.next_attempt_at, row.webhook_state,
        )  # fmt: skip

    @classmethod
    def of_claimed(cls, claimed: Claimed) -> Attempted:
        return cls(
            claimed.id, claimed.event_id, claimed.webhook_id, claimed.event.organisation, claimed.event.type,
            claimed.kind, claimed.attempt, claimed.lease_token, claimed.retry_delay, claimed.next_attempt_at,
            claimed.webhook_state,
        )  # fmt: skip


# Error text kept of a request that could not be built (the attempt row and the webhook's last_error show it).
MAX_BUILD_ERROR = 300


def unbuildable(exc: BaseException) -> Outcome:
    """A failed attempt for a delivery whose request could not be built or signed (an event or webhook its format
    cannot encode): retried and dead-lettered by the usual rules, like any other failure."""
    now = datetime.now(UTC)
    text = f"{type(exc).__name__}: {exc}"
    if len(text) > MAX_BUILD_ERROR:
        text = text[: MAX_BUILD_ERROR - 1] + "…"
    return Outcome(
        verdict=Verdict.RETRY,
        status=None,
        error_class="request_build",
        error=f"the request could not be built: {text}",
        retry_after=None,
        response="",
        started_at=now,
        finished_at=now,
    )


def live_secrets(stored: list[dict[str, Any]], now: datetime, keys: Keyring = CLEAR) -> tuple[str, ...]:
    """The secrets that still sign, current first: those without an expiry or expiring after `now`, opened by
    `keys` (only these are decrypted)."""
    live = []
    for entry in stored:
        expires = entry.get("expires_at")
        if expires is None or datetime.fromisoformat(expires) > now:
            live.append(keys.open(entry["secret"]))
    return tuple(live)


# Each webhook is leased up to this many times its cap, a process up to PROCESS_AHEAD times its slots: the leases
# beyond the free slots wait in memory and start the moment a slot frees, without a claim's round trip first.
# A lease covers a wait of one request's timeout (plus half the margin) and then its request: a lease that
# waited longer is given back unsent rather than sent late (see Deliverer._start_ready).
AHEAD = 4
PROCESS_AHEAD = 2


def prepare(claimed: Claimed, body: bytes, timestamp: int, timeout: float, *, issuer: str = "") -> Request:
    """Sign `body` for `claimed` at `timestamp`: the webhook's static headers, then its format's (which win). Under a
    JWT policy the body becomes `{"jwt": ...}` around it, signed anew for this attempt (`issuer`: its `iss`)."""
    fmt = FORMATS[claimed.format]
    message_id = str(claimed.event_id)
    if claimed.policy is not None:
        body = jwt_body(
            body, claimed.policy, delivery_id=claimed.id, webhook_id=claimed.webhook_id, issuer=issuer, now=timestamp
        )
    headers = dict(claimed.headers)
    headers.update(fmt.headers(claimed.id, message_id, timestamp, claimed.secrets, body))
    return Request(
        url=fmt.target_url(claimed.url, message_id),
        body=body,
        headers=headers,
        timeout=timeout,
    )


class Deliverer:
    """Claims due deliveries ahead of its free slots; starts each when its process's and its webhook's limits allow.

    A webhook's leases are held by one process at a time (dispatcher_claim_owned), so the one holding them sees
    every request in flight to it and keeps its cap, its rate limit and its receiver's Retry-After here, in
    memory (dispatcher.throttle).
    """

    def __init__(
        self,
        db: Database,
        sender: Sender,
        recorder: Recorder,
        config: Config,
        *,
        owner: str,
        wake: asyncio.Event,
        recorded: asyncio.Event,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._sender = sender
        self._recorder = recorder
        self._config = config
        self._owner = owner
        self.wake = wake
        self._recorded = recorded
        self._metrics = metrics
        self._in_flight: dict[asyncio.Task[None], Claimed] = {}
        self._busy: Counter[int] = Counter()  # requests in flight per webhook
        # Leased, not started yet, per webhook: each with the time (monotonic) it must start by.
        self._queues: dict[int, deque[tuple[Claimed, bytes, float]]] = {}
        self._turns: deque[int] = deque()  # the webhooks with a queue, in the order they take turns
        self._queued = 0
        self._throttles: dict[int, Throttle] = {}
        self._timer: asyncio.TimerHandle | None = None  # the next start a rate limit or Retry-After put off
        self._starting = True  # cleared by drain(): nothing new starts
        self._claimed_all = False  # the last claim got as many as it asked for: more may be due
        self._returning: set[asyncio.Task[None]] = set()
        self._freed = asyncio.Event()  # a request finished: its slot, ours and its webhook's, can be claimed again
        self._bodies: dict[tuple[UUID, str, int], bytes] = {}
        worker = config.worker
        timeout = config.delivery.timeout
        # A lease covers its wait for a slot (one request's timeout at most) and its own request, plus a margin.
        self._lease_seconds = 2 * timeout + worker.lease_margin
        self._test_lease_seconds = timeout + TEST_TIMEOUT + worker.lease_margin
        self._max_wait = timeout + worker.lease_margin / 2
        self._keys = Keyring.of(config.secrets.encryption_key, config.secrets.old_keys)
        self.attempts_made = 0

    @property
    def in_flight(self) -> int:
        """Requests under way now."""
        return len(self._in_flight)

    def reload_keys(self, keys: Keyring) -> None:
        """Open secrets with `keys` from the next claim on (a SIGHUP reloaded [secrets])."""
        self._keys = keys

    @property
    def throttled(self) -> int:
        """Webhooks whose receiver has lowered their concurrency limit below the cap (as this process saw)."""
        return sum(1 for throttle in self._throttles.values() if throttle.throttled)

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim and send until `stopping` is set; in-flight requests are left to drain()."""
        worker = self._config.worker
        while not stopping.is_set():
            self.wake.clear()
            self._recorded.clear()
            self._freed.clear()
            # Answered leases leave the claim's count (see _claim), so the results waiting for their write are
            # bounded here instead: beyond one batch of them, each takes a lease until the recorder catches up.
            backlog = max(0, self._recorder.unwritten_count() - worker.batch_size)
            stalled = self._stalled()
            # Leases queued for a webhook at its limit wait for its answers, not for this process's slots: they
            # do not keep other webhooks' deliveries from being claimed.
            free = PROCESS_AHEAD * worker.concurrency - len(self._in_flight) - self._startable() - backlog
            want = min(worker.batch_size, free)
            try:
                got = await self._claim(want, stalled) if want > 0 else 0
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("delivery.database_unavailable", error=str(exc), detail="retrying after the poll interval")
                got = -1
            self._claimed_all = want > 0 and got == want
            if self._claimed_all:
                continue
            # Fewer than wanted: nothing else is due, or what is due belongs to webhooks at their lease budget (or
            # held by another process). Claim again when new events were routed (wake), when a webhook held here
            # has its limit's worth of leases free (freed: see _done), or when the results waiting for their write were
            # what held this claim back and some were written (recorded). Meanwhile the leases queued here keep
            # every slot busy.
            waits = [self.wake, self._freed, stopping]
            if backlog > 0:
                waits.append(self._recorded)
            await wait_any(*waits, timeout=worker.poll_interval)

    def _stalled(self) -> list[int]:
        """The webhooks held here whose receiver has stopped answering (at their limit, no answer for a while): their
        queued leases are given back, and claims lease them no more than their cap until they answer again."""
        clock = time.monotonic()
        stalled = [w for w, t in self._throttles.items() if t.stalled(self._busy[w], clock)]
        for webhook_id in stalled:
            if webhook_id in self._queues:
                self._give_back(webhook_id, datetime.now(UTC))
        return stalled

    def _startable(self) -> int:
        """Leases queued here that could start as soon as this process has a slot (their webhook is below its
        limit)."""
        total = 0
        for webhook_id, queue in self._queues.items():
            throttle = self._throttles[webhook_id]
            total += min(len(queue), max(0, throttle.limit - self._busy[webhook_id]))
        return total

    async def _claim(self, want: int, stalled: list[int]) -> int:
        worker = self._config.worker
        retry = self._config.retry
        began = time.perf_counter()
        rows = await self._db.claim_deliveries(
            limit=want,
            per_webhook=worker.per_webhook_concurrency,
            ahead=AHEAD,
            lease_seconds=self._lease_seconds,
            owner=self._owner,
            schedule=retry.schedule,
            jitter=retry.jitter,
            test_lease_seconds=self._test_lease_seconds,
            answered=self._recorder.unwritten(),
            stalled=stalled,
        )
        if self._metrics is not None:
            self._metrics.claim_duration.observe(time.perf_counter() - began)
        now = datetime.now(UTC)
        clock = time.monotonic()
        self._bodies.clear()
        for row in rows:
            try:
                claimed = Claimed.from_row(row, now, self._keys)
                body = self._body(claimed)
            except Exception as exc:  # one bad row costs one failed attempt, never the stage
                self._finish(Attempted.of_row(row), unbuildable(exc))
                continue
            self._enqueue(claimed, body, row, clock)
        self._start_ready()
        return len(rows)

    def _enqueue(self, claimed: Claimed, body: bytes, row: ClaimRow, clock: float) -> None:
        webhook_id = claimed.webhook_id
        queue = self._queues.get(webhook_id)
        if queue is None:
            queue = self._queues[webhook_id] = deque()
            self._turns.append(webhook_id)
        throttle = self._throttles.get(webhook_id)
        if throttle is None or (len(queue) == 0 and self._busy[webhook_id] == 0):
            # Taken over (from another process, or back after a pause): from the limit its last sender left.
            cap = self._config.worker.per_webhook_concurrency
            throttle = self._throttles[webhook_id] = Throttle.start(cap, row.concurrency_limit, row.rate_limit, clock)
        throttle.rate = row.rate_limit
        queue.append((claimed, body, clock + self._max_wait))
        self._queued += 1

    def _start_ready(self) -> None:
        """Start every queued request that the process's slots and its webhook's limits let start now, the
        webhooks taking turns; when a rate or a Retry-After puts the next start off, come back then."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._starting:
            return
        concurrency = self._config.worker.concurrency
        clock = time.monotonic()
        soonest: float | None = None
        late: list[Claimed] = []
        passed = 0  # webhooks met in a row that could not start one
        while self._turns and len(self._in_flight) < concurrency and passed < len(self._turns):
            webhook_id = self._turns[0]
            queue = self._queues[webhook_id]
            claimed, body, start_by = queue[0]
            throttle = self._throttles[webhook_id]
            if clock > start_by:  # its lease no longer covers a whole request: given back, never sent late
                queue.popleft()
                self._queued -= 1
                late.append(claimed)
                if not queue:
                    self._turns.popleft()
                    del self._queues[webhook_id]
                continue
            # A test is one request an operator waits for: the webhook's limits do not hold it back.
            wait = 0.0 if claimed.kind == DeliveryKind.TEST else throttle.wait(self._busy[webhook_id], clock)
            if wait != 0.0:
                if wait is not None:
                    soonest = wait if soonest is None else min(soonest, wait)
                self._turns.rotate(-1)
                passed += 1
                continue
            queue.popleft()
            self._queued -= 1
            throttle.started(clock)
            self._start(claimed, body)
            passed = 0
            if queue:
                self._turns.rotate(-1)
            else:
                self._turns.popleft()
                del self._queues[webhook_id]
        if soonest is not None:
            self._timer = asyncio.get_running_loop().call_later(soonest, self._start_ready)
        if late:
            log.warning("delivery.lease_given_back", count=len(late), reason="waited past its lease for a slot")
            self._return_later(late, datetime.now(UTC))

    def _start(self, claimed: Claimed, body: bytes) -> None:
        self._busy[claimed.webhook_id] += 1
        task = asyncio.create_task(self._deliver(claimed, body))
        self._in_flight[task] = claimed
        task.add_done_callback(self._done)

    def _body(self, claimed: Claimed) -> bytes:
        """One serialisation per event and format within a claim (per webhook, for formats whose body names it)."""
        fmt = FORMATS[claimed.format]
        key = (claimed.event_id, claimed.format, claimed.webhook_id if fmt.body_per_webhook else 0)
        body = self._bodies.get(key)
        if body is None:
            body = fmt.body(claimed.event, claimed.webhook_id, claimed.webhook_name)
            self._bodies[key] = body
        return body

    def _done(self, task: asyncio.Task[None]) -> None:
        claimed = self._in_flight.pop(task, None)
        if claimed is not None and self._worth_a_claim(claimed.webhook_id):
            self._freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery.task_crashed", error=repr(task.exception()))
        self._start_ready()

    def _worth_a_claim(self, webhook_id: int) -> bool:
        """One request of `webhook_id` finished: is its lease budget now free enough (by its limit's worth) for a
        claim's round trip to be worth it? Claims so come in batches rather than one per finished request."""
        self._busy[webhook_id] -= 1
        busy = self._busy[webhook_id]
        if busy <= 0:
            del self._busy[webhook_id]
        throttle = self._throttles.get(webhook_id)
        if throttle is None:
            return self._claimed_all
        queue = self._queues.get(webhook_id)
        if busy <= 0 and queue is None and not throttle.throttled:
            del self._throttles[webhook_id]  # idle and untaught: nothing to remember
            # Its last lease answered: worth a claim only if the last claim took all it asked for (more may be
            # due); otherwise a new event wakes the next claim, and retries falling due are found by the poll.
            return self._claimed_all
        budget = AHEAD * throttle.limit
        if throttle.rate is not None:
            budget = min(budget, math.ceil(throttle.rate))
        held = max(busy, 0) + (len(queue) if queue else 0)
        return budget - held >= min(throttle.limit, budget)

    async def _deliver(self, claimed: Claimed, body: bytes) -> None:
        timeout = TEST_TIMEOUT if claimed.kind == DeliveryKind.TEST else self._config.delivery.timeout
        began = time.monotonic()
        try:
            request = prepare(claimed, body, int(time.time()), timeout, issuer=self._config.api.public_url)
        except Exception as exc:  # a webhook or event its format cannot sign: this delivery's failed attempt
            outcome = unbuildable(exc)
        else:
            outcome = await self._sender.send(request)
        limit: int | None = None
        throttled_until: datetime | None = None
        throttle = self._throttles.get(claimed.webhook_id)
        if throttle is not None and claimed.kind != DeliveryKind.TEST:
            clock = time.monotonic()
            throttle.answered(outcome.status, began, outcome.retry_after, clock)
            limit = throttle.stored_limit()
            if throttle.blocked_until > clock:
                throttled_until = outcome.finished_at + timedelta(seconds=throttle.blocked_until - clock)
                self._give_back(claimed.webhook_id, throttled_until)
        self._finish(Attempted.of_claimed(claimed), outcome, webhook_limit=limit, throttled_until=throttled_until)

    def _give_back(self, webhook_id: int, due_at: datetime) -> None:
        """The receiver asked to wait (Retry-After): the leases queued for it go back, due when it said."""
        queue = self._queues.pop(webhook_id, None)
        if not queue:
            return
        self._turns.remove(webhook_id)
        self._queued -= len(queue)
        self._return_later([claimed for claimed, _, _ in queue], due_at)

    def _return_later(self, rows: list[Claimed], due_at: datetime) -> None:
        task = asyncio.create_task(self._return(rows, due_at))
        self._returning.add(task)
        task.add_done_callback(self._returning.discard)

    async def _return(self, rows: list[Claimed], due_at: datetime) -> None:
        try:
            await self._db.return_leases(
                ids=[r.id for r in rows], lease_tokens=[r.lease_token for r in rows], due_at=due_at
            )
        except Exception as exc:  # their leases expire and are rescued instead
            log.warning("delivery.return_failed", count=len(rows), error=str(exc))

    def _finish(
        self,
        claimed: Attempted,
        outcome: Outcome,
        *,
        webhook_limit: int | None = None,
        throttled_until: datetime | None = None,
    ) -> None:
        """Hand the attempt's result to the recorder and write its one log line."""
        # A delivery sent to an invalid webhook is its probe: when it fails, it waits (held) for the next one.
        probe = claimed.webhook_state == WebhookState.INVALID and claimed.kind != DeliveryKind.TEST
        state, next_at = next_step(outcome, claimed.retry_delay, claimed.next_attempt_at, hold_on_failure=probe)
        self.attempts_made += 1
        duration_ms = outcome.duration_ms
        self._recorder.add(
            Result(
                delivery_id=claimed.id,
                lease_token=claimed.lease_token,
                state=state.value,
                next_attempt_at=next_at,
                status=outcome.status,
                error_class=outcome.error_class,
                error=outcome.error,
                started_at=outcome.started_at,
                finished_at=outcome.finished_at,
                duration_ms=duration_ms,
                response=outcome.response,
                webhook_limit=webhook_limit,
                throttled_until=throttled_until,
            )
        )
        # A failed attempt is a warning; a dead letter (a failed delivery that is not a test) an error.
        level = log.info if state == DeliveryState.DELIVERED else log.warning
        if state == DeliveryState.FAILED and claimed.kind != DeliveryKind.TEST:
            level = log.error
        level(
            "delivery.attempt",
            event_id=str(claimed.event_id),
            delivery_id=str(claimed.id),
            webhook_id=claimed.webhook_id,
            organisation=claimed.organisation,
            type=claimed.type,
            kind=claimed.kind,
            attempt=claimed.attempt,
            outcome=state.value,
            status=outcome.status,
            duration_ms=duration_ms,
            next_attempt_at=envelope.rfc3339(next_at) if next_at else None,
            error=outcome.error,
        )
        if self._metrics is not None:
            self._metrics.observe_attempt(state.value, duration_ms / 1000)

    async def drain(self, grace: float) -> int:
        """Let in-flight requests finish within `grace` seconds; cancel and release the rest (and every lease
        queued here, never started). Returns how many leases were released."""
        self._starting = False
        if self._timer is not None:
            self._timer.cancel()
        self._queues.clear()
        self._turns.clear()
        self._queued = 0
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=grace)
        leftover = dict(self._in_flight)
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.wait(list(leftover))
        if self._returning:
            await asyncio.wait(list(self._returning))
        await self._recorder.flush()
        released = await self._db.release_owner_leases(owner=self._owner)
        if released:
            log.info("delivery.released", count=len(released), reason="shutdown: never started, or the grace ran out")
        return len(released)
