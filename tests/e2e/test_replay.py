"""Replay after an outage (issue 12): a receiver down until 50 deliveries are dead letters, the log showing each,
the receiver fixed, a replay of the window delivering every one under its original event id; and a replay that
survives a SIGKILL of the daemon halfway through its walk.

The figures each test saw are printed (run with -s to read them).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.support.api import call, make_org
from tests.support.daemon import start_daemon
from tests.support.factories import make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import poll, wait_db

pytestmark = pytest.mark.db


class Switch:
    """A receiver behaviour: 500 while `down`, else 200."""

    def __init__(self) -> None:
        self.down = True

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        if self.down:
            return web.Response(status=500, text="down for maintenance")
        return web.Response(status=200, text="ok")


@pytest.mark.timeout(90)
async def test_outage_replay_delivers_every_dead_letter_once(
    dsn: str, conn: asyncpg.Connection, daemon_factory: Any
) -> None:
    """50 events meet a receiver answering 500 until all 50 deliveries are dead letters; the delivery log shows
    each with its 4 attempts; the receiver is fixed; a replay of the window delivers every one exactly once under
    its original event id (webhook-id), and its progress ends completed with 50 considered, created, delivered."""
    switch = Switch()
    receiver = Receiver(switch)
    await receiver.start()
    try:
        org = await make_org(dsn, "outage")
        webhook_id, _ = await make_webhook(conn, receiver.url, organisation=org.id, events=["request.*"])
        daemon = await start_daemon(daemon_factory, dsn)
        url = daemon.api_address()
        since = (await conn.fetchval("SELECT now()")) - timedelta(seconds=1)
        await conn.execute(
            "INSERT INTO events (organisation, type, object_id, payload)"
            " SELECT $1, 'request.create', g::text, '{}' FROM generate_series(1, 50) g",
            org.id,
        )
        await wait_db(
            conn, "SELECT count(*) FROM delivery WHERE webhook_id = $1 AND state = 'failed'", 50, webhook_id,
            timeout=60,
        )  # fmt: skip
        event_ids = {str(r["id"]) for r in await conn.fetch("SELECT id FROM events WHERE organisation = $1", org.id)}

        log = await call(url, "GET", f"/webhooks/{webhook_id}/deliveries", token=org.viewer,
                         params={"state": "failed", "limit": "100"})  # fmt: skip
        assert log.status == 200 and len(log.body["data"]) == 50, log
        assert all(d["dead_letter"] for d in log.body["data"])
        assert {d["event_id"] for d in log.body["data"]} == event_ids
        for delivery in log.body["data"]:
            detail = await call(url, "GET", f"/deliveries/{delivery['id']}", token=org.viewer)
            assert [a["status"] for a in detail.body["attempt_log"]] == [500, 500, 500, 500], detail
        failures_before = len(receiver.arrivals)

        switch.down = False
        started = await call(url, "POST", f"/webhooks/{webhook_id}/replay", token=org.admin,
                             json_body={"since": since.isoformat()})  # fmt: skip
        assert started.status == 200 and started.body["state"] == "running", started

        async def finished() -> dict[str, Any] | None:
            reply = await call(url, "GET", f"/replays/{started.body['id']}", token=org.viewer)
            return reply.body if reply.body["state"] != "running" else None

        result = await poll(finished, "the replay completed", timeout=60)
        successes = Counter(a.message_id for a in receiver.arrivals[failures_before:])
        duplicates = sum(n - 1 for n in successes.values())
        print(
            f"\nreplay figures: events {len(event_ids)}, considered {result['events_considered']}, deliveries "
            f"created {result['deliveries_created']}, delivered {result['delivered']}, failed {result['failed']}, "
            f"arrivals after the fix {sum(successes.values())}, duplicates at the receiver {duplicates}"
        )
        assert result["state"] == "completed"
        assert result["events_considered"] == 50 and result["deliveries_created"] == 50
        assert result["delivered"] == 50 and result["failed"] == 0 and result["in_progress"] == 0
        assert set(successes) == event_ids and duplicates == 0
    finally:
        await receiver.stop()


@pytest.mark.timeout(120)
async def test_replay_survives_a_sigkill_halfway(dsn: str, conn: asyncpg.Connection, daemon_factory: Any) -> None:
    """A replay of 3,000 events is walked in batches; the daemon is SIGKILLed after the first batches and before
    the walk ends; a new daemon resumes from the stored cursor and finishes: every event gets exactly one replay
    delivery, every one arrives, and nothing arrives twice beyond what was in flight at the kill."""
    receiver = Receiver()
    await receiver.start()
    try:
        org = await make_org(dsn, "crash")
        webhook_id, _ = await make_webhook(conn, receiver.url, organisation=org.id, events=["request.*"])
        since = (await conn.fetchval("SELECT now()")) - timedelta(seconds=1)
        # Routed to nobody at the time (the webhook is subscribed now): never delivered, so each is replayed.
        await conn.execute(
            "INSERT INTO events (organisation, type, payload, dispatched_at, delivery_count)"
            " SELECT $1, 'request.create', '{}', clock_timestamp(), 0 FROM generate_series(1, 3000)",
            org.id,
        )
        first = await start_daemon(daemon_factory, dsn)
        started = await call(first.api_address(), "POST", f"/webhooks/{webhook_id}/replay", token=org.admin,
                             json_body={"since": since.isoformat()})  # fmt: skip
        assert started.status == 200, started
        replay_id = started.body["id"]

        async def partly_walked() -> bool:
            row = await conn.fetchrow("SELECT deliveries_created, scanned_at FROM replay WHERE id = $1", replay_id)
            assert row["scanned_at"] is None, "the walk ended before the kill: make the replay longer"
            return bool(row["deliveries_created"] > 0)

        await poll(partly_walked, "the first batch", timeout=30, interval=0.01)
        first.kill()
        at_kill = await conn.fetchrow(
            "SELECT deliveries_created, (SELECT count(*) FROM delivery WHERE replay_id = $1 AND state = 'leased')"
            " AS leased FROM replay WHERE id = $1",
            replay_id,
        )

        second = await start_daemon(daemon_factory, dsn)
        await wait_db(conn, "SELECT state FROM replay WHERE id = $1", "completed", replay_id, timeout=90)
        result = (await call(second.api_address(), "GET", f"/replays/{replay_id}", token=org.viewer)).body
        rows = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT event_id) AS distinct_events FROM delivery WHERE replay_id = $1",
            replay_id,
        )
        arrivals = Counter(a.message_id for a in receiver.arrivals)
        duplicates = sum(n - 1 for n in arrivals.values())
        print(
            f"\nreplay across a SIGKILL: created before the kill {at_kill['deliveries_created']}, leased at the kill "
            f"{at_kill['leased']}, created {result['deliveries_created']}, delivered {result['delivered']}, "
            f"distinct arrivals {len(arrivals)}, duplicates at the receiver {duplicates}"
        )
        assert 0 < at_kill["deliveries_created"] < 3000
        assert rows["n"] == rows["distinct_events"] == 3000
        assert result["deliveries_created"] == 3000 and result["delivered"] == 3000
        assert len(arrivals) == 3000
        assert duplicates <= at_kill["leased"]
    finally:
        await receiver.stop()


@pytest.mark.timeout(60)
async def test_new_event_type_is_routed_by_another_process_at_once(
    dsn: str, conn: asyncpg.Connection, daemon_factory: Any, receiver: Receiver
) -> None:
    """A type posted to an API-only process is accepted at once by a producer's INSERT and routed and delivered by
    a worker-only process that was running before the type existed (no cache, no restart)."""
    org = await make_org(dsn, "types")
    await make_webhook(conn, receiver.url, organisation=org.id, events=["billing.*"])
    worker = await start_daemon(daemon_factory, dsn, api={"enabled": False})
    front = await start_daemon(daemon_factory, dsn, worker={"enabled": False})
    made = await call(front.api_address(), "POST", "/event_types", token=org.admin,
                      json_body={"name": "billing.invoice-paid"})  # fmt: skip
    assert made.status == 201, made
    event_id = await conn.fetchval(
        "INSERT INTO events (organisation, type, payload) VALUES ($1, 'billing.invoice-paid', '{}') RETURNING id",
        org.id,
    )
    await receiver.wait_for(lambda: str(event_id) in receiver.ids())
    assert worker.alive() and front.alive()
