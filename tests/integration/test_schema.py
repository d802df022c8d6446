"""The schema: migrations build exactly sql/schema.sql; migrate is idempotent and refuses a newer schema."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from dispatcher.db import LATEST_VERSION, SQL_DIR, SchemaTooNew, load_queries, migrate

pytestmark = pytest.mark.db

# Every object the schema owns, described from the catalogue so that two databases can be compared.
DESCRIBE = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default
        FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'dispatcher_migration'
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
          AND conrelid::regclass::text <> 'dispatcher_migration'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'dispatcher_migration' ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc), p.prosecdef, p.proconfig
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1, 2""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2""",
    "storage": """
        SELECT relname, reloptions::text FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND reloptions IS NOT NULL ORDER BY 1""",
    "grants": """
        SELECT table_name, column_name, privilege_type FROM information_schema.column_privileges
        WHERE grantee = 'dispatcher_producer' ORDER BY 1, 2, 3""",
    "event_types": "SELECT name FROM event_type ORDER BY 1",
}


async def describe(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in DESCRIBE.items()}


async def test_migrations_build_exactly_the_canonical_schema(dsn: str, empty_dsn: str) -> None:
    """Applying sql/schema.sql to an empty database gives the same tables, columns, constraints, indexes,
    functions, triggers, storage settings, grants and catalogue as running every migration."""
    migrated = await asyncpg.connect(dsn)
    canonical = await asyncpg.connect(empty_dsn)
    try:
        await canonical.execute((SQL_DIR / "schema.sql").read_text())
        want = await describe(migrated)
        got = await describe(canonical)
        for name in DESCRIBE:
            assert got[name] == want[name], f"sql/schema.sql and the migrations differ in {name}"
        assert len(want["columns"]) > 50
    finally:
        await migrated.close()
        await canonical.close()


async def test_migrate_is_idempotent_and_safe_in_parallel(empty_dsn: str) -> None:
    """Four concurrent `migrate` runs on an empty database apply each migration exactly once."""
    conns = [await asyncpg.connect(empty_dsn) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [name for result in results for name in result]
        assert len(applied) == LATEST_VERSION
        assert len(set(applied)) == len(applied)
        assert await migrate(conns[0]) == []
    finally:
        for c in conns:
            await c.close()


async def test_migrate_refuses_a_newer_schema(conn: asyncpg.Connection) -> None:
    """A database migrated by a newer dispatcher is refused rather than used."""
    await conn.execute(
        "INSERT INTO dispatcher_migration (version, name) VALUES ($1, 'from_the_future')", LATEST_VERSION + 1
    )
    with pytest.raises(SchemaTooNew):
        await migrate(conn)


async def test_every_named_query_prepares(conn: asyncpg.Connection) -> None:
    """Each block of sql/queries.sql is valid SQL against the migrated schema."""
    queries = load_queries()
    assert "claim_deliveries" in queries and "route_events" in queries
    for name, sql in queries.items():
        try:
            await conn.prepare(sql)
        except asyncpg.PostgresError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"query {name} does not prepare: {exc}")
