"""Maintenance that runs in every worker, one process at a time cluster-wide (advisory locks)."""

from __future__ import annotations

import asyncio

import structlog

from dispatcher.aio import wait_any
from dispatcher.db import Database, is_transient

log = structlog.get_logger("dispatcher.maintenance")

RESCUE_LOCK = 0x64697370_0001


class Rescuer:
    """Returns deliveries with expired leases to pending (or failed when it was their last attempt)."""

    def __init__(self, db: Database, *, interval: float, rescued: asyncio.Event) -> None:
        self._db = db
        self._interval = interval
        self._rescued = rescued
        self.rescued_total = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Rescue every `interval` seconds until `stopping` is set."""
        while not stopping.is_set():
            try:
                await self.rescue_once()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                log.warning("maintenance.database_unavailable", error=str(exc))
            await wait_any(stopping, timeout=self._interval)

    async def rescue_once(self) -> int:
        """One pass, skipped when another process holds the lock; returns the number rescued."""
        async with self._db.pool.acquire() as conn, conn.transaction():
            self._db.round_trips += 2
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RESCUE_LOCK):
                return 0
            rows = await conn.fetch(self._db.queries["rescue_leases"])
        for row in rows:
            log.warning(
                "delivery.lease_expired",
                delivery_id=str(row["id"]),
                webhook_id=row["webhook_id"],
                state=row["state"],
            )
        if rows:
            self.rescued_total += len(rows)
            self._rescued.set()
        return len(rows)
