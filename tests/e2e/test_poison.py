"""Poison rows: an event or a webhook whose request cannot be built or signed costs that delivery a failed attempt
(class `request_build`, retried and dead-lettered by the usual rules), never the deliverer stage. The daemon
stays up and every ordinary event around the poison arrives (counted at the receiver and in the database)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.support.daemon import start_daemon
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = pytest.mark.db

# More digits than Python's int() takes from a string (4,300): the 4me envelope turns integer object ids into
# JSON integers, so this one cannot be encoded for a 4me webhook. Migration 006 bounds object_id to 255
# characters for new rows; rows stored before it can still hold one.
HUGE_OBJECT_ID = "9" * 5000


async def attempts_of(conn: asyncpg.Connection, delivery_state: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT a.error_class, a.error FROM attempt a JOIN delivery d ON d.id = a.delivery_id WHERE d.state = $1",
        delivery_state,
    )


@pytest.mark.timeout(40)
async def test_an_event_its_format_cannot_encode_fails_alone(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any
) -> None:
    """A 5,000-digit object_id routed to a 4me webhook: that delivery fails each attempt (request_build) and ends a
    dead letter; 20 ordinary events before and after it arrive; the daemon never stops."""
    await make_webhook(conn, receiver.url + "/hook", events=["request.*"], format="4me")
    daemon = await start_daemon(daemon_factory, dsn)
    await emit_many(conn, 10)
    async with conn.transaction():  # a row stored before migration 006, as an upgraded database may hold
        await conn.execute("ALTER TABLE events DISABLE TRIGGER events_check")
        await conn.execute(
            "INSERT INTO events (organisation, type, object_id, payload) VALUES ('acme', 'request.update', $1, '{}')",
            HUGE_OBJECT_ID,
        )
        await conn.execute("ALTER TABLE events ENABLE TRIGGER events_check")
    await emit_many(conn, 10)

    await receiver.wait_count(20)
    await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'failed'", 1)
    failed = await attempts_of(conn, "failed")
    assert len(failed) == 4  # the first attempt and the 3 retries of the test schedule
    assert {row["error_class"] for row in failed} == {"request_build"}
    assert "the request could not be built: ValueError" in failed[0]["error"]
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'delivered'") == 20
    assert len(receiver.arrivals) == 20 and len({a.message_id for a in receiver.arrivals}) == 20
    assert daemon.alive()
    assert daemon.find("dispatcher.stage_died") is None and daemon.find("dispatcher.stage_restarting") is None


@pytest.mark.timeout(40)
async def test_a_webhook_whose_secret_cannot_sign_fails_alone(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any
) -> None:
    """A webhook whose stored secret is not a string (written by hand in SQL): its deliveries fail with
    request_build and become dead letters; another webhook of the same organisation receives all its events."""
    broken, _ = await make_webhook(conn, receiver.url + "/broken", events=["request.create"])
    await make_webhook(conn, receiver.url + "/fine", events=["request.create"])
    await conn.execute("""UPDATE webhook SET secrets = '[{"secret": 5, "expires_at": null}]' WHERE id = $1""", broken)
    daemon = await start_daemon(daemon_factory, dsn)
    await emit_many(conn, 5)

    await receiver.wait_count(5)
    await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'failed'", 5)
    assert {a.path for a in receiver.arrivals} == {"/hook/fine"}
    failed = await attempts_of(conn, "failed")
    assert len(failed) == 20 and {row["error_class"] for row in failed} == {"request_build"}
    last_error = await conn.fetchval("SELECT last_error FROM webhook WHERE id = $1", broken)
    assert last_error.startswith("the request could not be built")
    assert daemon.alive() and daemon.find("dispatcher.stage_died") is None
