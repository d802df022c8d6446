"""/healthz, /readyz and /metrics on [api] listen, against the daemon as a subprocess.

The readiness test stops and restarts PostgreSQL, so it runs its own server rather than the session's.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.db import migrate
from tests.support.daemon import start_daemon
from tests.support.database import dsn_for, start_server
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import poll

pytestmark = pytest.mark.db

METRIC_NAMES = [
    "dispatcher_attempts_total",
    "dispatcher_deliveries_total",
    "dispatcher_attempt_duration_seconds_bucket",
    "dispatcher_deliveries_in_flight",
    "dispatcher_results_discarded_total",
    "dispatcher_queue_deliveries",
    "dispatcher_queue_oldest_pending_age_seconds",
    "dispatcher_queue_held_deliveries",
    "dispatcher_queue_dead_letter_deliveries",
    "dispatcher_queue_unrouted_events",
    "dispatcher_queue_oldest_unrouted_age_seconds",
    "dispatcher_webhooks",
    "dispatcher_webhooks_paused",
    "dispatcher_pg_notification_queue_usage",
    "dispatcher_database_up",
    "dispatcher_build_info",
    "process_resident_memory_bytes",
]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page as {(name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def get(session: aiohttp.ClientSession, url: str, method: str = "GET") -> tuple[int, Any, str]:
    async with session.request(method, url) as response:
        text = await response.text()
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body, text


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def test_health_routes_and_metric_names(dsn, daemon_factory, session: aiohttp.ClientSession) -> None:
    """/healthz answers 200 {"status": "ok"}, /readyz 200 with every check ok, unknown routes and methods get
    JSON errors, and /metrics (Prometheus text format) carries every metric of the SPEC §9 set."""
    daemon = await start_daemon(daemon_factory, dsn)
    base = daemon.api_address()

    assert await get(session, f"{base}/healthz") == (200, {"status": "ok"}, '{"status": "ok"}')
    status, body, _ = await poll(lambda: _ready(session, base), "readyz 200")
    assert body == {
        "status": "ready",
        "checks": {"database": "ok", "schema": "ok", "listener": "ok", "process": "ok"},
    }

    status, body, _ = await get(session, f"{base}/no-such-thing")
    assert status == 404
    assert body["error"]["code"] == "not_found" and "/no-such-thing" in body["error"]["message"]
    status, body, _ = await get(session, f"{base}/healthz", method="POST")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"

    async with session.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    names = {name for name, _labels in samples(text)}
    missing = [name for name in METRIC_NAMES if name not in names]
    assert not missing, f"/metrics lacks {missing}"
    assert samples(text)[("dispatcher_database_up", ())] == 1.0


async def _ready(session: aiohttp.ClientSession, base: str) -> tuple[int, Any, str] | None:
    result = await get(session, f"{base}/readyz")
    return result if result[0] == 200 else None


@pytest.mark.timeout(25)
async def test_queue_gauges_follow_deliveries(
    conn, dsn, receiver: Receiver, daemon_factory, session: aiohttp.ClientSession
) -> None:
    """After deliveries to a real receiver, the database-derived gauges show them: delivered count, nothing
    pending or unrouted, those of a paused webhook held, webhooks by state; no label names a webhook."""
    await make_webhook(conn, receiver.url, events=["request.create"])
    paused, _ = await make_webhook(conn, receiver.url, events=["request.create"])
    await conn.execute("UPDATE webhook SET paused = true WHERE id = $1", paused)  # its deliveries are held
    daemon = await start_daemon(daemon_factory, dsn)
    base = daemon.api_address()
    await emit_many(conn, 5)
    await receiver.wait_count(5)

    async def settled() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        _status, _body, text = await get(session, f"{base}/metrics")
        found = samples(text)
        return found if found.get(("dispatcher_queue_deliveries", (("state", "delivered"),))) == 5 else None

    found = await settled_within(settled)
    assert found[("dispatcher_queue_deliveries", (("state", "pending"),))] == 0
    assert found[("dispatcher_queue_deliveries", (("state", "held"),))] == 5
    assert found[("dispatcher_queue_held_deliveries", ())] == 5
    assert found[("dispatcher_queue_dead_letter_deliveries", ())] == 0
    assert found[("dispatcher_queue_unrouted_events", ())] == 0
    assert found[("dispatcher_webhooks", (("state", "valid"),))] == 2
    assert found[("dispatcher_webhooks", (("state", "invalid"),))] == 0
    assert found[("dispatcher_webhooks_paused", ())] == 1
    assert 0 <= found[("dispatcher_pg_notification_queue_usage", ())] < 1
    labels = {key for (_name, labels) in found for key, _value in labels}
    assert not labels & {"webhook", "webhook_id", "organisation", "url"}


async def settled_within(check: Callable[[], Any]) -> Any:
    # The database figures are cached for 5 s; give them a few refreshes.
    return await poll(check, "the gauges to settle", timeout=20.0)


async def test_attempt_counters_move(conn, dsn, receiver: Receiver, daemon_factory, session) -> None:
    """Each attempt counts once in dispatcher_attempts_total by outcome and in the latency histogram; a
    finished delivery in dispatcher_deliveries_total."""
    await make_webhook(conn, receiver.url, events=["request.create"])
    daemon = await start_daemon(daemon_factory, dsn)
    base = daemon.api_address()
    await emit_many(conn, 3)
    await receiver.wait_count(3)

    async def counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        _status, _body, text = await get(session, f"{base}/metrics")
        found = samples(text)
        return found if found.get(("dispatcher_attempts_total", (("outcome", "delivered"),))) == 3 else None

    found = await poll(counted, "3 delivered attempts counted", timeout=10.0)
    assert found[("dispatcher_deliveries_total", (("outcome", "delivered"),))] == 3
    assert found[("dispatcher_attempt_duration_seconds_count", ())] == 3


@pytest.fixture
async def own_server() -> AsyncIterator[tuple[Any, str]]:
    """A PostgreSQL server of this test's own (so that it can be stopped), with a migrated database `ops`."""
    root = Path(tempfile.mkdtemp(prefix="dispatcher-test-ops-pg-"))
    server = await asyncio.to_thread(start_server, root)
    admin = await asyncpg.connect(dsn_for(server, "postgres"))
    try:
        await admin.execute("CREATE DATABASE ops")
    finally:
        await admin.close()
    dsn = dsn_for(server, "ops")
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield server, dsn
    await asyncio.to_thread(server.cleanup)
    shutil.rmtree(root, ignore_errors=True)


def _restart(server: Any) -> None:
    with server._lock:
        server.ensure_postgres_running()


async def test_readyz_follows_the_database(own_server, daemon_factory, session: aiohttp.ClientSession) -> None:
    """While PostgreSQL is stopped /readyz answers 503 naming the database (and /healthz stays 200, /metrics
    says dispatcher_database_up 0); once it is back /readyz returns to 200 and the daemon never exited."""
    server, dsn = own_server
    daemon = await start_daemon(daemon_factory, dsn)
    base = daemon.api_address()
    await poll(lambda: _ready(session, base), "readyz 200 at start")

    await asyncio.to_thread(server.stop)

    async def not_ready() -> tuple[int, Any, str] | None:
        assert daemon.process is not None and daemon.process.poll() is None, (
            f"the daemon exited while the database was down:\n{daemon.log_path.read_text()}"
        )
        result = await get(session, f"{base}/readyz")
        return result if result[0] == 503 else None

    _status, body, _ = await poll(not_ready, "readyz 503 with the database stopped")
    assert body["status"] == "not_ready"
    assert "database" in body["not_ready"]
    assert body["checks"]["database"].startswith("unreachable")
    assert (await get(session, f"{base}/healthz"))[0] == 200

    async def database_down() -> bool:
        _status, _body, text = await get(session, f"{base}/metrics")
        return samples(text).get(("dispatcher_database_up", ())) == 0.0

    await poll(database_down, "dispatcher_database_up 0")

    await asyncio.to_thread(_restart, server)
    _status, body, _ = await poll(lambda: _ready(session, base), "readyz 200 after the restart", timeout=60)
    assert body["checks"]["listener"] == "ok"
    assert daemon.process is not None and daemon.process.poll() is None
    daemon.terminate()
    assert await daemon.wait_exit() == 0, daemon.log_path.read_text()
