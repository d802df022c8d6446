"""Operating it: retention keeps tables flat across bursts, several processes share one database, and no
secret, token or URL credential reaches a log."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import asyncpg
import pytest
from aiohttp import web

from dispatcher.config import load_config
from dispatcher.db import Database, connect_pool
from dispatcher.maintenance import Maintenance
from tests.support.cli import run_cli
from tests.support.daemon import start_daemon, write_config
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = pytest.mark.db

TABLES = ("events", "delivery", "attempt")

# The burst is drained: every event routed, its 1,000 request.create deliveries delivered, nothing in flight.
DRAINED = """
    SELECT CASE WHEN EXISTS (SELECT FROM events WHERE dispatched_at IS NULL)
                  OR EXISTS (SELECT FROM delivery WHERE state IN ('pending', 'leased')) THEN -1
           ELSE (SELECT count(*) FROM delivery d JOIN events e ON e.id = d.event_id
                 WHERE e.type = 'request.create' AND d.state = 'delivered') END"""


async def sizes(conn: asyncpg.Connection) -> dict[str, tuple[int, int]]:
    """Rows and total bytes (with indexes and TOAST) of the queue tables."""
    out = {}
    for table in TABLES:
        rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
        size = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
        out[table] = (rows, size)
    return out


@pytest.mark.timeout(50)
async def test_repeated_bursts_leave_tables_flat(conn, dsn, receiver: Receiver, daemon_factory, tmp_path) -> None:
    """Six bursts of 1,000 events, each delivered and then pruned by retention (delivered after 1 s): measured
    after each burst (VACUUMed, before its pruning), row counts stay within 10 % of the first burst's and table
    sizes within 25 % of the second's, so pruned space is reused rather than the tables growing (without reuse,
    each burst would add about 70 % of the second's size). An event whose delivery is unfinished (held for a
    paused webhook) is never pruned, even when its other delivery is."""
    await make_webhook(conn, receiver.url, events=["request.create"])
    paused, _ = await make_webhook(conn, receiver.url + "/paused", events=["problem.update"])
    other, _ = await make_webhook(conn, receiver.url + "/other", events=["problem.update"])
    await conn.execute("UPDATE webhook SET paused = true WHERE id = $1", paused)
    settings = {"retention": {"delivered": "1s", "failed": "1s"}}
    await start_daemon(daemon_factory, dsn, **settings)
    kept = await conn.fetchval("SELECT dispatcher_emit('acme', 'problem.update', '{}')")
    await wait_db(conn, f"SELECT count(*) FROM delivery WHERE webhook_id = {other} AND state = 'delivered'", 1)

    config = load_config(write_config(tmp_path / "prune.toml", dsn, settings))
    db = Database(await connect_pool(dsn, 2))
    maintenance = Maintenance(db, config, wake_deliverer=asyncio.Event())
    after: list[dict[str, tuple[int, int]]] = []
    try:
        for burst in range(6):
            await emit_many(conn, 1000, payload='{"pad": "' + "x" * 900 + '"}')
            await wait_db(conn, DRAINED, 1000)
            await conn.execute("VACUUM delivery, attempt, events")
            after.append(await sizes(conn))
            await asyncio.sleep(1.1)
            pruned = await maintenance.prune()
            assert pruned >= 2000, f"burst {burst}: pruned only {pruned} rows"
            await conn.execute("VACUUM delivery, attempt, events")
    finally:
        await db.close()

    # The first cycle is a warm-up: B-tree pages emptied by its pruning can only be reused once their deletion
    # is older than every snapshot, so the second burst still allocates some index pages (about +40 % on
    # delivery, seen here). From then on the space is reused, but how much of it is reusable at each VACUUM
    # depends on the snapshots open at that moment: over 14 bursts, delivery stayed between 843,776 and 892,928
    # bytes after burst 2, and one CI run saw burst 2 at 819,200 bytes and burst 6 at 909,312 (+11 %). Hence 25 %.
    first, steady = after[0], after[1]
    for n, measured in enumerate(after[1:], start=2):
        for table in TABLES:
            rows, size = measured[table]
            assert rows <= first[table][0] * 1.1, f"burst {n}: {table} has {rows} rows, first {first[table][0]}"
            assert size <= steady[table][1] * 1.25, f"burst {n}: {table} is {size} bytes, second {steady[table][1]}"
    held = await conn.fetchrow("SELECT state FROM delivery WHERE event_id = $1 AND webhook_id = $2", kept, paused)
    assert held["state"] == "held"
    assert await conn.fetchval("SELECT count(*) FROM events WHERE id = $1", kept) == 1
    print(f"\nafter each burst (rows, bytes): {json.dumps(after)}")


@pytest.mark.timeout(25)
async def test_three_processes_share_one_database(conn, dsn, daemon_factory) -> None:
    """Three `dispatcher run` processes drain a burst of 1,000 events to each of 3 webhooks together: every
    delivery arrives exactly once, each has one attempt (none was leased twice), and the webhooks were shared
    out (more than one process did work)."""
    arrivals: Counter[str] = Counter()

    async def slow(request: web.Request, n: int) -> web.Response:
        arrivals[request.path + " " + request.headers["webhook-id"]] += 1
        await asyncio.sleep(0.005)
        return web.Response(status=200)

    receiver = Receiver(behaviour=slow)
    await receiver.start()
    try:
        for name in ("a", "b", "c"):
            await make_webhook(conn, f"{receiver.url}/{name}", events=["request.create"], name=name)
        settings = {"worker": {"per_webhook_concurrency": 30, "concurrency": 10}}
        daemons = [await start_daemon(daemon_factory, dsn, **settings) for _ in range(3)]
        await emit_many(conn, 1000)
        await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'delivered'", 3000, timeout=120)
    finally:
        await receiver.stop()

    assert len(arrivals) == 3000
    duplicates = sum(n - 1 for n in arrivals.values())
    assert duplicates == 0
    assert await conn.fetchval("SELECT count(*) FROM attempt") == 3000
    assert await conn.fetchval("SELECT max(attempts) FROM delivery") == 1
    shares = [sum(1 for line in d.lines() if line["event"] == "delivery.attempt") for d in daemons]
    assert sum(shares) == 3000
    assert sum(1 for share in shares if share > 0) >= 2, shares
    print(f"\n1,000 events to 3 webhooks over 3 processes: shares {shares}, duplicates {duplicates}")


async def test_no_secret_token_or_url_credential_is_logged(conn, dsn, receiver, daemon_factory, tmp_path) -> None:
    """A full run (CLI set-up, deliveries that succeed and fail, a test, a SIGTERM) logs neither the webhook
    secrets, nor the API token, nor the password of a URL with credentials."""
    config = write_config(tmp_path / "d.toml", dsn, {"log": {"level": "debug"}})
    code, token_out, _ = await run_cli("token", "create", "--organisation", "acme", "--role", "admin", config=config)
    assert code == 0
    token = token_out.strip().splitlines()[-1]
    url_with_password = receiver.url.replace("http://", "http://ann:s3cr3t-pw@")
    code, out, _ = await run_cli(
        "webhook", "create", "--organisation", "acme", "--url", url_with_password, "--event", "request.*",
        config=config,
    )  # fmt: skip
    assert code == 0
    secret = json.loads(out)["secret"]
    _, second_secret = await make_webhook(conn, "http://ann:s3cr3t-pw@127.0.0.1:9/refused", events=["request.*"])
    daemon = await start_daemon(daemon_factory, dsn, log={"level": "debug"})
    await emit_many(conn, 5)
    await wait_db(conn, "SELECT count(*) FROM attempt WHERE status = 200", 6)
    await wait_db(conn, "SELECT count(*) > 0 FROM attempt WHERE error_class = 'connect'", True)
    daemon.terminate()
    assert await daemon.wait_exit() == 0

    log_text = daemon.log_text()
    assert "delivery.attempt" in log_text
    stored_errors = " ".join(r["error"] or "" for r in await conn.fetch("SELECT error FROM attempt"))
    for needle in (secret, secret.removeprefix("whsec_"), second_secret, token, "s3cr3t-pw"):
        assert needle not in log_text
        assert needle not in stored_errors
