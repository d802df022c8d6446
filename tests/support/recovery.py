"""Rows for the recovery tests: routed events with deliveries in a chosen state, made directly in SQL (already
dispatched, so the daemon does not route them again), and a rate-limit window filled up."""

from __future__ import annotations

from uuid import UUID

import asyncpg


async def routed_events(
    conn: asyncpg.Connection,
    organisation: str,
    webhook_id: int | None,
    states: list[str | None],
    *,
    type: str = "request.create",
) -> list[UUID]:
    """One dispatched event of `type` per entry of `states`, each with an original delivery to `webhook_id` in
    that state (None: no delivery at all); returns the event ids, oldest first."""
    ids: list[UUID] = []
    for state in states:
        event_id = await conn.fetchval(
            "INSERT INTO events (organisation, type, object_id, payload, dispatched_at, delivery_count)"
            " VALUES ($1, $2, '1', '{\"n\": 1}', clock_timestamp(), $3) RETURNING id",
            organisation,
            type,
            0 if state is None else 1,
        )
        if state is not None:
            await conn.execute(
                "INSERT INTO delivery (event_id, webhook_id, state, max_attempts, attempts, finished_at, last_error)"
                " VALUES ($1, $2, $3, 4, 4, CASE WHEN $3 IN ('delivered', 'failed') THEN clock_timestamp() END,"
                " CASE WHEN $3 = 'failed' THEN '500 Internal Server Error' END)",
                event_id,
                webhook_id,
                state,
            )
        ids.append(event_id)
    return ids


async def fill_rate_limit(conn: asyncpg.Connection, token_id: int, action: str, window_seconds: int, uses: int) -> None:
    """Count `uses` uses of `action` by the token in the current window (as rate_limit_hit computes it)."""
    await conn.execute(
        "INSERT INTO rate_limit (token_id, action, window_start, uses)"
        " VALUES ($1, $2, to_timestamp(floor(extract(epoch FROM now()) / $3::int) * $3::int), $4)"
        " ON CONFLICT (token_id, action) DO UPDATE SET window_start = EXCLUDED.window_start, uses = EXCLUDED.uses",
        token_id,
        action,
        window_seconds,
        uses,
    )
