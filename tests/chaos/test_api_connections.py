"""400 half-open connections to the API (200 that send nothing, 200 that stop in the middle of a request): /healthz
still answers at once, deliveries go on meanwhile, and the daemon closes every one of them within its keep-alive
timeout ([api] idle_timeout), giving their file descriptors back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support.chaos import (
    Row,
    RssWatch,
    Tally,
    chaos_n,
    expected_deliveries,
    half_open,
    open_fds,
    raise_nofile,
    record,
    scaled,
)
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = [pytest.mark.chaos, pytest.mark.db]

CONNECTIONS = 400
IDLE_TIMEOUT = 1.0


@pytest.mark.timeout(scaled(60))
async def test_400_half_open_connections(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any
) -> None:
    """With 400 half-open connections held: /healthz answers 200 (within 2 s, where the idle timeout is 1 s), N
    events emitted meanwhile all arrive once, every connection is closed by the daemon within 5x the idle timeout,
    and its open file descriptors come back to within 20 of what they were before."""
    raise_nofile(4 * CONNECTIONS)
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["*"])
    daemon = await daemon_factory(dsn, api={"idle_timeout": f"{IDLE_TIMEOUT:g}s"}).start().wait_ready()
    host, port = daemon.api_address().removeprefix("http://").rsplit(":", 1)
    fds_before = open_fds(daemon.pid)
    n = chaos_n(300)
    watch = RssWatch()
    async with watch.following(lambda: [daemon]):
        streams = await half_open(host, int(port), CONNECTIONS)
        opened = time.monotonic()
        await emit_many(conn, n)
        started = time.monotonic()
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(f"{daemon.api_address()}/healthz") as reply,
        ):
            assert reply.status == 200
        healthz_s = time.monotonic() - started
        closed = await asyncio.wait_for(
            asyncio.gather(*(reader.read() for reader, _ in streams)), timeout=5 * IDLE_TIMEOUT + 5
        )
        all_closed_s = time.monotonic() - opened
        for _, writer in streams:
            writer.close()
        await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'delivered'", n, timeout=scaled(60))
    tally = Tally.of(receiver.arrivals, await expected_deliveries(conn, {webhook_id: "/hook"}))
    fds_after = open_fds(daemon.pid)
    record(
        Row("400 half-open API connections", f"idle_timeout {IDLE_TIMEOUT:g} s", tally.sent, tally.received,
            tally.lost, tally.duplicated, watch.peak_mib, tally.longest_delay_s, n,
            {"healthz_s": round(healthz_s, 3), "all_closed_after_s": round(all_closed_s, 2),
             "fds_before": fds_before, "fds_after": fds_after})
    )  # fmt: skip
    assert all(data == b"" for data in closed)
    assert healthz_s < 2.0  # not queued behind the idle connections
    assert tally.lost == 0 and tally.duplicated == 0
    assert fds_after <= fds_before + 20
    assert daemon.alive()
