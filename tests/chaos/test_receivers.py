"""Hostile receivers, all at once beside a well-behaved one: a body that trickles a byte a second, a 1 GiB body,
a gzip bomb (Content-Encoding: gzip, 1 MiB inflating to 1 GiB), a TCP reset in the middle of the response, a
redirect to an address the guard refuses, and a name that rebinds between resolutions (through a resolver put
into the daemon). Each attempt is bounded in time, the daemon's memory stays far below the bodies' size, every
outcome is classified as it should be, no refused address is ever dialled, and the well-behaved webhook receives
every one of its events."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.support.chaos import (
    ResolvingDaemon,
    Row,
    RssWatch,
    Tally,
    Trap,
    bomb_behaviour,
    by_path,
    chaos_n,
    expected_deliveries,
    gzip_bomb,
    one_gib,
    record,
    redirect_to,
    reset_mid_response,
    scaled,
    trickle,
    wait_settled,
)
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver, ok
from tests.support.waits import wait_db

pytestmark = [pytest.mark.chaos, pytest.mark.db]

TIMEOUT = 1.0
PER_HOSTILE = 2
# The daemon never holds a whole body: its peak RSS stays under this, far below the 1 GiB sent.
RSS_BOUND_MIB = 300
# What each hostile receiver's attempts must be classified as (error_class; None: delivered), and its final state.
EXPECTED: dict[str, tuple[set[str | None], str]] = {
    # timed out, then due again a minute later (a timeout moves the next attempt later): tried once here
    "trickle": ({"timeout"}, "pending"),
    "gib": ({None}, "delivered"),  # a 200 is a 200: the body is read up to [delivery] max_response_bytes
    "bomb": ({None}, "delivered"),  # never inflated (the sender does not decompress)
    "reset": ({"reset"}, "failed"),
    "redirect": ({"http_status"}, "failed"),  # 307 is not followed, so the refused address is never dialled
    "rebind": ({"blocked", None}, "delivered"),  # refused while the name says 127.0.0.2, sent once it says .1
}


@pytest.mark.timeout(scaled(120))
async def test_hostile_receivers_are_bounded_and_others_unaffected(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, tmp_path: Any
) -> None:
    """Six hostile webhooks get 2 events each while a good one gets N: each hostile attempt ends within 5x the 1 s
    timeout and is classified as EXPECTED says, the daemon's peak RSS stays under 300 MiB, the trap listening on
    the refused address sees no connection, and the good webhook's events all arrive, once each."""
    hostile = Receiver()
    await hostile.start()
    trap = await Trap("127.0.0.2", hostile.port).start()
    hostile.behaviour = by_path(
        {
            "trickle": trickle,
            "gib": one_gib,
            "bomb": bomb_behaviour(gzip_bomb()),
            "reset": reset_mid_response,
            "redirect": redirect_to(f"http://127.0.0.2:{hostile.port}/trap"),
            "rebind": ok,  # reached only at the address the guard allows
        }
    )
    hooks: dict[str, int] = {}
    for kind in EXPECTED:
        host = "rebind.test" if kind == "rebind" else "127.0.0.1"
        hooks[kind], _ = await make_webhook(conn, f"http://{host}:{hostile.port}/hook/{kind}", events=["problem.*"])
    good, _ = await make_webhook(conn, receiver.url, events=["request.*"])
    settings = {
        "delivery": {"allow_networks": ["127.0.0.1/32"], "timeout": f"{TIMEOUT:g}s", "connect_timeout": "1s"},
        "worker": {"concurrency": 30},
    }
    daemon = ResolvingDaemon.with_test_settings(dsn, tmp_path / "daemon", settings)
    assert isinstance(daemon, ResolvingDaemon)
    daemon.answers = {"rebind.test": [["127.0.0.2"], ["127.0.0.1"], ["127.0.0.2"]]}
    n = chaos_n(300)
    watch = RssWatch()
    try:
        daemon.start()
        await daemon.wait_ready()
        async with watch.following(lambda: [daemon]):
            await emit_many(conn, PER_HOSTILE, type="problem.update")
            await emit_many(conn, n)
            await wait_settled(conn, timeout=scaled(90), except_webhooks=[hooks["trickle"]])
            await wait_db(
                conn, "SELECT count(*) FROM delivery WHERE webhook_id = $1 AND state = 'pending' AND attempts >= 1",
                PER_HOSTILE, hooks["trickle"], timeout=30,
            )  # fmt: skip
        assert daemon.alive()
    finally:
        daemon.kill()
        await trap.stop()
        await hostile.stop()

    good_tally = Tally.of(receiver.arrivals, await expected_deliveries(conn, {good: "/hook"}))
    record(
        Row("Hostile receivers", "the well-behaved webhook beside them", good_tally.sent, good_tally.received,
            good_tally.lost, good_tally.duplicated, watch.peak_mib, good_tally.longest_delay_s, n,
            {"trap_connections": trap.hits})
    )  # fmt: skip
    failures = []
    for kind, (classes, final) in EXPECTED.items():
        attempts = await conn.fetch(
            "SELECT a.error_class, a.status, a.duration_ms, length(a.response) AS response_chars, d.state"
            " FROM attempt a JOIN delivery d ON d.id = a.delivery_id WHERE d.webhook_id = $1",
            hooks[kind],
        )
        states = {r["state"] for r in attempts}
        seen = {r["error_class"] for r in attempts}
        path = f"/hook/{kind}"
        delivered_keys = await expected_deliveries(conn, {hooks[kind]: path})
        tally = Tally.of(hostile.arrivals, delivered_keys)
        record(
            Row("Hostile receivers", kind, PER_HOSTILE, tally.received, len(delivered_keys) - PER_HOSTILE,
                tally.duplicated if final == "delivered" else 0, watch.peak_mib, None, PER_HOSTILE,
                {"classes": "/".join(sorted(str(c) for c in seen)), "state": "/".join(sorted(states)),
                 "attempts": len(attempts), "longest_attempt_s": max(r["duration_ms"] for r in attempts) / 1000,
                 "response_chars": max(r["response_chars"] or 0 for r in attempts)})
        )  # fmt: skip
        if not seen <= classes or states != {final} or (kind == "rebind" and "blocked" not in seen):
            failures.append(f"{kind}: classes {seen}, states {states}; expected {classes}, {final}")
        if max(r["duration_ms"] for r in attempts) > 5 * TIMEOUT * 1000:
            failures.append(f"{kind}: an attempt ran past 5x the timeout")
    assert trap.hits == 0
    assert watch.peak_mib is not None and watch.peak_mib < RSS_BOUND_MIB
    assert good_tally.lost == 0 and good_tally.duplicated == 0 and good_tally.unexpected == 0
    assert failures == []
