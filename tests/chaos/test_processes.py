"""Faults of the daemon's own processes: SIGKILL five times during a burst (one process, and three), SIGSTOP past
the lease then SIGCONT (late results discarded by the fencing token), SIGTERM while receivers never answer.

Counted at the receiver and in the database; duplicates only where a process died or stalled with requests out."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.support.chaos import Gate, Row, RssWatch, Tally, chaos_n, expected_deliveries, record, scaled, thresholds
from tests.support.daemon import Daemon
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db, wait_leases_expired

pytestmark = [pytest.mark.chaos, pytest.mark.db]

WEBHOOKS = 3
# Short requests and leases, so that a killed process's leases are rescued soon.
FAST = {
    "delivery": {"timeout": "1s", "connect_timeout": "1s"},
    "worker": {"lease_margin": "500ms", "concurrency": 20, "shutdown_grace": "1s"},
}


async def webhooks_to(conn: asyncpg.Connection, receiver: Receiver, n: int = WEBHOOKS) -> dict[int, str]:
    """`n` webhooks of every event type, each at a path of its own on `receiver`: {webhook id: path}."""
    paths = {}
    for i in range(n):
        webhook_id, _ = await make_webhook(conn, f"{receiver.url}/w{i}", events=["*"])
        paths[webhook_id] = f"/hook/w{i}"
    return paths


async def leased_by(conn: asyncpg.Connection, daemon: Daemon) -> int:
    """Deliveries leased by `daemon`'s process (its owner name holds its pid)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM delivery WHERE state = 'leased' AND lease_owner LIKE $1", f"%:{daemon.pid}:%"
        )
    )


@pytest.mark.timeout(scaled(300))
@pytest.mark.parametrize("processes", [1, 3])
async def test_sigkill_five_times_during_a_burst(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any, processes: int
) -> None:
    """A burst of N events to 3 webhooks; five times, when a fifth more of the deliveries have arrived, one daemon
    is SIGKILLed with requests in flight and a new one started. Every delivery arrives (none lost); duplicates are
    no more than the deliveries the killed processes held leased; the database says all delivered."""
    n = chaos_n(300)
    paths = await webhooks_to(conn, receiver)
    total = n * WEBHOOKS
    gate = Gate(thresholds(total, 5), lambda: len(receiver.arrivals))
    receiver.behaviour = gate
    daemons = [await daemon_factory(dsn, **FAST).start().wait_ready() for _ in range(processes)]
    watch = RssWatch()
    leased_at_kills = 0
    async with watch.following(lambda: daemons):
        for start in range(0, n, max(1, n // 10)):  # the burst, in ten statements
            await emit_many(conn, min(max(1, n // 10), n - start))
        for _ in range(5):
            await gate.wait_crossed(timeout=scaled(120))
            await receiver.wait_for(lambda: receiver.in_flight >= 1)
            ready = [d for d in daemons if d.alive() and d.find("dispatcher.ready") is not None]
            victim = random.choice(ready)
            watch.sample([victim])
            victim.kill()
            leased_at_kills += await leased_by(conn, victim)
            gate.open.set()
            daemons.remove(victim)
            daemons.append(daemon_factory(dsn, **FAST).start())
        await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'delivered'", total, timeout=scaled(240))
    expected = await expected_deliveries(conn, paths)
    tally = Tally.of(receiver.arrivals, expected)
    rescued = await conn.fetchval("SELECT count(*) FROM delivery WHERE attempts > 1")
    row = record(
        Row("SIGKILL x5 during a burst to 3 webhooks", f"{processes} process(es)", tally.sent, tally.received,
            tally.lost, tally.duplicated, watch.peak_mib, tally.longest_delay_s, n,
            {"leased_at_kills": leased_at_kills, "attempted_again": rescued})
    )  # fmt: skip
    assert tally.sent == total
    assert row.lost == 0 and tally.unexpected == 0
    assert row.duplicated <= leased_at_kills
    assert all(d.alive() for d in daemons)


@pytest.mark.timeout(scaled(60))
async def test_sigstop_past_the_lease_then_sigcont_changes_nothing(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any
) -> None:
    """A daemon is stopped (SIGSTOP) with 5 requests out; the receiver answers them meanwhile; the leases expire
    and a second daemon rescues and delivers them. Resumed (SIGCONT), the first one's late results carry stale
    fencing tokens: each is discarded (`delivery.result_discarded`) and no delivery, attempt or webhook row
    changes. Nothing is lost; each event arrived twice (once from each process), which is at-least-once."""
    release = asyncio.Event()

    async def first_waits(request: web.Request, n: int) -> web.Response:
        if n == 0:
            await release.wait()
        return web.Response(status=200)

    receiver.behaviour = first_waits
    paths = await webhooks_to(conn, receiver, 1)
    settings = {**FAST, "worker": {**FAST["worker"], "poll_interval": "100ms"}}
    stalled = await daemon_factory(dsn, **settings).start().wait_ready()
    watch = RssWatch()
    async with watch.following(lambda: [stalled]):
        await emit_many(conn, 5)
        await receiver.wait_for(lambda: receiver.in_flight == 5)
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM delivery WHERE state = 'leased'")]
        assert len(ids) == 5
        assert stalled.process is not None
        stalled.process.send_signal(signal.SIGSTOP)
        release.set()  # answered while it cannot read the answers
        await wait_leases_expired(conn, ids, timeout=30)
        rescuer = await daemon_factory(dsn, **settings).start().wait_ready()
        await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'delivered'", 5)
        await receiver.wait_for(lambda: len(receiver.arrivals) == 10)
        await rescuer.stop()  # its results are all written; nothing else may change the rows now
        before = await snapshot(conn)
        stalled.process.send_signal(signal.SIGCONT)
        await stalled.wait_lines("delivery.result_discarded", 5, timeout=30.0)
        after = await snapshot(conn)
    expected = await expected_deliveries(conn, paths)
    tally = Tally.of(receiver.arrivals, expected)
    record(
        Row("SIGSTOP past the lease, then SIGCONT", "1 webhook, 5 requests out", tally.sent, tally.received,
            tally.lost, tally.duplicated, watch.peak_mib, tally.longest_delay_s, 5,
            {"results_discarded": 5, "rows_changed_after_sigcont": int(before != after)})
    )  # fmt: skip
    assert after == before
    assert tally.lost == 0
    assert stalled.alive()


async def snapshot(conn: asyncpg.Connection) -> list[Any]:
    """Every delivery, attempt and webhook row, in a fixed order."""
    return [
        [tuple(r) for r in await conn.fetch("SELECT * FROM delivery ORDER BY id")],
        [tuple(r) for r in await conn.fetch("SELECT * FROM attempt ORDER BY delivery_id, number")],
        [tuple(r) for r in await conn.fetch("SELECT * FROM webhook ORDER BY id")],
    ]


@pytest.mark.timeout(scaled(120))
async def test_sigterm_while_receivers_never_answer(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any
) -> None:
    """Three webhooks whose receivers never answer, the daemon's slots all taken: SIGTERM exits 0 within the 1 s
    grace (a bound of the grace plus 10 s), with no lease left and every unfinished delivery due at once. A daemon
    started with answering receivers then delivers everything: nothing lost, and the only duplicates are requests
    the first daemon had out when it stopped."""
    answering = asyncio.Event()

    async def hang_until_answering(request: web.Request, n: int) -> web.Response:
        await answering.wait()
        return web.Response(status=200)

    receiver.behaviour = hang_until_answering
    n = chaos_n(300)
    paths = await webhooks_to(conn, receiver)
    settings = {"worker": {"concurrency": 20, "shutdown_grace": "1s"}, "delivery": {"timeout": "60s"}}
    first = await daemon_factory(dsn, **settings).start().wait_ready()
    watch = RssWatch()
    async with watch.following(lambda: [first]):
        await emit_many(conn, n)
        await receiver.wait_for(lambda: receiver.in_flight >= 20)
        out_at_stop = receiver.in_flight
        started = time.monotonic()
        first.terminate()
        assert await first.wait_exit(timeout=30) == 0
        exited_after = time.monotonic() - started
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'leased'") == 0
    assert await conn.fetchval("SELECT bool_and(next_attempt_at <= now()) FROM delivery WHERE state = 'pending'")
    stopped = first.find("dispatcher.stopped")
    assert stopped is not None and stopped["released"] >= 1
    answering.set()
    second = await daemon_factory(dsn, **settings).start().wait_ready()
    async with watch.following(lambda: [second]):
        await wait_db(
            conn, "SELECT count(*) FROM delivery WHERE state = 'delivered'", n * WEBHOOKS, timeout=scaled(120)
        )
    tally = Tally.of(receiver.arrivals, await expected_deliveries(conn, paths))
    record(
        Row("SIGTERM while receivers never answer", "grace 1 s, 20 requests out", tally.sent, tally.received,
            tally.lost, tally.duplicated, watch.peak_mib, tally.longest_delay_s, n,
            {"exit_s": round(exited_after, 2), "released": stopped["released"], "out_at_sigterm": out_at_stop})
    )  # fmt: skip
    assert exited_after < 1.0 + 10.0
    assert tally.lost == 0 and tally.duplicated <= out_at_stop
