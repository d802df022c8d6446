"""Secrets at rest under a running daemon: pg_dump of the whole database (PostgreSQL's own, from the server's
binaries) holds no webhook secret, no private key and no shared key in clear; the key is changed while events flow
(new key with the old one in old_keys, SIGHUP, `dispatcher secrets rotate`, old key dropped, SIGHUP again: no
restart), after which everything is under the new key and every request, before and after, verifies."""

from __future__ import annotations

import base64
import os
import signal
from typing import Any

import asyncpg
import jwt
import pytest
from standardwebhooks.webhooks import Webhook

from dispatcher.config import load_config
from dispatcher.db import Database
from dispatcher.resources import Context, Scope, policies, webhooks
from dispatcher.secretbox import key_id
from dispatcher.vocab import Role, WebhookFormat
from tests.support.chaos import (
    Row,
    RssWatch,
    Tally,
    chaos_n,
    expected_deliveries,
    pg_dump,
    record,
    scaled,
    wait_settled,
)
from tests.support.cli import run_cli
from tests.support.daemon import write_config
from tests.support.factories import emit_many
from tests.support.receivers import Receiver
from tests.support.waits import poll, wait_db

pytestmark = [pytest.mark.chaos, pytest.mark.db]

ISSUER = "https://dispatcher.example.test"
ACME = Scope("acme", Role.ADMIN)


def header(key: str) -> str:
    return f"enc:v1:{key_id(base64.b64decode(key))}:"


@pytest.mark.timeout(scaled(90))
async def test_key_change_under_load_leaves_nothing_in_clear(
    conn: asyncpg.Connection, db: Database, dsn: str, pg_server: Any, receiver: Receiver, daemon_factory: Any
) -> None:
    """Three webhooks (plain, rs256 policy, hs256 policy) made under K1; N/2 events; pg_dump shows no secret or key
    in clear; K2 with K1 old, SIGHUP, rotate, K2 alone, SIGHUP; N/2 more events: everything arrives once, every
    request verifies with the secret (and key) its creator was shown, and the dump then holds values under K2 only."""
    k1, k2 = (base64.b64encode(os.urandom(32)).decode() for _ in range(2))
    await conn.execute("INSERT INTO organisation (id, name) VALUES ('acme', 'acme')")
    daemon = daemon_factory(dsn, secrets={"encryption_key": k1}, api={"public_url": ISSUER})
    ctx = Context(db, load_config(daemon.config, environ={}))
    shown: dict[str, dict[str, str]] = {}
    paths: dict[int, str] = {}
    for name, alg in (("plain", None), ("rs256", "rs256"), ("hs256", "hs256")):
        policy = await policies.create(ctx, ACME, jwt_alg=alg) if alg else None
        made = await webhooks.create(
            ctx, ACME, url=f"{receiver.url}/{name}", events=["request.*"], format=WebhookFormat.STANDARD,
            policy_id=policy.policy.id if policy else None,
        )  # fmt: skip
        shown[f"/hook/{name}"] = {"secret": made.secret, **({"key": policy.shown_key, "alg": alg} if policy else {})}
        paths[made.webhook.id] = f"/hook/{name}"
    n = chaos_n(100)
    watch = RssWatch()
    daemon.start()
    await daemon.wait_ready()
    async with watch.following(lambda: [daemon]):
        await emit_many(conn, n // 2)
        await wait_db(conn, "SELECT count(*) FROM delivery WHERE kind = 'original' AND state = 'delivered'",
                      3 * (n // 2), timeout=scaled(60))  # fmt: skip
        first_dump = await _dump(pg_server, dsn)
        in_clear = [p for p, meta in shown.items() for v in meta.values() if len(v) > 8 and v in first_dump]

        write_config(daemon.config, dsn, {"secrets": {"encryption_key": k2, "old_keys": [k1]},
                                          "api": {"public_url": ISSUER}})  # fmt: skip
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        await _reloads(daemon, 1)
        code, out, err = await run_cli("secrets", "rotate", config=daemon.config)
        assert code == 0, err
        write_config(daemon.config, dsn, {"secrets": {"encryption_key": k2}, "api": {"public_url": ISSUER}})
        daemon.process.send_signal(signal.SIGHUP)
        await _reloads(daemon, 2)
        await emit_many(conn, n - n // 2)
        await wait_settled(conn, timeout=scaled(60))
    second_dump = await _dump(pg_server, dsn)
    tally = Tally.of(receiver.arrivals, await expected_deliveries(conn, paths))
    verified = _verify(receiver, shown)
    record(
        Row("Secrets at rest: pg_dump and a key change under load", "3 webhooks (plain, rs256, hs256)", tally.sent,
            tally.received, tally.lost, tally.duplicated, watch.peak_mib, tally.longest_delay_s, n,
            {"in_clear_in_dump": len(in_clear), "requests_verified": verified, "rotate": out.strip().splitlines()[-1]})
    )  # fmt: skip
    assert in_clear == [] and "PRIVATE KEY" not in first_dump and "PRIVATE KEY" not in second_dump
    assert header(k1) in first_dump and header(k1) not in second_dump and header(k2) in second_dump
    assert all(v not in second_dump for meta in shown.values() for v in meta.values() if len(v) > 8)
    assert tally.lost == 0 and tally.duplicated == 0 and tally.sent == 3 * n
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'failed'") == 0
    assert daemon.find("dispatcher.restart_needed") is not None  # the API's sealing key: named, not applied
    assert daemon.alive()


async def _dump(pg_server: Any, dsn: str) -> str:
    import asyncio

    return await asyncio.to_thread(pg_dump, pg_server, dsn)


async def _reloads(daemon: Any, count: int) -> None:
    async def enough() -> bool:
        return sum(1 for line in daemon.lines() if line.get("event") == "dispatcher.keys_reloaded") >= count

    await poll(enough, f"{count} dispatcher.keys_reloaded lines")


def _verify(receiver: Receiver, shown: dict[str, dict[str, str]]) -> int:
    """Every request verifies with standardwebhooks and, under a policy, its JWT with the key shown at creation."""
    for arrival in receiver.arrivals:
        meta = shown[arrival.path]
        Webhook(meta["secret"]).verify(arrival.body, arrival.headers)
        if "key" in meta:
            jwt.decode(arrival.json["jwt"], meta["key"], algorithms=[meta["alg"].upper()], issuer=ISSUER)
    return len(receiver.arrivals)
