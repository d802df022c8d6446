"""The doorbell: LISTEN on its own connection, reconnecting, waking the stages; polling stays the guarantee."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import structlog
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

CHANNEL = "dispatcher_events"

log = structlog.get_logger("dispatcher.listener")


class Listener:
    """Sets every registered asyncio.Event on each notification; reconnects with backoff when the link drops."""

    def __init__(self, dsn: str, doorbells: Sequence[asyncio.Event], check_interval: float = 5.0) -> None:
        self._dsn = dsn
        self._doorbells = list(doorbells)
        self._check_interval = check_interval
        self.connected = asyncio.Event()

    def _ring(self, *_args: object) -> None:
        for bell in self._doorbells:
            bell.set()

    async def run(self) -> None:
        """Stay subscribed until cancelled."""
        async for attempt in AsyncRetrying(
            wait=wait_exponential(multiplier=0.2, max=10),
            retry=retry_if_exception_type((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)),
            before_sleep=lambda state: log.warning(
                "listener.reconnecting", error=str(state.outcome.exception() if state.outcome else "")
            ),
        ):
            with attempt:
                await self._listen_once()

    async def _listen_once(self) -> None:
        conn: asyncpg.Connection = await asyncpg.connect(
            self._dsn, server_settings={"application_name": "dispatcher-listener"}
        )
        try:
            await conn.add_listener(CHANNEL, self._ring)
            self.connected.set()
            # Whatever arrived while we were away is found by the stages' next scan.
            self._ring()
            while True:
                await asyncio.sleep(self._check_interval)
                # A dead link raises here; asyncpg does not always notice on its own.
                await conn.execute("SELECT 1")
        finally:
            self.connected.clear()
            try:
                await conn.close(timeout=2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn.terminate()  # the link is already gone
