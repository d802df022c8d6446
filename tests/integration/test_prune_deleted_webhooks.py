"""Retention prunes deleted webhooks: once deleted longer ago than both retentions, a webhook goes with every row
that still refers to it (deliveries and their attempts, replays, tasks, mails, its mail throttle); events targeted
at it stay, without the target. A webhook with a delivery still under way, or deleted more lately, stays."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from dispatcher.config import load_config
from dispatcher.db import Database
from dispatcher.maintenance import Maintenance
from tests.support.daemon import write_config
from tests.support.factories import make_webhook

pytestmark = pytest.mark.db

# Rows of each table that refer to a webhook, and their foreign key column.
REFERRING = {"delivery": "webhook_id", "replay": "webhook_id", "task": "webhook_id", "mail_outbox": "webhook_id",
             "mail_throttle": "webhook_id", "events": "webhook_id"}  # fmt: skip


async def referring(conn: asyncpg.Connection, webhook_id: int) -> dict[str, int]:
    """How many rows of each table refer to the webhook."""
    return {
        table: await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", webhook_id)
        for table, column in REFERRING.items()
    }


async def with_references(conn: asyncpg.Connection, webhook_id: int, *, delivery_state: str = "delivered") -> None:
    """A targeted test event with its delivery (finished now, so that delivery retention has not taken it) and an
    attempt, its task, a replay, a queued mail and the mail throttle of the webhook."""
    event_id = await conn.fetchval(
        "INSERT INTO events (organisation, type, kind, webhook_id, dispatched_at, delivery_count)"
        " VALUES ('acme', 'webhook.test', 'test', $1, now(), 1) RETURNING id",
        webhook_id,
    )
    delivery_id = await conn.fetchval(
        "INSERT INTO delivery (event_id, webhook_id, kind, state, max_attempts, attempts, finished_at)"
        " VALUES ($1, $2, 'test', $3, 1, 1, CASE WHEN $3 = 'delivered' THEN now() END) RETURNING id",
        event_id,
        webhook_id,
        delivery_state,
    )
    await conn.execute(
        "INSERT INTO attempt (delivery_id, number, started_at, finished_at, status, duration_ms)"
        " VALUES ($1, 1, now(), now(), 200, 3)",
        delivery_id,
    )
    await conn.execute(
        "INSERT INTO task (organisation, type, webhook_id, event_id, state, completed_at)"
        " VALUES ('acme', 'webhook.test', $1, $2, 'succeeded', now())",
        webhook_id,
        event_id,
    )
    await conn.execute(
        "INSERT INTO replay (organisation, webhook_id, since, until, max_events, state)"
        " VALUES ('acme', $1, now() - interval '1 day', now(), 10, 'completed')",
        webhook_id,
    )
    await conn.execute(
        "INSERT INTO mail_outbox (organisation, webhook_id, reason, recipients, subject, body)"
        " VALUES ('acme', $1, 'invalid', '{ops@example.com}', 's', 'b')",
        webhook_id,
    )
    await conn.execute("INSERT INTO mail_throttle (webhook_id, failing_mail_at) VALUES ($1, now())", webhook_id)


async def test_deleted_webhooks_past_retention_are_pruned_with_what_refers_to_them(
    conn: asyncpg.Connection, db: Database, dsn: str, tmp_path: Path
) -> None:
    """With delivered = 1 h and failed = 2 h: a webhook deleted 3 h ago goes with its delivery, attempt, task,
    replay, mail and throttle, and an event targeted at it (also delivered to a live webhook) stays, untargeted,
    with the live webhook's delivery; one deleted 3 h ago with a pending delivery, one deleted 90 minutes ago
    (past delivered, not failed) and a live one stay with everything of theirs."""
    gone, _ = await make_webhook(conn, "http://127.0.0.1:9/gone")
    busy, _ = await make_webhook(conn, "http://127.0.0.1:9/busy")
    recent, _ = await make_webhook(conn, "http://127.0.0.1:9/recent")
    live, _ = await make_webhook(conn, "http://127.0.0.1:9/live")
    for webhook_id in (gone, recent, live):
        await with_references(conn, webhook_id)
    await with_references(conn, busy, delivery_state="pending")
    shared_event = await conn.fetchval(
        "INSERT INTO events (organisation, type, webhook_id, dispatched_at, delivery_count)"
        " VALUES ('acme', 'request.create', $1, now(), 2) RETURNING id",
        gone,
    )
    for webhook_id in (gone, live):
        await conn.execute(
            "INSERT INTO delivery (event_id, webhook_id, state, max_attempts, attempts, finished_at)"
            " VALUES ($1, $2, 'delivered', 4, 1, now())",
            shared_event,
            webhook_id,
        )
    await conn.execute(
        "UPDATE webhook SET deleted_at = now() - interval '3 hours' WHERE id = ANY($1::int[])", [gone, busy]
    )
    await conn.execute("UPDATE webhook SET deleted_at = now() - interval '90 minutes' WHERE id = $1", recent)
    before = {w: await referring(conn, w) for w in (busy, recent, live)}

    settings = {"retention": {"delivered": "1h", "failed": "2h"}}
    config = load_config(write_config(tmp_path / "r.toml", dsn, settings))
    maintenance = Maintenance(db, config, wake_deliverer=asyncio.Event())
    # the webhook (what referred to it went in the same statement, and is not counted)
    assert await maintenance.prune() == 1

    remaining = {r["id"] for r in await conn.fetch("SELECT id FROM webhook")}
    assert remaining == {busy, recent, live}
    assert await referring(conn, gone) == dict.fromkeys(REFERRING, 0)
    assert {w: await referring(conn, w) for w in (busy, recent, live)} == before
    assert await conn.fetchval("SELECT count(*) FROM attempt") == 3  # those of busy, recent and live
    shared = await conn.fetchrow("SELECT webhook_id, delivery_count FROM events WHERE id = $1", shared_event)
    assert shared["webhook_id"] is None and shared["delivery_count"] == 2
    assert await conn.fetchval("SELECT webhook_id FROM delivery WHERE event_id = $1", shared_event) == live
    assert await maintenance.prune() == 0


async def test_a_pruned_webhook_that_was_deleted_through_the_api_query_leaves_nothing_dangling(
    conn: asyncpg.Connection, db: Database, dsn: str, tmp_path: Path
) -> None:
    """A webhook deleted by delete_webhook (its pending delivery cancelled, its key binding and the organisation's
    default cleared) and left past retention is pruned; the organisation, its token and the cancelled delivery's
    event remain, and every foreign key still holds (the prune is one statement)."""
    webhook_id, _ = await make_webhook(conn, "http://127.0.0.1:9/old")
    await conn.execute("UPDATE organisation SET default_webhook_id = $1 WHERE id = 'acme'", webhook_id)
    token_id = await conn.fetchval(
        "INSERT INTO token (organisation, role, digest, webhook_id) VALUES ('acme', 'producer', '\\x01', $1)"
        " RETURNING id",
        webhook_id,
    )
    event_id = await conn.fetchval(
        "INSERT INTO events (organisation, type, key_id, dispatched_at, delivery_count)"
        " VALUES ('acme', 'request.create', $1, now(), 1) RETURNING id",
        token_id,
    )
    await conn.execute(
        "INSERT INTO delivery (event_id, webhook_id, state, max_attempts) VALUES ($1, $2, 'pending', 4)",
        event_id,
        webhook_id,
    )
    assert await db.delete_webhook(webhook_id=webhook_id, organisation="acme")
    await conn.execute("UPDATE webhook SET deleted_at = now() - interval '3 hours' WHERE id = $1", webhook_id)

    settings = {"retention": {"delivered": "1h", "failed": "2h"}}
    maintenance = Maintenance(
        db, load_config(write_config(tmp_path / "r.toml", dsn, settings)), wake_deliverer=asyncio.Event()
    )
    assert await maintenance.prune() == 1
    assert await conn.fetchval("SELECT count(*) FROM delivery") == 0
    assert await conn.fetchval("SELECT count(*) FROM webhook") == 0
    assert await conn.fetchval("SELECT default_webhook_id FROM organisation WHERE id = 'acme'") is None
    assert await conn.fetchval("SELECT webhook_id FROM token WHERE id = $1", token_id) is None
    assert await conn.fetchval("SELECT count(*) FROM events WHERE id = $1", event_id) == 1
