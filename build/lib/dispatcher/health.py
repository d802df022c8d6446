"""Webhook health: tests, operator transitions, and what the daemon does when results change a webhook's state.

The state machine itself lives in SQL (record_results and the queries named below), so that every process
applies it the same way inside the statements that write results. This module calls those queries, logs one
line per state change, holds deliveries of webhooks that turn invalid and queues failure mail. The management
API and the CLI call the operator functions here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from dispatcher.db import Database
from dispatcher.errors import DispatcherError

log = structlog.get_logger("dispatcher.health")

# A task still pending after this long fails with "no dispatcher is running".
TASK_EXPIRY_SECONDS = 60.0


class WebhookNotFound(DispatcherError):
    """No such webhook in this organisation."""


@dataclass(frozen=True, slots=True)
class Change:
    """A webhook's state before and after something happened to it."""

    webhook_id: int
    old_state: str
    new_state: str
    reason: str
    last_error: str | None = None


def log_change(change: Change) -> None:
    """The one log line per webhook state change."""
    if change.old_state != change.new_state:
        log.info(
            "webhook.state_changed",
            webhook_id=change.webhook_id,
            old_state=change.old_state,
            new_state=change.new_state,
            reason=change.reason,
            error=change.last_error,
        )


class HealthKeeper:
    """Acts on what a batch of results did to webhooks: logs changes, holds the backlog of webhooks that turned
    invalid, queues failure mail (when [mail] host is set)."""

    def __init__(self, db: Database, *, mail_enabled: bool) -> None:
        self._db = db
        self._mail_enabled = mail_enabled

    async def after_batch(self, rows: Sequence[asyncpg.Record]) -> None:
        """`rows` are record_results' webhook rows: state changes and webhooks with new failures."""
        if not rows:
            return
        invalid: list[int] = []
        failing: list[int] = []
        for row in rows:
            change = Change(row["webhook_id"], row["old_state"], row["new_state"], "delivery results",
                            row["last_error"] or None)  # fmt: skip
            log_change(change)
            if change.new_state == "invalid" and change.old_state != "invalid":
                invalid.append(change.webhook_id)
            elif row["new_failures"] and change.new_state != "deactivated":
                failing.append(change.webhook_id)
        if invalid:
            await self._db.fetch("hold_deliveries", invalid)
        if self._mail_enabled:
            if invalid:
                await self._db.fetch("queue_invalid_mail", invalid)
            if failing:
                await self._db.fetch("queue_failing_mail", failing, datetime.now(UTC))


# ---- operator actions (CLI and API) ------------------------------------------------------------------------


async def request_test(db: Database, webhook_id: int, organisation: str) -> asyncpg.Record:
    """Queue a test of the webhook, or return the one already pending; returns the task."""
    await db.fetch("expire_tasks")
    for _ in range(3):
        task = await db.fetchrow("request_test", webhook_id, organisation)
        if task is None:
            task = await db.fetchrow("pending_test", webhook_id, organisation)
        if task is not None:
            return task
        if await db.fetchrow("get_webhook", webhook_id, organisation) is None:
            raise WebhookNotFound()
    raise DispatcherError("could not queue a test: it kept completing while being asked for; try again")


async def get_task(db: Database, task_id: UUID, organisation: str) -> asyncpg.Record | None:
    """A task, after failing those pending longer than a minute (no dispatcher took them)."""
    await db.fetch("expire_tasks")
    return await db.fetchrow("get_task", task_id, organisation)


async def wait_for_task(db: Database, task_id: UUID, organisation: str, timeout: float) -> asyncpg.Record | None:
    """Poll the task until it is no longer pending or `timeout` seconds pass (ricloud's Ricloud-Await)."""
    deadline = time.monotonic() + timeout
    while True:
        task = await get_task(db, task_id, organisation)
        if task is None or task["state"] != "pending" or time.monotonic() >= deadline:
            return task
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


async def _transition(db: Database, query: str, reason: str, *args: Any) -> Change:
    row = await db.fetchrow(query, *args)
    if row is None:
        raise WebhookNotFound()
    change = Change(args[0], row["old_state"], row["new_state"], reason)
    log_change(change)
    return change


async def set_url(db: Database, webhook_id: int, organisation: str, url: str) -> Change:
    """A new URL: state new and a test of the new version (a deactivated webhook stays deactivated, untested)."""
    change = await _transition(db, "set_webhook_url", "url changed", webhook_id, organisation, url)
    await db.fetch("supersede_tests", webhook_id)
    if change.new_state == "new":
        await request_test(db, webhook_id, organisation)
    return change


async def renew(db: Database, webhook_id: int, organisation: str) -> Change:
    """Operator re-enable (or a request for state new): state new and a test of the new version."""
    change = await _transition(db, "renew_webhook", "set to new by an operator", webhook_id, organisation)
    await db.fetch("supersede_tests", webhook_id)
    await request_test(db, webhook_id, organisation)
    return change


async def deactivate(db: Database, webhook_id: int, organisation: str) -> Change:
    """Operator deactivation: nothing more is sent; pending and held deliveries are cancelled, as is a pending
    test's task (a new test may be asked for: tests of deactivated webhooks are sent and change nothing)."""
    change = await _transition(db, "deactivate_webhook", "deactivated by an operator", webhook_id, organisation)
    await db.fetch("supersede_tests", webhook_id)
    return change


async def set_paused(db: Database, webhook_id: int, organisation: str, paused: bool) -> None:
    """Pause (deliveries held, tests still sent) or resume (held deliveries released by maintenance)."""
    row = await db.fetchrow("set_paused", webhook_id, organisation, paused)
    if row is None:
        raise WebhookNotFound()
    log.info("webhook.paused" if paused else "webhook.resumed", webhook_id=webhook_id, state=row["state"])


async def delete(db: Database, webhook_id: int, organisation: str) -> None:
    """Delete: pending and held deliveries cancelled, attempts kept, key bindings and default cleared."""
    if await db.fetchrow("delete_webhook", webhook_id, organisation) is None:
        raise WebhookNotFound()
    await db.fetch("supersede_tests", webhook_id)
    log.info("webhook.deleted", webhook_id=webhook_id, organisation=organisation)
