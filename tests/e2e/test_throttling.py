"""End to end: a webhook's limits across worker processes. The cap on requests in flight with three processes
started by one `dispatcher run` ([worker] processes), the rate limit with two, and a receiver that answers 429
above five requests at once. Counted at the receiver and in the database."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import asyncpg
import pytest
from aiohttp import web

from tests.support.daemon import start_daemon
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = pytest.mark.db


WORKERS_CONNECTED = (
    "SELECT count(DISTINCT application_name) FROM pg_stat_activity WHERE application_name LIKE 'dispatcher worker %'"
)


@pytest.mark.timeout(90)
async def test_three_worker_processes_keep_one_webhooks_cap(conn: asyncpg.Connection, dsn, daemon_factory) -> None:
    """`[worker] processes = 3`: one `dispatcher run` starts two more workers (three connect as workers), and
    with every one of them claiming, a webhook never has more than per_webhook_concurrency (4) requests in flight
    at its receiver, while it does reach 4; every event arrives, once. Killing the first process stops the
    others."""

    async def slow(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(0.03)
        return web.Response(status=200)

    receiver = Receiver(slow)
    await receiver.start()
    other = Receiver()  # a second webhook, so that more than one process has work
    await other.start()
    try:
        await make_webhook(conn, receiver.url, events=["request.create"], name="capped")
        await make_webhook(conn, other.url, events=["request.create"], name="other")
        daemon = await start_daemon(
            daemon_factory, dsn, worker={"processes": 3, "per_webhook_concurrency": 4, "concurrency": 20}
        )
        await wait_db(conn, WORKERS_CONNECTED, 3)
        await emit_many(conn, 300)
        await receiver.wait_count(300, timeout=60)
        await other.wait_count(300, timeout=60)
        await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'delivered'", 600)
        assert len(receiver.ids()) == 300 and len(receiver.arrivals) == 300
        assert receiver.most_in_flight == 4, f"at most {receiver.most_in_flight} requests in flight"
        assert len([line for line in daemon.lines() if line.get("event") == "dispatcher.worker_started"]) == 2
        # The first process killed outright: its workers stop too (none is left behind to claim).
        daemon.kill()
        await wait_db(conn, WORKERS_CONNECTED, 0)
    finally:
        await receiver.stop()
        await other.stop()


@pytest.mark.timeout(120)
async def test_a_rate_limit_holds_across_two_processes(conn: asyncpg.Connection, dsn, daemon_factory) -> None:
    """rate_limit = 20 per second, two worker processes, a backlog of 900: over 30 s the receiver counts
    within 10 % of 20 per second, and no whole second beyond 22."""
    arrived: list[float] = []

    async def counting(request: web.Request, n: int) -> web.Response:
        arrived.append(time.monotonic())
        return web.Response(status=200)

    receiver = Receiver(counting)
    await receiver.start()
    try:
        webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.create"])
        await conn.execute("UPDATE webhook SET rate_limit = 20 WHERE id = $1", webhook_id)
        await emit_many(conn, 900)
        await start_daemon(daemon_factory, dsn, worker={"processes": 2})
        await receiver.wait_count(5, timeout=30)
        start = arrived[0]
        await receiver.wait_for(lambda: arrived[-1] - start >= 31.0, timeout=60)
        window = [t - start for t in arrived if t - start < 30.0]
        assert 540 <= len(window) <= 660, f"{len(window)} requests in 30 s at 20 per second"
        per_second = Counter(int(t) for t in window)
        assert max(per_second.values()) <= 22, sorted(per_second.items())
        assert len(receiver.ids()) == len(receiver.arrivals)
    finally:
        await receiver.stop()


@pytest.mark.timeout(90)
async def test_429s_above_five_at_once_settle_the_webhook_at_five(
    conn: asyncpg.Connection, dsn, daemon_factory
) -> None:
    """A receiver that answers 429 when more than 5 of its requests are in flight, to a webhook allowed 20:
    the limit halves on the first 429s and grows back by one per quiet second, so the 429s stay few (under 5 % of
    the requests) and the webhook's concurrency_limit, as the API shows it, stays at or below 6 (5 plus the one
    that probes for more); nothing is lost (429s wait for their retry)."""
    refused = 0

    async def five_at_once(request: web.Request, n: int) -> web.Response:
        nonlocal refused
        if receiver.in_flight > 5:
            refused += 1
            return web.Response(status=429)
        await asyncio.sleep(0.02)
        return web.Response(status=200)

    receiver = Receiver(five_at_once)
    await receiver.start()
    try:
        webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.create"])
        await emit_many(conn, 1500)
        await start_daemon(daemon_factory, dsn, worker={"per_webhook_concurrency": 20})
        limits: set[int | None] = set()

        async def done() -> bool:
            limits.add(await conn.fetchval("SELECT concurrency_limit FROM webhook WHERE id = $1", webhook_id))
            return bool(
                await conn.fetchval("SELECT count(*) >= 1500 - $1 FROM delivery WHERE state = 'delivered'", refused)
            )

        deadline = time.monotonic() + 60
        while not await done():
            assert time.monotonic() < deadline, "the backlog was not sent within 60 s"
            await asyncio.sleep(0.05)
        ok = len(receiver.arrivals) - refused
        assert refused < 0.05 * len(receiver.arrivals), f"{refused} 429s of {len(receiver.arrivals)} requests"
        assert ok + refused == len(receiver.arrivals)
        taught = {limit for limit in limits if limit is not None}
        assert taught and max(taught) <= 6, limits
        states = dict(await conn.fetch("SELECT state, count(*) FROM delivery GROUP BY 1"))
        assert states.get("delivered", 0) + states.get("pending", 0) + states.get("leased", 0) == 1500, states
    finally:
        await receiver.stop()
