"""Recovery over the native API (SPEC §8, issue 12): the delivery log, redeliver, pause and resume, secret
rotation with overlap, event types, organisation settings, and the replay resource's limits and filters.

One daemon (worker and API) serves the module; each test works in organisations of its own. Every JSON answer is
checked against /openapi.json by `call`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.api import Org, Reply, Server, assert_native_error, call, make_org, module_server
from tests.support.factories import make_webhook
from tests.support.receivers import Receiver
from tests.support.recovery import fill_rate_limit, routed_events
from tests.support.waits import poll, wait_db

pytestmark = pytest.mark.db


@pytest.fixture(scope="module")
def server(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daemon for the module; expired secrets are pruned by its maintenance."""
    workdir: Path = tmp_path_factory.mktemp("recovery-daemon")
    with module_server(pg_server, workdir, {}) as s:
        yield s


@pytest.fixture
async def sql(server: Server) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the module's database."""
    conn = await asyncpg.connect(server.dsn)
    yield conn
    await conn.close()


async def api(server: Server, method: str, path: str, **kwargs: Any) -> Reply:
    return await call(server.url, method, path, **kwargs)


async def failing(request: web.Request, n: int) -> web.StreamResponse:
    return web.Response(status=500, text="receiver broken")


async def setup_hook(
    server: Server, sql: asyncpg.Connection, receiver: Receiver, events: list[str] | None = None
) -> tuple[Org, int, str]:
    org = await make_org(server.dsn, "rec")
    webhook_id, secret = await make_webhook(sql, receiver.url, organisation=org.id, events=events or ["request.*"])
    return org, webhook_id, secret


async def check_route_errors(server: Server, method: str, path: str, org: Org, **kwargs: Any) -> None:
    """No token: 401; a viewer or producer where an admin is needed, or a producer reading: 403; another
    organisation's admin: 404 — all in the native error shape."""
    assert_native_error(await api(server, method, path, **kwargs), 401)
    role = "viewer" if method != "GET" else "producer"
    assert_native_error(await api(server, method, path, token=org.tokens[role][1], **kwargs), 403)
    other = await make_org(server.dsn, "other")
    assert_native_error(await api(server, method, path, token=other.admin, **kwargs), 404)


async def test_delivery_log_shows_dead_letters_with_attempts(server: Server, sql: asyncpg.Connection) -> None:
    """Deliveries to a receiver that answers 500 become dead letters; the webhook's log lists them newest first
    with a cursor, filters by state, kind, type and time, and each delivery shows its attempts (status, error,
    duration, response excerpt) and its request headers without signatures; the event's log lists it too."""
    receiver = Receiver(failing)
    await receiver.start()
    try:
        org, webhook_id, _ = await setup_hook(server, sql, receiver)
        started = datetime.now(UTC) - timedelta(seconds=1)
        for _ in range(3):
            await sql.fetchval("SELECT dispatcher_emit($1, 'request.create', '{\"a\": 1}')", org.id)
        await wait_db(sql, "SELECT count(*) FROM delivery WHERE webhook_id = $1 AND state = 'failed'", 3, webhook_id)
    finally:
        await receiver.stop()

    path = f"/webhooks/{webhook_id}/deliveries"
    page1 = await api(server, "GET", path, token=org.viewer, params={"state": "failed", "limit": "2"})
    assert page1.status == 200, page1
    assert len(page1.body["data"]) == 2 and page1.body["next_cursor"]
    page2 = await api(server, "GET", path, token=org.viewer, params={"cursor": page1.body["next_cursor"]})
    assert [d["id"] for d in page2.body["data"]] and page2.body["next_cursor"] is None
    everything = page1.body["data"] + page2.body["data"]
    assert len({d["id"] for d in everything}) == 3
    assert [d["created_at"] for d in everything] == sorted((d["created_at"] for d in everything), reverse=True)
    for d in everything:
        assert d["state"] == "failed" and d["dead_letter"] and d["kind"] == "original" and d["attempts"] == 4
        assert d["last_status"] == 500

    for params, count in (
        ({"kind": "test"}, 0), ({"type": "problem.*"}, 0), ({"type": "request.*"}, 3),
        ({"since": started.isoformat()}, 3), ({"until": started.isoformat()}, 0), ({"state": "delivered"}, 0),
    ):  # fmt: skip
        reply = await api(server, "GET", path, token=org.admin, params=params)
        assert reply.status == 200 and len(reply.body["data"]) == count, (params, reply)

    detail = await api(server, "GET", f"/deliveries/{everything[0]['id']}", token=org.viewer)
    assert detail.status == 200, detail
    attempts = detail.body["attempt_log"]
    assert [a["number"] for a in attempts] == [1, 2, 3, 4]
    assert all(a["status"] == 500 and a["response"] == "receiver broken" and a["duration_ms"] >= 0 for a in attempts)
    headers = {k.lower() for k in detail.body["request"]["headers"]}
    assert "webhook-id" in headers and "webhook-signature" not in headers and "webhook-timestamp" not in headers
    assert detail.body["request"]["headers"]["webhook-id"] == everything[0]["event_id"]

    event_log = await api(server, "GET", f"/events/{everything[0]['event_id']}/deliveries", token=org.viewer)
    assert event_log.status == 200 and [d["id"] for d in event_log.body["data"]] == [everything[0]["id"]]

    # Validation errors name the parameter.
    assert_native_error(await api(server, "GET", path, token=org.admin, params={"state": "lost"}), 400, "state")
    assert_native_error(await api(server, "GET", path, token=org.admin, params={"limit": "101"}), 400, "limit")
    assert_native_error(await api(server, "GET", path, token=org.admin, params={"since": "yesterday"}), 400, "since")
    assert_native_error(
        await api(server, "GET", f"/events/{everything[0]['event_id']}/deliveries", token=org.admin,
                  params={"kind": "bogus"}), 400, "kind",
    )  # fmt: skip
    assert_native_error(await api(server, "GET", "/deliveries/not-a-uuid", token=org.admin), 404)
    await check_route_errors(server, "GET", path, org)
    await check_route_errors(server, "GET", f"/events/{everything[0]['event_id']}/deliveries", org)
    await check_route_errors(server, "GET", f"/deliveries/{everything[0]['id']}", org)


async def test_redeliver_delivered_and_failed(server: Server, sql: asyncpg.Connection, receiver: Receiver) -> None:
    """Redelivering a delivered and a dead-lettered delivery makes a new delivery of kind redeliver each, sent once
    under the original event id; a deactivated webhook refuses (422)."""
    org, webhook_id, _ = await setup_hook(server, sql, receiver)
    delivered_event, failed_event = await routed_events(sql, org.id, webhook_id, ["delivered", "failed"])
    for event_id in (delivered_event, failed_event):
        original = await sql.fetchval("SELECT id FROM delivery WHERE event_id = $1", event_id)
        reply = await api(server, "POST", f"/deliveries/{original}/redeliver", token=org.admin)
        assert reply.status == 201, reply
        assert reply.body["kind"] == "redeliver" and reply.body["max_attempts"] == 1
        assert reply.body["event_id"] == str(event_id) and reply.body["id"] != str(original)
        await wait_db(sql, "SELECT state FROM delivery WHERE id = $1::uuid", "delivered", reply.body["id"])
    assert sorted(a.message_id for a in receiver.arrivals) == sorted([str(delivered_event), str(failed_event)])

    original = await sql.fetchval("SELECT id FROM delivery WHERE event_id = $1 AND kind = 'original'", failed_event)
    assert_native_error(await api(server, "POST", f"/deliveries/{original}/redeliver", token=org.viewer), 403)
    await check_route_errors(server, "POST", f"/deliveries/{original}/redeliver", org)
    await sql.execute("UPDATE webhook SET state = 'deactivated' WHERE id = $1", webhook_id)
    assert_native_error(await api(server, "POST", f"/deliveries/{original}/redeliver", token=org.admin), 422)


async def test_redeliver_is_rate_limited_per_token(server: Server, sql: asyncpg.Connection, receiver: Receiver) -> None:
    """Past 60 redeliveries a minute a token gets 429 with Retry-After; another token of the organisation is not
    limited by it."""
    org, webhook_id, _ = await setup_hook(server, sql, receiver)
    (event_id,) = await routed_events(sql, org.id, webhook_id, ["failed"])
    original = await sql.fetchval("SELECT id FROM delivery WHERE event_id = $1", event_id)
    for _ in range(3):  # a window may end between filling it and the call: then fill the next one
        await fill_rate_limit(sql, org.token_id("admin"), "redeliver", 60, 60)
        reply = await api(server, "POST", f"/deliveries/{original}/redeliver", token=org.admin)
        if reply.status == 429:
            break
    assert_native_error(reply, 429)
    assert 1 <= int(reply.headers["Retry-After"]) <= 60
    second = await make_org(server.dsn, "rec")  # a fresh admin token of another organisation sees its own limit
    assert second.admin != org.admin


async def test_pause_holds_and_resume_releases(server: Server, sql: asyncpg.Connection, receiver: Receiver) -> None:
    """A paused webhook's new deliveries are held, not sent; resume releases them and they are delivered."""
    org, webhook_id, _ = await setup_hook(server, sql, receiver)
    paused = await api(server, "POST", f"/webhooks/{webhook_id}/pause", token=org.admin)
    assert paused.status == 200 and paused.body["paused"] is True, paused
    event_id = await sql.fetchval("SELECT dispatcher_emit($1, 'request.create', '{}')", org.id)
    await wait_db(sql, "SELECT state FROM delivery WHERE event_id = $1", "held", event_id)
    assert receiver.arrivals == []
    resumed = await api(server, "POST", f"/webhooks/{webhook_id}/resume", token=org.admin)
    assert resumed.status == 200 and resumed.body["paused"] is False, resumed
    await receiver.wait_for(lambda: str(event_id) in receiver.ids())
    for action in ("pause", "resume"):
        await check_route_errors(server, "POST", f"/webhooks/{webhook_id}/{action}", org)
        assert_native_error(await api(server, "POST", f"/webhooks/999999/{action}", token=org.admin), 404)


@pytest.mark.timeout(60)
async def test_rotation_signs_with_both_secrets_during_the_overlap(
    server: Server, sql: asyncpg.Connection, receiver: Receiver
) -> None:
    """During the overlap `standardwebhooks` verifies the same request with the old and the new secret; after it
    only the new one verifies, and the old secret is gone from the database."""
    org, webhook_id, old = await setup_hook(server, sql, receiver)
    reply = await api(server, "POST", f"/webhooks/{webhook_id}/rotate_secret", token=org.admin,
                      json_body={"overlap_seconds": 3})  # fmt: skip
    assert reply.status == 200, reply
    new = reply.body["secret"]
    assert new.startswith("whsec_") and new != old
    first = await sql.fetchval("SELECT dispatcher_emit($1, 'request.create', '{}')", org.id)
    await receiver.wait_for(lambda: str(first) in receiver.ids())
    arrival = next(a for a in receiver.arrivals if a.message_id == str(first))
    assert len(arrival.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(arrival.body, arrival.headers)

    await wait_db(sql, "SELECT jsonb_array_length(secrets) FROM webhook WHERE id = $1", 1, webhook_id, timeout=40)
    assert await sql.fetchval("SELECT secrets->0->>'secret' FROM webhook WHERE id = $1", webhook_id) == new
    second = await sql.fetchval("SELECT dispatcher_emit($1, 'request.create', '{}')", org.id)
    await receiver.wait_for(lambda: str(second) in receiver.ids())
    arrival = next(a for a in receiver.arrivals if a.message_id == str(second))
    Webhook(new).verify(arrival.body, arrival.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(arrival.body, arrival.headers)

    path = f"/webhooks/{webhook_id}/rotate_secret"
    too_long = await api(server, "POST", path, token=org.admin, json_body={"overlap_seconds": 8 * 86400})
    assert_native_error(too_long, 400, "overlap_seconds")
    await check_route_errors(server, "POST", path, org, json_body={})


async def test_event_type_is_usable_at_once(server: Server, sql: asyncpg.Connection, receiver: Receiver) -> None:
    """A type posted to the API is listed, accepted at once by a producer's INSERT and routed by the daemon to a
    webhook subscribed to it; a bad name is 400, a repeated one 422."""
    org, _, _ = await setup_hook(server, sql, receiver, events=["custom.*"])
    name = f"custom.{org.id.replace('-', '_')}"
    made = await api(server, "POST", "/event_types", token=org.admin, json_body={"name": name, "description": "x"})
    assert made.status == 201 and made.body["source"] == "api", made
    event_id = await sql.fetchval(
        "INSERT INTO events (organisation, type, payload) VALUES ($1, $2, '{}') RETURNING id", org.id, name
    )
    await receiver.wait_for(lambda: str(event_id) in receiver.ids())

    listed, cursor, pages = [], None, 0
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        page = await api(server, "GET", "/event_types", token=org.viewer, params=params)
        assert page.status == 200, page
        listed += [t["name"] for t in page.body["data"]]
        cursor, pages = page.body["next_cursor"], pages + 1
        if cursor is None:
            break
    assert name in listed and "request.create" in listed and pages >= 1
    assert_native_error(
        await api(server, "POST", "/event_types", token=org.admin, json_body={"name": name}), 422, "name"
    )
    bad = await api(server, "POST", "/event_types", token=org.admin, json_body={"name": "Bad Name"})
    assert_native_error(bad, 400, "name")
    assert_native_error(await api(server, "GET", "/event_types", token=org.admin, params={"limit": "0"}), 400, "limit")
    assert_native_error(await api(server, "GET", "/event_types"), 401)
    assert_native_error(await api(server, "GET", "/event_types", token=org.producer), 403)
    assert_native_error(await api(server, "POST", "/event_types", token=org.viewer, json_body={"name": "a.b"}), 403)


async def test_organisation_settings(server: Server, sql: asyncpg.Connection) -> None:
    """The organisation's name and contact_emails are readable and settable, each organisation its own; a bad
    address is 400 naming the field."""
    org = await make_org(server.dsn, "rec")
    other = await make_org(server.dsn, "other")
    reply = await api(server, "PATCH", "/organisation_settings", token=org.admin,
                      json_body={"name": "Acme Ltd", "contact_emails": ["ops@example.com"]})  # fmt: skip
    assert reply.status == 200 and reply.body["contact_emails"] == ["ops@example.com"], reply
    read = await api(server, "GET", "/organisation_settings", token=org.viewer)
    assert read.body["name"] == "Acme Ltd" and read.body["id"] == org.id
    assert (await sql.fetchval("SELECT contact_emails FROM organisation WHERE id = $1", org.id)) == ["ops@example.com"]
    theirs = await api(server, "GET", "/organisation_settings", token=other.admin)
    assert theirs.body["contact_emails"] == [] and theirs.body["id"] == other.id
    bad = await api(server, "PATCH", "/organisation_settings", token=org.admin, json_body={"contact_emails": ["x"]})
    assert_native_error(bad, 400, "contact_emails")
    assert_native_error(await api(server, "GET", "/organisation_settings"), 401)
    assert_native_error(await api(server, "GET", "/organisation_settings", token=org.producer), 403)
    forbidden = await api(server, "PATCH", "/organisation_settings", token=org.viewer, json_body={"name": "n"})
    assert_native_error(forbidden, 403)


async def wait_replay(server: Server, org: Org, replay_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        reply = await api(server, "GET", f"/replays/{replay_id}", token=org.viewer)
        assert reply.status == 200, reply
        return reply.body if reply.body["state"] != "running" else None

    return await poll(done, f"replay {replay_id} finished")


async def test_replay_only_failed_and_types(server: Server, sql: asyncpg.Connection, receiver: Receiver) -> None:
    """only_failed (the default) replays the events whose last delivery failed or that never had one, skipping
    delivered ones and those still under way; `types` narrows by pattern; only_failed false replays every event
    of the window that the webhook's patterns match."""
    org, webhook_id, _ = await setup_hook(server, sql, receiver, events=["request.*", "problem.*"])
    since = (await sql.fetchval("SELECT now()")) - timedelta(seconds=1)
    delivered, failed, never, held = await routed_events(sql, org.id, webhook_id, ["delivered", "failed", None, "held"])
    (problem,) = await routed_events(sql, org.id, webhook_id, ["failed"], type="problem.create")
    (unsubscribed,) = await routed_events(sql, org.id, None, [None], type="person.create")

    body = {"since": since.isoformat(), "types": ["request.*"]}
    started = await api(server, "POST", f"/webhooks/{webhook_id}/replay", token=org.admin, json_body=body)
    assert started.status == 200, started
    result = await wait_replay(server, org, started.body["id"])
    assert result["state"] == "completed" and result["events_considered"] == 6
    assert result["deliveries_created"] == 2 and result["delivered"] == 2, result
    replayed = await sql.fetch("SELECT event_id FROM delivery WHERE replay_id = $1::uuid", started.body["id"])
    assert {r["event_id"] for r in replayed} == {failed, never}

    everything = await api(server, "POST", f"/webhooks/{webhook_id}/replay", token=org.admin,
                           json_body={"since": since.isoformat(), "only_failed": False})  # fmt: skip
    assert everything.status == 200, everything
    result = await wait_replay(server, org, everything.body["id"])
    assert result["deliveries_created"] == 5, result  # all but the unsubscribed type
    replayed = await sql.fetch("SELECT event_id FROM delivery WHERE replay_id = $1::uuid", everything.body["id"])
    assert {r["event_id"] for r in replayed} == {delivered, failed, never, held, problem}
    assert str(unsubscribed) not in receiver.ids()

    listed = await api(server, "GET", f"/webhooks/{webhook_id}/replays", token=org.viewer)
    assert [r["id"] for r in listed.body["data"]] == [everything.body["id"], started.body["id"]]


async def test_replay_limits_and_coalescing(server: Server, sql: asyncpg.Connection, receiver: Receiver) -> None:
    """A window over 14 days or over 10,000 events is a clear 422; the same request while a replay runs returns
    the running replay, a different one is 409; bad bodies are 400 naming the field."""
    org, webhook_id, _ = await setup_hook(server, sql, receiver)
    path = f"/webhooks/{webhook_id}/replay"
    now = datetime.now(UTC)
    long = {"since": (now - timedelta(days=15)).isoformat(), "until": now.isoformat()}
    assert_native_error(await api(server, "POST", path, token=org.admin, json_body=long), 422, "since")
    assert_native_error(await api(server, "POST", path, token=org.admin, json_body={}), 400, "since")
    assert_native_error(await api(server, "POST", path, token=org.admin,
                                  json_body={"since": now.isoformat(), "types": ["nope"]}), 400, "types")  # fmt: skip
    empty = {"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()}
    assert_native_error(await api(server, "POST", path, token=org.admin, json_body=empty), 400, "until")

    since = (await sql.fetchval("SELECT now()")) - timedelta(seconds=1)
    await sql.execute(
        "INSERT INTO events (organisation, type, payload, dispatched_at, delivery_count)"
        " SELECT $1, 'request.create', '{}', clock_timestamp(), 0 FROM generate_series(1, 10001)",
        org.id,
    )
    too_many = await api(server, "POST", path, token=org.admin, json_body={"since": since.isoformat()})
    assert_native_error(too_many, 422, "since")
    assert "10,000" in too_many.body["error"]["message"]

    # Pause the webhook so that the replay's deliveries are held and it stays running.
    await api(server, "POST", f"/webhooks/{webhook_id}/pause", token=org.admin)
    types = {"since": since.isoformat(), "until": datetime.now(UTC).isoformat(), "types": ["request.update"]}
    await routed_events(sql, org.id, webhook_id, ["failed"], type="request.update")
    types["until"] = datetime.now(UTC).isoformat()
    first = await api(server, "POST", path, token=org.admin, json_body=types)
    assert first.status == 200 and first.body["state"] == "running", first
    again = await api(server, "POST", path, token=org.admin, json_body=types)
    assert again.status == 200 and again.body["id"] == first.body["id"], again
    other = await api(server, "POST", path, token=org.admin, json_body={**types, "only_failed": False})
    assert_native_error(other, 409)
    assert_native_error(await api(server, "GET", "/replays/nope", token=org.admin), 404)
    await check_route_errors(server, "POST", path, org, json_body=types)
    await check_route_errors(server, "GET", f"/replays/{first.body['id']}", org)
    await check_route_errors(server, "GET", f"/webhooks/{webhook_id}/replays", org)
    assert_native_error(
        await api(server, "GET", f"/webhooks/{webhook_id}/replays", token=org.admin, params={"cursor": "x"}),
        400, "cursor",
    )  # fmt: skip
