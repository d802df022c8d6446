"""Rows made directly in the database, as a producer or an operator would make them: webhooks, events, and
deliveries in any state without going through routing."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import asyncpg

from dispatcher.signing import generate_secret


async def make_webhook(
    conn: asyncpg.Connection,
    url: str,
    *,
    organisation: str = "acme",
    events: list[str] | None = None,
    format: str = "standard",
    name: str = "",
    state: str = "valid",
) -> tuple[int, str]:
    """A webhook (and its organisation); returns (id, secret)."""
    await conn.execute("INSERT INTO organisation (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", organisation)
    secret = generate_secret()
    webhook_id = await conn.fetchval(
        "INSERT INTO webhook (organisation, url, events, format, name, state, secrets)"
        " VALUES ($1, $2, $3, $4, $5, $6, jsonb_build_array(jsonb_build_object('secret', $7::text)))"
        " RETURNING id",
        organisation,
        url,
        events or [],
        format,
        name,
        state,
        secret,
    )
    return webhook_id, secret


async def emit_many(
    conn: asyncpg.Connection,
    n: int,
    *,
    organisation: str = "acme",
    type: str = "request.create",
    payload: str = '{"n": 1}',
) -> None:
    """Insert `n` events in one statement (one NOTIFY)."""
    await conn.execute(
        "INSERT INTO events (organisation, type, object_id, payload)"
        " SELECT $1, $2, g::text, $3::jsonb FROM generate_series(1, $4) g",
        organisation,
        type,
        payload,
        n,
    )


async def direct_deliveries(
    conn: asyncpg.Connection,
    webhook_id: int,
    n: int,
    *,
    due: timedelta = timedelta(0),
    max_attempts: int = 8,
    attempts: int = 0,
    state: str = "pending",
    kind: str = "original",
) -> list[UUID]:
    """Insert `n` events and a delivery of each to `webhook_id`, due `due` ago (1 µs apart, the last one
    `due` ago); returns their ids."""
    rows = await conn.fetch(
        """
        WITH ev AS (
            INSERT INTO events (organisation, type, object_id, kind)
            SELECT 'acme', 'request.create', g::text, CASE WHEN $4 = 'test' THEN 'test' ELSE 'event' END
            FROM generate_series(1, $1) g
            RETURNING id, object_id
        )
        INSERT INTO delivery (event_id, webhook_id, max_attempts, attempts, state, kind, next_attempt_at,
                              held_since, finished_at)
        SELECT ev.id, $2, $3, $5, $6, $4,
               clock_timestamp() - $7::interval - ($1 - ev.object_id::int) * interval '1 microsecond',
               CASE WHEN $6 = 'held' THEN clock_timestamp() END,
               CASE WHEN $6 IN ('delivered', 'failed', 'cancelled') THEN clock_timestamp() END
        FROM ev
        RETURNING id
        """,
        n,
        webhook_id,
        max_attempts,
        kind,
        attempts,
        state,
        due,
    )
    return [r["id"] for r in rows]


async def insert_held(conn: asyncpg.Connection, webhook_id: int, n: int, *, organisation: str = "acme") -> None:
    """`n` already-routed events and a held delivery of each to `webhook_id`, in two statements."""
    await conn.execute(
        """
        WITH ev AS (
            INSERT INTO events (organisation, type, object_id, dispatched_at, delivery_count)
            SELECT $1, 'request.create', g::text, clock_timestamp(), 1 FROM generate_series(1, $2) g
            RETURNING id
        )
        INSERT INTO delivery (event_id, webhook_id, max_attempts, attempts, state, held_since, last_error)
        SELECT ev.id, $3, 4, 1, 'held', clock_timestamp(), '503 Service Unavailable' FROM ev
        """,
        organisation,
        n,
        webhook_id,
    )
