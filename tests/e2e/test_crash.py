"""Crash, shutdown and fairness: real processes killed and signalled, counted at the receiver and in the
database, never from the daemon's own counters."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from aiohttp import web

from tests.support.cli import run_cli
from tests.support.daemon import start_daemon
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = pytest.mark.db


@pytest.mark.timeout(30)
async def test_sigkill_mid_drain_loses_nothing(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """SIGKILL the daemon once at least 20 % of 1,000 events have arrived with requests in flight, start it
    again: every event arrives, and the duplicates are no more than the deliveries that were leased but not
    yet recorded at the kill."""

    async def slow(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(0.02)
        return web.Response(status=200)

    receiver.behaviour = slow
    await make_webhook(conn, receiver.url, events=["request.create"])
    settings = {"delivery": {"timeout": "2s"}, "worker": {"lease_margin": "1s", "concurrency": 20}}
    first = await start_daemon(daemon_factory, dsn, **settings)
    await emit_many(conn, 1000)
    await receiver.wait_for(lambda: len(receiver.ids()) >= 200 and receiver.in_flight >= 1, timeout=60)
    first.kill()
    leased_at_kill = await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'leased'")
    arrived_at_kill = len(receiver.arrivals)
    assert arrived_at_kill < 1000, "the daemon finished before the kill; the test proves nothing"

    second = await start_daemon(daemon_factory, dsn, **settings)
    event_ids = {str(r["id"]) for r in await conn.fetch("SELECT id FROM events")}
    await receiver.wait_for(lambda: receiver.ids() >= event_ids, timeout=90)
    await wait_db(conn, "SELECT count(*) FROM delivery WHERE state <> 'delivered'", 0, timeout=30)

    counts = Counter(a.message_id for a in receiver.arrivals)
    duplicates = sum(n - 1 for n in counts.values())
    assert set(counts) == event_ids
    assert duplicates <= leased_at_kill, f"{duplicates} duplicates, {leased_at_kill} leased at the kill"
    rescued = await conn.fetchval("SELECT count(*) FROM delivery WHERE attempts > 1")
    assert rescued >= duplicates
    code, printed, _ = await run_cli("status", config=second.config)
    print(f"\nkilled with {arrived_at_kill} arrivals, {leased_at_kill} leased; {duplicates} duplicates")
    print(printed)
    assert code == 0
    assert "delivered  1000" in printed


async def test_sigterm_lets_in_flight_requests_finish(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """SIGTERM with requests in flight: they finish and are recorded, nothing stays leased, exit code 0."""
    finished: list[str] = []

    async def slow(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(1.0)
        finished.append(request.headers["webhook-id"])
        return web.Response(status=200)

    receiver.behaviour = slow
    await make_webhook(conn, receiver.url, events=["*"])
    daemon = await start_daemon(daemon_factory, dsn)
    await emit_many(conn, 5)
    await receiver.wait_for(lambda: receiver.in_flight == 5, timeout=30)
    daemon.terminate()
    assert await daemon.wait_exit(timeout=30) == 0
    assert sorted(finished) == sorted(a.message_id for a in receiver.arrivals)
    assert len(finished) == 5
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'leased'") == 0
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'delivered'") == 5
    assert await conn.fetchval("SELECT count(*) FROM attempt WHERE status = 200") == 5


async def test_sigterm_past_the_grace_releases_the_rest(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """Requests still running when shutdown_grace ends are cancelled and their deliveries released to pending,
    due at once, with the attempt counted at claim given back (no result was recorded); the daemon exits 0."""

    async def hang(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    receiver.behaviour = hang
    await make_webhook(conn, receiver.url, events=["*"])
    daemon = await start_daemon(daemon_factory, dsn, worker={"shutdown_grace": "500ms"}, delivery={"timeout": "30s"})
    await emit_many(conn, 3)
    await receiver.wait_for(lambda: receiver.in_flight == 3, timeout=30)
    daemon.terminate()
    assert await daemon.wait_exit(timeout=30) == 0
    rows = await conn.fetch("SELECT state, next_attempt_at <= now() AS due, attempts FROM delivery")
    assert [(r["state"], r["due"], r["attempts"]) for r in rows] == [("pending", True, 0)] * 3


async def test_a_hanging_webhook_does_not_starve_another(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """With 10,000 due deliveries to a receiver that hangs, another webhook's event still arrives within
    5 poll intervals (a liveness bound with 5x slack over the one interval the contract allows)."""
    stuck = Receiver(behaviour=_hang)
    await stuck.start()
    try:
        await make_webhook(conn, stuck.url, events=["problem.update"])
        await make_webhook(conn, receiver.url, events=["request.create"])
        poll = 1.0
        await start_daemon(
            daemon_factory,
            dsn,
            worker={"poll_interval": f"{poll}s", "concurrency": 20, "per_webhook_concurrency": 10},
            delivery={"timeout": "60s"},
        )
        await emit_many(conn, 10_000, type="problem.update")
        await wait_db(conn, "SELECT count(*) FROM events WHERE dispatched_at IS NULL", 0, timeout=60)
        await stuck.wait_for(lambda: stuck.in_flight == 10, timeout=30)
        due = await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'pending'")
        assert due >= 9_000
        start = time.monotonic()
        await conn.execute("SELECT dispatcher_emit('acme', 'request.create', '{}')")
        await receiver.wait_count(1, timeout=5 * poll)
        print(f"\nthe healthy webhook's event arrived after {time.monotonic() - start:.3f} s")
        assert stuck.in_flight == 10
    finally:
        await stuck.stop()


async def _hang(request: web.Request, n: int) -> web.Response:
    await asyncio.sleep(3600)
    return web.Response()
