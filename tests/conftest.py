"""Shared fixtures: one PostgreSQL per test session (the embedded 18, or 15 with DISPATCHER_TEST_PG=15), a fresh
database per test cloned from a migrated template, real receivers on 127.0.0.1, the daemon as a subprocess.

The parts themselves live in tests/support."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dispatcher.db import Database, connect_pool
from tests.support.daemon import Daemon
from tests.support.database import TEMPLATE, create_migrated, start_server, temporary_database
from tests.support.receivers import Receiver


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A PostgreSQL server for the session, with a migrated template database.

    Its directory is outside pytest's temporary tree, whose mode pytest resets to 0700 (the server runs as
    another user when the tests run as root).
    """
    root = Path(tempfile.mkdtemp(prefix="dispatcher-test-pg-"))
    server = start_server(root)
    asyncio.run(create_migrated(server, TEMPLATE))
    yield server
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


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
    database = Database(await connect_pool(dsn, 8))
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
async def marker() -> AsyncIterator[Receiver]:
    """A second receiver, for the marker events of `tests.support.waits.caught_up` (kept apart from `receiver`,
    so that the test's own counts are untouched)."""
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Start `dispatcher run` subprocesses against this test's database; all are killed at the end."""
    started: list[Daemon] = []

    def make(dsn: str, **overrides: Any) -> Daemon:
        d = Daemon.with_test_settings(dsn, tmp_path / f"daemon{len(started)}", overrides)
        started.append(d)
        return d

    yield make
    for d in started:
        d.kill()
