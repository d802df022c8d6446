"""Waiting for a fact, never for a time: a value that holds, a row that changed, a log line (see
`Daemon.wait_line`), a marker event that arrived after everything before it was handled.

Every timeout here is a liveness bound with slack (a test fails rather than hangs), not a speed test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from uuid import UUID

import asyncpg

from tests.support.factories import make_webhook
from tests.support.receivers import Receiver

T = TypeVar("T")

MARKER_ORGANISATION = "marker"


async def poll(check: Callable[[], Awaitable[T]], what: str, timeout: float = 30.0, interval: float = 0.1) -> T:
    """Call `check` until it returns something truthy, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Poll `check` until it holds; fail after `timeout` seconds."""
    await poll(check, what, timeout, interval=0.05)


async def wait_db(conn: asyncpg.Connection, sql: str, expected: object, *args: Any, timeout: float = 30.0) -> None:
    """Poll `sql` (with `args`) until it returns `expected`."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = await conn.fetchval(sql, *args)
        if value == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sql!r} gave {value!r}, expected {expected!r}")


async def wait_leases_expired(conn: asyncpg.Connection, ids: Iterable[UUID], timeout: float = 10.0) -> None:
    """Until the leases of deliveries `ids` have run out by the server's clock, the one claims and rescues
    compare them with."""
    await wait_db(
        conn, "SELECT bool_and(leased_until < now()) FROM delivery WHERE id = ANY($1::uuid[])", True, list(ids),
        timeout=timeout,
    )  # fmt: skip


async def caught_up(conn: asyncpg.Connection, marker: Receiver, timeout: float = 30.0) -> None:
    """Prove that the running daemon has handled everything that was due before this call, so that a test can
    then assert that something did NOT happen (no retry, no send of a held delivery, no mail).

    A marker event goes to a webhook of an organisation of its own (made on first use, pointing at `marker`, a
    receiver of its own): it touches none of the test's webhooks, receivers or organisations, but its rows are
    in events, delivery and attempt. The daemon claims the oldest due deliveries first, so whatever was due
    before the marker was inserted is claimed no later than it; once the marker has arrived and its result is
    recorded, a claim, a send and a write of results have all run after this call began.
    """
    webhook_id = await conn.fetchval(
        "SELECT id FROM webhook WHERE organisation = $1 AND url = $2", MARKER_ORGANISATION, marker.url
    )
    if webhook_id is None:
        await make_webhook(conn, marker.url, organisation=MARKER_ORGANISATION, events=["*"], name="marker")
    event_id = await conn.fetchval("SELECT dispatcher_emit($1, 'request.create', '{}')", MARKER_ORGANISATION)
    await marker.wait_for(lambda: str(event_id) in marker.ids(), timeout)
    await wait_db(conn, "SELECT state FROM delivery WHERE event_id = $1", "delivered", event_id, timeout=timeout)
