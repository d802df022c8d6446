"""Poison events of every kind to webhooks of every format (standard, ricloud, 4me, and standard under a JWT
policy), between ordinary events: the daemon stays up past its shutdown grace, no stage dies, every ordinary event
arrives once, and each poison delivery ends delivered or a dead letter of class `request_build`."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest

from dispatcher.config import load_config
from dispatcher.db import Database
from dispatcher.resources import Context, Scope, policies
from dispatcher.vocab import Role
from tests.support.chaos import Row, RssWatch, Tally, chaos_n, expected_deliveries, record, scaled, wait_settled
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import caught_up

pytestmark = [pytest.mark.chaos, pytest.mark.db]

DIGITS = "9" * 5000  # more digits than Python's int() takes from a string (4,300)
# Each poison: (name, object_id, payload, actor). Stored as a producer could store them (the first one only before
# migration 006 bounded object_id: it is written with the check trigger off).
POISONS: list[tuple[str, str | None, str, str | None]] = [
    ("object_id of 5,000 digits", DIGITS, "{}", None),
    ("payload number of 5,000 digits", "1", '{"n": ' + DIGITS + "}", None),
    ("payload nested 2,000 deep", "2", '{"deep": ' + "[" * 2000 + "]" * 2000 + "}", None),
    ("actor number of 5,000 digits", "3", "{}", '{"id": ' + DIGITS + "}"),
    ("control, bidi and astral characters", "4", '{"s": "\\u0001\\u001f\\u202e\\ud83d\\ude00<script>"}',
     '{"name": "\\u202eevil"}'),
    ("payload at the size limit", "5", '{"s": "' + "x" * (262144 - 16) + '"}', None),
    ("object_id of 255 characters", "o" * 255, "{}", None),
]  # fmt: skip
FORMATS = ["standard", "ricloud", "4me", "jwt"]
ISSUER = "https://dispatcher.example.test"


@pytest.mark.timeout(scaled(120))
async def test_poison_events_to_every_format(
    conn: asyncpg.Connection, db: Database, dsn: str, receiver: Receiver, marker: Receiver, daemon_factory: Any
) -> None:
    """Every poison of POISONS to a webhook of each format, N/2 ordinary events before and after them."""
    paths = {}
    for fmt in FORMATS:
        webhook_id, _ = await make_webhook(
            conn, f"{receiver.url}/{fmt}", events=["request.*"], format="standard" if fmt == "jwt" else fmt
        )
        paths[webhook_id] = f"/hook/{fmt}"
        if fmt == "jwt":
            jwt_webhook = webhook_id
    settings = {"worker": {"shutdown_grace": "1s"}, "api": {"public_url": ISSUER}}
    daemon = daemon_factory(dsn, **settings)
    policy = await policies.create(Context(db, load_config(daemon.config, environ={})), Scope("acme", Role.ADMIN))
    await conn.execute("UPDATE webhook SET policy_id = $1 WHERE id = $2", policy.policy.id, jwt_webhook)
    daemon.start()
    await daemon.wait_ready()
    n = chaos_n(100)
    watch = RssWatch()
    async with watch.following(lambda: [daemon]):
        await emit_many(conn, n // 2)
        poison_ids = {}
        async with conn.transaction():
            await conn.execute("ALTER TABLE events DISABLE TRIGGER events_check")
            for name, object_id, payload, actor in POISONS:
                poison_ids[name] = await conn.fetchval(
                    "INSERT INTO events (organisation, type, object_id, payload, actor)"
                    " VALUES ('acme', 'request.update', $1, $2::jsonb, $3::jsonb) RETURNING id",
                    object_id,
                    payload,
                    actor,
                )
            await conn.execute("ALTER TABLE events ENABLE TRIGGER events_check")
        await emit_many(conn, n - n // 2)
        await wait_settled(conn, timeout=scaled(90))
        finished = time.monotonic()
        while time.monotonic() - finished < 2 * 1.0:  # up past the shutdown grace: markers keep arriving
            await caught_up(conn, marker)
    assert daemon.alive()
    assert daemon.find("dispatcher.stage_died") is None and daemon.find("dispatcher.stage_restarting") is None

    ordinary = {
        k: v
        for k, v in (await expected_deliveries(conn, paths)).items()
        if k[1] not in {str(i) for i in poison_ids.values()}
    }
    failures = []
    for webhook_id, path in paths.items():
        mine = {k: v for k, v in ordinary.items() if k[0] == path}
        tally = Tally.of([a for a in receiver.arrivals if a.path.startswith(path)], mine)
        outcomes = {}
        for name, event_id in poison_ids.items():
            row = await conn.fetchrow(
                "SELECT d.state, (SELECT string_agg(DISTINCT coalesce(a.error_class, 'ok'), '/') FROM attempt a"
                " WHERE a.delivery_id = d.id) AS classes FROM delivery d WHERE d.event_id = $1 AND d.webhook_id = $2",
                event_id,
                webhook_id,
            )
            outcomes[name] = f"{row['state']}" + ("" if row["state"] == "delivered" else f":{row['classes']}")
            if row["state"] != "delivered" and row["classes"] != "request_build":
                failures.append(f"{path} {name}: {row['state']} {row['classes']}")
        record(
            Row("Poison events", path.rsplit("/", 1)[-1], tally.sent, tally.received, tally.lost, tally.duplicated,
                watch.peak_mib, tally.longest_delay_s, n, outcomes)
        )  # fmt: skip
        if tally.lost or tally.duplicated or tally.sent != n:
            failures.append(f"{path}: {tally}")
    assert failures == []
