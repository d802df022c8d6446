"""Batched result writes: attempts, delivery states and webhook errors in one statement per batch."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import structlog
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential

from dispatcher.config import HealthConfig
from dispatcher.db import Database, is_transient
from dispatcher.health import HealthKeeper

log = structlog.get_logger("dispatcher.recorder")


@dataclass(frozen=True, slots=True)
class Result:
    """One attempt's result, to be written under the fencing token it was claimed with."""

    delivery_id: UUID
    lease_token: int
    state: str
    next_attempt_at: datetime | None
    status: int | None
    error_class: str | None
    error: str | None
    started_at: datetime
    finished_at: datetime
    duration_ms: int
    response: str
    # The webhook's concurrency limit as the claiming process now sees it (0: none; None: not said), and a time
    # before which no process is to claim for it (the receiver's Retry-After on a 429 or 503).
    webhook_limit: int | None = None
    throttled_until: datetime | None = None


class Recorder:
    """Writes results as soon as the previous write is done, so batches grow with load (group commit).

    Each write takes at most `max_batch` rows; a write takes a few milliseconds, so a result waits well under
    the 50 ms the contract allows. `recorded` is set after each write: finished leases free per-webhook slots.
    """

    def __init__(
        self,
        db: Database,
        health: HealthConfig,
        keeper: HealthKeeper,
        *,
        recorded: asyncio.Event,
        max_batch: int = 100,
    ) -> None:
        self._db = db
        self._health = health
        self._keeper = keeper
        self._max_batch = max_batch
        self._recorded = recorded
        self._pending: list[Result] = []
        self._queued = asyncio.Event()
        self._writing = asyncio.Lock()  # run() and a shutdown flush() must not take the same batch
        self.discarded = 0
        self._give_up_at: float | None = None

    def give_up_at(self, moment: float) -> None:
        """From `moment` (time.monotonic()) on, a failed write is not retried: a shutdown must not hang on a
        database that is down (those deliveries' leases expire and they are sent again)."""
        self._give_up_at = moment

    def unwritten(self) -> list[UUID]:
        """The deliveries whose results are queued or being written: answered, but still leased."""
        return [result.delivery_id for result in self._pending]

    def unwritten_count(self) -> int:
        """How many results are queued or being written."""
        return len(self._pending)

    def add(self, result: Result) -> None:
        """Queue a result for the next write."""
        self._pending.append(result)
        self._queued.set()

    async def run(self) -> None:
        """Write whatever is queued, forever (until cancelled; call flush() after cancelling for the rest)."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything queued now, in batches of at most `max_batch`."""
        async with self._writing:
            while self._pending:
                batch = self._pending[: self._max_batch]
                try:
                    await self._write(batch)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    await self._write_one_by_one(batch, exc)
                del self._pending[: len(batch)]
                self._recorded.set()

    async def _write_one_by_one(self, batch: list[Result], error: Exception) -> None:
        """A batch the database refuses: each result alone, so that one bad result costs only its own write. A
        result refused alone is dropped (logged): its lease expires and the delivery is tried again."""
        log.error("recorder.batch_refused", size=len(batch), error=str(error), detail="writing results one by one")
        for result in batch:
            try:
                await self._write([result])
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.error("delivery.result_unwritable", delivery_id=str(result.delivery_id), error=str(exc))

    async def _write(self, batch: list[Result]) -> None:
        # While the database is unreachable the results wait here; their leases may expire meanwhile, in which
        # case the rescuer requeues those deliveries and these stale results are discarded on arrival.
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.1, max=5),
            retry=retry_if_exception(is_transient),
            stop=lambda _: self._give_up_at is not None and time.monotonic() >= self._give_up_at,
            before_sleep=lambda state: log.warning(
                "recorder.database_unavailable", error=str(state.outcome.exception() if state.outcome else "")
            ),
            reraise=True,
        ):
            with attempt:
                recorded = await self._db.record_results(
                    delivery_ids=[r.delivery_id for r in batch],
                    lease_tokens=[r.lease_token for r in batch],
                    states=[r.state for r in batch],
                    next_attempt_ats=[r.next_attempt_at for r in batch],
                    statuses=[r.status for r in batch],
                    error_classes=[r.error_class for r in batch],
                    errors=[r.error for r in batch],
                    started_ats=[r.started_at for r in batch],
                    finished_ats=[r.finished_at for r in batch],
                    durations_ms=[r.duration_ms for r in batch],
                    responses=[r.response for r in batch],
                    disable_after_failures=self._health.disable_after_failures,
                    min_failing_seconds=self._health.min_failing_period,
                    limits=[r.webhook_limit for r in batch],
                    throttled_untils=[r.throttled_until for r in batch],
                )
        for result in batch:
            if result.delivery_id not in recorded.applied:
                self.discarded += 1
                log.warning(
                    "delivery.result_discarded",
                    delivery_id=str(result.delivery_id),
                    reason="the lease expired and was rescued before the result arrived (stale fencing token)",
                )
        await self._keeper.after_batch(recorded.webhooks)
