"""End to end: the daemon as a subprocess, events inserted into PostgreSQL, real receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.support.daemon import start_daemon
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import caught_up, wait_db

pytestmark = pytest.mark.db


async def delivery_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM delivery ORDER BY created_at")


async def test_inserted_event_arrives_signed(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """An INSERT into events reaches the receiver as the standard envelope, and the signature verifies with
    the standardwebhooks library; the webhook-id is the event id; the delivery ends delivered with one attempt."""
    _, secret = await make_webhook(conn, receiver.url, events=["request.create"])
    await start_daemon(daemon_factory, dsn)
    event_id = await conn.fetchval(
        "INSERT INTO events (organisation, type, object_id, payload, actor) VALUES"
        " ('acme', 'request.create', '12345', '{\"subject\": \"Printer on fire\"}', '{\"id\": 591, \"name\": \"Ann\"}')"
        " RETURNING id"
    )
    await receiver.wait_count(1)
    arrival = receiver.arrivals[0]
    Webhook(secret).verify(arrival.body, arrival.headers)
    assert arrival.message_id == str(event_id)
    assert arrival.headers["Content-Type"] == "application/json"
    assert arrival.headers["User-Agent"].startswith("dispatcher/")
    body = arrival.json
    assert body["id"] == str(event_id)
    assert body["type"] == "request.create"
    assert body["organisation"] == "acme"
    assert body["object_id"] == "12345"
    assert body["actor"] == {"id": 591, "name": "Ann"}
    assert body["data"] == {"subject": "Printer on fire"}
    assert body["timestamp"].endswith("Z")
    await wait_db(conn, "SELECT state FROM delivery", "delivered")
    assert await conn.fetchval("SELECT count(*) FROM attempt WHERE status = 200") == 1


async def test_500_then_200_is_retried(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """A 500 is retried on the (short, test) schedule; the second attempt's 200 delivers it; the body is
    byte-identical on both attempts and each attempt is a row."""

    async def flaky(request: web.Request, n: int) -> web.Response:
        return web.Response(status=500 if n == 0 else 200)

    receiver.behaviour = flaky
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.*"])
    daemon = await start_daemon(daemon_factory, dsn)
    await emit_many(conn, 1)
    await receiver.wait_count(2)
    assert receiver.arrivals[0].body == receiver.arrivals[1].body
    assert receiver.arrivals[0].message_id == receiver.arrivals[1].message_id
    await wait_db(conn, "SELECT state FROM delivery", "delivered")
    statuses = [r["status"] for r in await conn.fetch("SELECT status FROM attempt ORDER BY number")]
    assert statuses == [500, 200]

    # Exactly one log line per attempt, with the keys operators search by.
    lines = [line for line in daemon.lines() if line["event"] == "delivery.attempt"]
    assert [line["status"] for line in lines] == [500, 200]
    delivery = await conn.fetchrow("SELECT id, event_id FROM delivery")
    for number, line in enumerate(lines, start=1):
        assert line["event_id"] == str(delivery["event_id"])
        assert line["delivery_id"] == str(delivery["id"])
        assert line["webhook_id"] == webhook_id
        assert line["organisation"] == "acme"
        assert line["attempt"] == number
        assert isinstance(line["duration_ms"], int)
        assert line["timestamp"].endswith("Z")
    # A failed attempt is a warning, a success info (a dead letter would be an error).
    assert [line["level"] for line in lines] == ["warning", "info"]
    assert lines[0]["error"] == "500 Internal Server Error" and lines[0]["next_attempt_at"].endswith("Z")
    assert lines[1]["error"] is None and lines[1]["next_attempt_at"] is None


async def test_410_fails_the_delivery_and_invalidates_the_webhook(conn, dsn, receiver, marker, daemon_factory) -> None:
    """A 410 fails the delivery without retrying and turns the webhook invalid with last_error at once."""
    receiver.behaviour = lambda request, n: _respond(410)
    await make_webhook(conn, receiver.url, events=["*"])
    await start_daemon(daemon_factory, dsn)
    await emit_many(conn, 1)
    await wait_db(conn, "SELECT state FROM delivery", "failed")
    row = await conn.fetchrow("SELECT state, last_error FROM webhook")
    assert row["state"] == "invalid"
    assert row["last_error"] == "410 Gone"
    # A retry would be due 200 ms after the attempt: once that time has passed by the server's clock, a marker
    # event handled after it shows that the daemon has claimed whatever was due by then.
    await wait_db(conn, "SELECT now() > max(finished_at) + interval '200 ms' FROM attempt", True)
    await caught_up(conn, marker)
    assert len(receiver.arrivals) == 1


async def _respond(status: int, **headers: str) -> web.Response:
    return web.Response(status=status, headers=headers)


async def test_hanging_receiver_hits_the_timeout(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """A receiver that never answers is cut off at [delivery] timeout; the attempt records a timeout and the
    retry waits at least 60 s (timeouts back off harder than the schedule)."""

    async def hang(request: web.Request, n: int) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    receiver.behaviour = hang
    await make_webhook(conn, receiver.url, events=["*"])
    await start_daemon(daemon_factory, dsn, delivery={"timeout": "1s"})
    await emit_many(conn, 1)
    await wait_db(conn, "SELECT count(*) FROM attempt", 1, timeout=30)
    attempt = await conn.fetchrow("SELECT * FROM attempt")
    assert attempt["error_class"] == "timeout"
    assert attempt["status"] is None
    assert 900 <= attempt["duration_ms"] < 5000
    delivery = await conn.fetchrow("SELECT state, next_attempt_at - now() AS wait FROM delivery")
    assert delivery["state"] == "pending"
    assert delivery["wait"].total_seconds() > 50


async def test_retry_after_is_honoured(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """A 503 with Retry-After: 2 delays the next attempt to 2 s (clamped to at most twice the 1 s slot),
    where the schedule alone would retry after 1 s."""

    async def busy(request: web.Request, n: int) -> web.Response:
        return await _respond(503, **{"Retry-After": "2"}) if n == 0 else await _respond(200)

    receiver.behaviour = busy
    await make_webhook(conn, receiver.url, events=["*"])
    await start_daemon(daemon_factory, dsn, retry={"schedule": ["1s", "1s"]})
    await emit_many(conn, 1)
    await receiver.wait_count(2)
    gap = receiver.arrivals[1].at - receiver.arrivals[0].at
    assert gap >= 1.9, f"retried after {gap:.2f} s, Retry-After said 2 s"


async def test_three_routing_rules(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """Pattern subscriptions, the webhook bound to the event's key, and the organisation default each
    deliver; a webhook reached by several rules gets the event once."""
    by_pattern, _ = await make_webhook(conn, receiver.url + "/pattern", events=["problem.update"])
    bound, _ = await make_webhook(conn, receiver.url + "/bound")
    default, _ = await make_webhook(conn, receiver.url + "/default", events=["problem.*"])
    await conn.execute("UPDATE organisation SET default_webhook_id = $1", default)
    key_id = await conn.fetchval(
        "INSERT INTO token (organisation, role, digest, webhook_id) VALUES ('acme', 'producer', '\\x01', $1)"
        " RETURNING id",
        bound,
    )
    await start_daemon(daemon_factory, dsn)
    keyed = await conn.fetchval("SELECT dispatcher_emit('acme', 'problem.update', '{}', key_id => $1)", key_id)
    unkeyed = await conn.fetchval("SELECT dispatcher_emit('acme', 'problem.update', '{}')")
    await receiver.wait_count(5)
    # Nothing more can be sent once both events are routed and every delivery made for them is delivered.
    await wait_db(conn, "SELECT count(*) FROM events WHERE dispatched_at IS NULL", 0)
    await wait_db(conn, "SELECT count(*) FROM delivery WHERE state <> 'delivered'", 0)
    got = sorted((a.path, a.message_id) for a in receiver.arrivals)
    assert got == sorted(
        [
            ("/hook/pattern", str(keyed)),
            ("/hook/bound", str(keyed)),
            ("/hook/default", str(keyed)),
            ("/hook/pattern", str(unkeyed)),
            ("/hook/default", str(unkeyed)),
        ]
    )
    assert by_pattern != bound


async def test_event_routed_to_nobody_is_marked_dispatched(conn, dsn, receiver, daemon_factory) -> None:
    """An event no webhook wants is marked dispatched with zero deliveries and nothing is sent."""
    await make_webhook(conn, receiver.url, events=["request.create"])
    await start_daemon(daemon_factory, dsn)
    lonely = await conn.fetchval("SELECT dispatcher_emit('acme', 'time_entry.delete', '{}')")
    await wait_db(conn, f"SELECT delivery_count FROM events WHERE id = '{lonely}' AND dispatched_at IS NOT NULL", 0)
    assert await conn.fetchval("SELECT count(*) FROM delivery") == 0
    assert receiver.arrivals == []


async def test_with_notify_off_events_arrive_by_polling(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """With the doorbell off (no NOTIFY at all) the poll fallback still delivers every event."""
    await make_webhook(conn, receiver.url, events=["*"])
    await start_daemon(daemon_factory, dsn, events={"notify": False}, worker={"poll_interval": "300ms"})
    assert await conn.fetchval("SELECT notify FROM dispatcher_settings") is False
    await emit_many(conn, 20)
    await receiver.wait_count(20, timeout=30)
    assert len(receiver.ids()) == 20


async def test_ricloud_and_4me_formats(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """ricloud webhooks get the event resource at <url>/<event id> with a Ricloud-Signature that ricloud-py
    3.2.0 verifies; 4me webhooks get 4me's envelope with an integer object_id and X-4me-Delivery."""
    from ricloud.signing import Signature

    _, ricloud_secret = await make_webhook(
        conn, receiver.url + "/ricloud/", events=["poll.completed"], format="ricloud"
    )
    fourme_id, _ = await make_webhook(
        conn, receiver.url + "/4me", events=["poll.completed"], format="4me", name="Poll done"
    )
    await start_daemon(daemon_factory, dsn)
    event_id = await conn.fetchval(
        "SELECT dispatcher_emit('acme', 'poll.completed', '{\"poll\": 7}', object_id => '42',"
        ' actor => \'{"id": 591, "name": "Ann"}\')'
    )
    await receiver.wait_count(2)
    by_path = {a.path: a for a in receiver.arrivals}
    ricloud = by_path[f"/hook/ricloud/{event_id}"]
    assert ricloud.json == {
        **ricloud.json,
        "id": str(event_id),
        "resource": "event",
        "type": "poll",
        "action": "completed",
        "data": {"poll": 7},
    }
    signature = Signature.from_header(ricloud.headers["Ricloud-Signature"])
    signature.verify(ricloud.body.decode(), ricloud_secret)  # raises InvalidSignature on a mismatch
    fourme = by_path["/hook/4me"]
    assert fourme.json == {
        "webhook_id": fourme_id,
        "account_id": "acme",
        "name": "Poll done",
        "event": "poll.completed",
        "object_id": 42,
        "person_id": 591,
        "person_name": "Ann",
        "payload": {"poll": 7},
    }
    delivery_id = await conn.fetchval("SELECT id FROM delivery WHERE webhook_id = $1", fourme_id)
    assert fourme.headers["X-4me-Delivery"] == str(delivery_id)


async def test_blocked_address_is_refused_by_default(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """Without allow_networks, a delivery to 127.0.0.1 is refused by the SSRF guard and never reaches the
    receiver; the attempt says why."""
    await make_webhook(conn, receiver.url, events=["*"])
    await start_daemon(daemon_factory, dsn, delivery={"allow_networks": []})
    await emit_many(conn, 1)
    await wait_db(conn, "SELECT count(*) FROM attempt", 1)
    attempt = await conn.fetchrow("SELECT error_class, error FROM attempt")
    assert attempt["error_class"] == "blocked"
    assert "loopback" in attempt["error"]
    assert receiver.arrivals == []


async def test_a_binary_error_body_is_stored_and_retried(conn, dsn, receiver: Receiver, daemon_factory) -> None:
    """A receiver answering 500 with NUL bytes in its body neither stops the daemon nor loses the result: the
    excerpt is stored without the NUL and the delivery is retried and delivered."""

    async def binary(request: web.Request, n: int) -> web.Response:
        return web.Response(status=500, body=b"\x00\x01oops\x00") if n == 0 else web.Response(status=200)

    receiver.behaviour = binary
    await make_webhook(conn, receiver.url, events=["*"])
    daemon = await start_daemon(daemon_factory, dsn)
    await emit_many(conn, 1)
    await wait_db(conn, "SELECT state FROM delivery", "delivered")
    first = await conn.fetchval("SELECT response FROM attempt WHERE number = 1")
    assert "oops" in first and "\x00" not in first
    assert daemon.process is not None and daemon.process.poll() is None
