"""States that tell the truth: an event routed to nobody reads as delivered (nothing left to do) in the ricloud
view; a failed webhook test is not a dead letter in `status` or /metrics; an unknown event type over the API is
a 422 naming `type` with what to do, never PostgreSQL's text; the ready line says what is in force."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import add_token, call
from tests.support.cli import run_cli
from tests.support.daemon import start_daemon
from tests.support.factories import make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import poll, wait_db

pytestmark = pytest.mark.db


async def test_an_event_routed_to_nobody_reads_as_done(conn: asyncpg.Connection, dsn: str, daemon_factory: Any) -> None:
    """No webhook subscribes: once routed, GET /events/{id} says delivered (every one of its zero deliveries
    is), with date_delivered the routing time, not pending forever."""
    await conn.execute("INSERT INTO organisation (id, name) VALUES ('acme', 'acme')")
    _, viewer = await add_token(conn, "acme", "viewer")
    daemon = await start_daemon(daemon_factory, dsn)
    event_id = await conn.fetchval(
        "INSERT INTO events (organisation, type, payload) VALUES ('acme', 'request.create', '{}') RETURNING id::text"
    )
    await wait_db(conn, "SELECT delivery_count FROM events WHERE id = $1::uuid", 0, event_id)
    reply = await call(daemon.api_address(), "GET", f"/events/{event_id}", token=viewer)
    assert reply.status == 200, reply
    assert reply.body["state"] == "delivered" and reply.body["retries"] == 0
    assert reply.body["date_delivered"] is not None


async def test_a_failed_test_is_not_a_dead_letter(
    conn: asyncpg.Connection, dsn: str, daemon_factory: Any, tmp_path: Any
) -> None:
    """A webhook whose test fails (its receiver answers 500): the test delivery is failed, yet `status` shows no
    failed delivery and /metrics no dead letter; the attempt is logged at warning, not error."""

    async def broken(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500)

    receiver = Receiver(broken)
    await receiver.start()
    try:
        webhook_id, _ = await make_webhook(conn, receiver.url, state="new")
        daemon = await start_daemon(daemon_factory, dsn)
        await conn.execute(
            "INSERT INTO events (organisation, type, payload, webhook_id, kind)"
            " VALUES ('acme', 'webhook.test', '{}', $1, 'test')",
            webhook_id,
        )
        await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'failed' AND kind = 'test'", 1)
    finally:
        await receiver.stop()
    code, out, err = await run_cli("status", config=daemon.config)
    assert code == 0, err
    failed_line = next(line for line in out.splitlines() if line.strip().startswith("failed"))
    assert failed_line.split() == ["failed", "0"], out
    # Its failed attempt lists the webhook among the failing ones (a test without a task changes no state).
    failing = out.split("failing webhooks:", 1)[1]
    assert f"  {webhook_id} (acme) new: 1 failures in the last hour" in failing, out

    async def scraped() -> Any:
        async with aiohttp.ClientSession() as session, session.get(f"{daemon.api_address()}/metrics") as reply:
            text = await reply.text()
        samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
        return samples if samples.get("dispatcher_database_up") == 1.0 else None

    samples = await poll(scraped, "metrics read from the database")
    assert samples["dispatcher_queue_dead_letter_deliveries"] == 0.0
    attempt = await daemon.wait_line("delivery.attempt")
    assert attempt["level"] == "warning" and attempt["kind"] == "test"


async def test_unknown_type_over_the_api_names_the_field_and_the_fix(
    conn: asyncpg.Connection, dsn: str, daemon_factory: Any
) -> None:
    """POST /events with a type outside the catalogue: 422, code event_type_unknown, field type, a message in
    plain words with where to add the type; no PostgreSQL text; the ready line says what is in force."""
    await conn.execute("INSERT INTO organisation (id, name) VALUES ('acme', 'acme')")
    _, producer = await add_token(conn, "acme", "producer")
    daemon = await start_daemon(daemon_factory, dsn)
    reply = await call(daemon.api_address(), "POST", "/events", token=producer, json_body={"type": "request.created"})
    assert reply.status == 422, reply
    error = reply.body["error"]
    assert (error["code"], error["field"]) == ("event_type_unknown", "type")
    assert "[events] types" in error["message"] and "/event_types" in error["message"]
    assert "violates" not in error["message"] and "DETAIL" not in error["message"]
    ready = await daemon.wait_line("dispatcher.ready")
    assert ready["allow_networks"] == ["127.0.0.0/8"] and ready["config"].endswith(".toml")
    assert ready["database"].startswith("postgresql://") and "admin_token" in ready
