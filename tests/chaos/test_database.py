"""Faults of PostgreSQL under a running daemon: the server restarted (fast, then immediate) mid-burst, and every
connection cut from the server's side (pg_terminate_backend). The server is the test module's own, started from
the same binaries as the session's, so that restarting it leaves the other tests alone."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.chaos import (
    Gate,
    OwnServer,
    Row,
    RssWatch,
    Tally,
    chaos_n,
    connect_retrying,
    expected_deliveries,
    record,
    scaled,
    terminate_backends,
    thresholds,
)
from tests.support.database import create_migrated
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = [pytest.mark.chaos, pytest.mark.db]

WEBHOOKS = 3
SETTINGS = {
    "delivery": {"timeout": "5s"},
    "worker": {"lease_margin": "1s", "concurrency": 20},
    "database": {"pool_size": 4},
}


@pytest.fixture(scope="module")
def own_server() -> Iterator[OwnServer]:
    """A PostgreSQL server for this module alone."""
    root = Path(tempfile.mkdtemp(prefix="dispatcher-chaos-pg-"))
    server = OwnServer(root)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.timeout(scaled(120))
@pytest.mark.parametrize("fault", ["restart fast", "restart immediate", "pg_terminate_backend"])
async def test_postgresql_faults_mid_burst(
    own_server: OwnServer, receiver: Receiver, daemon_factory: Any, fault: str
) -> None:
    """N events to 3 webhooks; when a third of the deliveries have arrived (requests held in flight), the fault
    strikes, and the receiver answers again at once, so results come back while the database is away. The daemon
    stays up, every delivery arrives and is recorded delivered; duplicates are no more than the deliveries leased
    when the fault struck."""
    name = "chaos_" + fault.replace(" ", "_")
    dsn = await create_migrated(own_server.server, name)
    n = chaos_n(300)
    total = n * WEBHOOKS
    gate = Gate(thresholds(total, 2)[:1], lambda: len(receiver.arrivals))
    receiver.behaviour = gate
    conn = await asyncpg.connect(dsn)
    paths = {}
    for i in range(WEBHOOKS):
        webhook_id, _ = await make_webhook(conn, f"{receiver.url}/w{i}", events=["*"])
        paths[webhook_id] = f"/hook/w{i}"
    daemon = await daemon_factory(dsn, **SETTINGS).start().wait_ready()
    watch = RssWatch()
    async with watch.following(lambda: [daemon]):
        await emit_many(conn, n)
        await gate.wait_crossed(timeout=60)
        leased = await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'leased'")
        if fault == "pg_terminate_backend":
            cut = await terminate_backends(conn)
            gate.open.set()
        else:
            await conn.close()
            restarting = asyncio.create_task(asyncio.to_thread(own_server.restart, fault.split()[1]))
            gate.open.set()
            await restarting
            conn = await connect_retrying(dsn)
            cut = None
        await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'delivered'", total, timeout=scaled(90))
    tally = Tally.of(receiver.arrivals, await expected_deliveries(conn, paths))
    await conn.close()
    lines = daemon.lines()
    notes: dict[str, Any] = {
        "leased_at_fault": leased,
        "daemon_up": daemon.alive(),
        # the daemon saw the fault: warnings of its stages, and lines that are not JSON (asyncpg's pool logs)
        "unavailable_warnings": sum(1 for line in lines if str(line.get("event", "")).endswith("database_unavailable")),
        "non_json_lines": len(daemon.log_text().splitlines()) - len(lines),
    }
    if cut is not None:
        notes["connections_cut"] = cut
    row = record(
        Row("PostgreSQL faults mid-burst", fault, tally.sent, tally.received, tally.lost, tally.duplicated,
            watch.peak_mib, tally.longest_delay_s, n, notes)
    )  # fmt: skip
    assert tally.sent == total
    assert row.lost == 0 and tally.unexpected == 0
    assert row.duplicated <= leased
    assert daemon.alive(), daemon.log_text()[-5000:]
    assert notes["unavailable_warnings"] >= 1, "the fault went unnoticed: the test proves nothing"
