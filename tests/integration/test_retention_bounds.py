"""Retention bounds the tables that only grow otherwise: finished test tasks (after [retention] delivered) and
mails that gave up (after [retention] failed) are pruned; pending tasks and mails still being tried are not."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from dispatcher.config import load_config
from dispatcher.db import Database
from dispatcher.maintenance import Maintenance
from tests.support.daemon import write_config
from tests.support.factories import make_webhook

pytestmark = pytest.mark.db


async def test_finished_tasks_and_abandoned_mail_are_pruned(
    conn: asyncpg.Connection, db: Database, dsn: str, tmp_path: Path
) -> None:
    """With delivered = 1 h and failed = 2 h: a task completed 2 h ago goes, one completed now and a pending
    one stay; a mail that gave up 3 h ago goes, one that gave up 1 h ago and one still being tried stay."""
    webhook_id, _ = await make_webhook(conn, "http://127.0.0.1:9/hook")
    other_id, _ = await make_webhook(conn, "http://127.0.0.1:9/other")
    third_id, _ = await make_webhook(conn, "http://127.0.0.1:9/third")
    task = (
        "INSERT INTO task (organisation, type, webhook_id, state, completed_at)"
        " VALUES ('acme', 'webhook_config.test', $1, $2, $3) RETURNING id"
    )
    old_task = await conn.fetchval(task, webhook_id, "succeeded", None)
    await conn.execute("UPDATE task SET completed_at = now() - interval '2 hours' WHERE id = $1", old_task)
    new_task = await conn.fetchval(task, other_id, "failed", None)
    await conn.execute("UPDATE task SET completed_at = now() WHERE id = $1", new_task)
    pending = await conn.fetchval(task, third_id, "pending", None)
    mail = (
        "INSERT INTO mail_outbox (organisation, webhook_id, reason, recipients, subject, body, attempts,"
        " next_attempt_at) VALUES ('acme', $1, 'failing', '{ops@example.com}', 's', 'b', $2,"
        " now() - make_interval(hours => $3)) RETURNING id"
    )
    gave_up_long_ago = await conn.fetchval(mail, webhook_id, 10, 3)
    gave_up_lately = await conn.fetchval(mail, webhook_id, 10, 1)
    still_trying = await conn.fetchval(mail, webhook_id, 3, 3)

    settings = {"retention": {"delivered": "1h", "failed": "2h"}}
    maintenance = Maintenance(
        db, load_config(write_config(tmp_path / "r.toml", dsn, settings)), wake_deliverer=asyncio.Event()
    )
    assert await maintenance.prune() == 2

    assert {r["id"] for r in await conn.fetch("SELECT id FROM task")} == {new_task, pending}
    assert {r["id"] for r in await conn.fetch("SELECT id FROM mail_outbox")} == {gave_up_lately, still_trying}
    assert old_task not in {r["id"] for r in await conn.fetch("SELECT id FROM task")}
    assert gave_up_long_ago not in {r["id"] for r in await conn.fetch("SELECT id FROM mail_outbox")}
