"""Routing: new events in the queue table become deliveries, many events per statement."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from dispatcher.aio import wait_any
from dispatcher.db import Database, is_transient
from dispatcher.db.rows import RoutedRow

log = structlog.get_logger("dispatcher.fanout")


class Router:
    """Routes events in batches of `batch_size`.

    An event whose routing fails for a reason of its own is set aside (marked dispatched with its error) so that
    it never blocks the others; when the database is having trouble (a lock timeout, a deadlock, a lost link),
    nothing is set aside and the batch is tried again after the poll interval.
    """

    def __init__(
        self, db: Database, *, batch_size: int, max_attempts: int, wake: asyncio.Event, routed: asyncio.Event
    ) -> None:
        self._db = db
        self._batch_size = batch_size
        self._max_attempts = max_attempts
        self.wake = wake
        self._routed = routed
        self.events_routed = 0

    async def run(self, stopping: asyncio.Event, poll_interval: float) -> None:
        """Route until `stopping` is set: at once on a doorbell, else every poll interval."""
        while not stopping.is_set():
            self.wake.clear()
            try:
                if await self.route_batch() == self._batch_size:
                    continue
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("fanout.database_unavailable", error=str(exc), detail="retrying after the poll interval")
            await wait_any(self.wake, stopping, timeout=poll_interval)

    async def route_batch(self) -> int:
        """Route one batch; returns the number of events taken."""
        try:
            rows = await self._db.route_events(limit=self._batch_size, max_attempts=self._max_attempts)
        except asyncpg.PostgresError as exc:
            if is_transient(exc):
                raise
            log.error("fanout.batch_failed", error=str(exc), detail="routing the batch one event at a time")
            return await self._route_one_by_one()
        self._account(rows)
        return len(rows)

    async def _route_one_by_one(self) -> int:
        ids = await self._db.undispatched_events(limit=self._batch_size)
        for event_id in ids:
            try:
                rows = await self._db.route_events(limit=1, max_attempts=self._max_attempts, event_id=event_id)
            except asyncpg.PostgresError as exc:
                if is_transient(exc):  # a lock timeout or a deadlock says nothing about this event
                    raise
                log.error("fanout.event_unroutable", event_id=str(event_id), error=str(exc))
                try:
                    await self._db.mark_event_unroutable(event_id=event_id, error=str(exc))
                except asyncpg.PostgresError as mark_error:
                    if is_transient(mark_error):
                        raise
                    # It stays unrouted and is tried again with the next batch; the others go on meanwhile.
                    log.error("fanout.event_unmarkable", event_id=str(event_id), error=str(mark_error))
                continue
            self._account(rows)
        return len(ids)

    def _account(self, rows: list[RoutedRow]) -> None:
        self.events_routed += len(rows)
        if any(row.delivery_count for row in rows):
            self._routed.set()
        for row in rows:
            if row.delivery_count == 0:
                log.info("event.routed_to_nobody", event_id=str(row.id), organisation=row.organisation, type=row.type)
