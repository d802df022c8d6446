"""claim_deliveries as the daemon runs it, with readable arguments, and the statement inside dispatcher_claim_owned
turned into plain SQL for EXPLAIN."""

from __future__ import annotations

import re
from uuid import UUID

import asyncpg

from dispatcher.db import Queries
from dispatcher.db.rows import ClaimRow

SCHEDULE = [5.0, 300.0, 1800.0]
LEASE = 300.0


async def claim(
    db: Queries,
    *,
    batch: int = 100,
    per_webhook: int = 1000,
    ahead: int = 1,
    lease: float = LEASE,
    owner: str = "owner-a",
    schedule: list[float] = SCHEDULE,
    jitter: float = 0.0,
    test_lease: float | None = None,
    answered: list[UUID] | None = None,
) -> list[ClaimRow]:
    """Run claim_deliveries with readable arguments (tests' lease = `lease` unless given), on the pool or in a
    transaction."""
    return await db.claim_deliveries(
        limit=batch,
        per_webhook=per_webhook,
        ahead=ahead,
        lease_seconds=lease,
        owner=owner,
        schedule=schedule,
        jitter=jitter,
        test_lease_seconds=lease if test_lease is None else test_lease,
        answered=answered or [],
    )


async def claim_statement(conn: asyncpg.Connection) -> str:
    """The statement of dispatcher_claim_owned's second step (the claim under its webhook locks), its plpgsql
    parameters turned into $n (the locked webhooks being $11), for EXPLAIN."""
    source = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'dispatcher_claim_owned'")
    statement = source.split("RETURN QUERY", 1)[1].rsplit("END", 1)[0].strip().rstrip(";")
    names = ["p_batch", "p_per_webhook", "p_ahead", "p_lease_seconds", "p_owner", "p_schedule", "p_jitter",
             "p_test_lease_seconds", "p_answered", "p_stalled", "v_mine"]  # fmt: skip
    casts = ["int", "int", "int", "float8", "text", "float8[]", "float8", "float8", "uuid[]", "int[]", "int[]"]
    for n, (name, cast) in enumerate(zip(names, casts, strict=True), start=1):
        statement = re.sub(rf"\b{name}\b", f"(${n}::{cast})", statement)
    return statement
