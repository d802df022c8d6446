"""Test tasks: queue a webhook's test, read a task, wait for its result (ricloud's `Ricloud-Await`)."""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

from dispatcher.db.rows import TaskRow
from dispatcher.resources.errors import Busy, NotFound
from dispatcher.resources.scope import Context, Scope
from dispatcher.vocab import TaskState

# How often wait() reads the task.
POLL_SECONDS = 0.2


async def request_test(ctx: Context, scope: Scope, webhook_id: int) -> TaskRow:
    """Queue a test of the webhook, or return the one already pending."""
    await ctx.db.expire_tasks()
    for _ in range(3):
        task = await ctx.db.request_test(webhook_id=webhook_id, organisation=scope.organisation)
        if task is None:
            task = await ctx.db.pending_test(webhook_id=webhook_id, organisation=scope.organisation)
        if task is not None:
            return task
        if await ctx.db.get_webhook(webhook_id=webhook_id, organisation=scope.organisation) is None:
            raise NotFound("webhook")
    raise Busy("could not queue a test: it kept completing while being asked for; try again")


async def find(ctx: Context, scope: Scope, task_id: UUID) -> TaskRow | None:
    """A task, after failing those pending longer than a minute (no dispatcher took them)."""
    await ctx.db.expire_tasks()
    return await ctx.db.get_task(task_id=task_id, organisation=scope.organisation)


async def get(ctx: Context, scope: Scope, task_id: UUID, *, wait: float = 0.0) -> TaskRow:
    """A task of the caller's organisation; with `wait`, once it is done or `wait` seconds have passed."""
    task = await find(ctx, scope, task_id)
    if task is None:
        raise NotFound("task")
    if wait > 0 and task.state == TaskState.PENDING:
        task = await _wait(ctx, scope, task_id, wait) or task
    return task


async def wait(ctx: Context, scope: Scope, task_id: UUID, timeout: float) -> TaskRow | None:
    """Read the task until it is no longer pending or `timeout` seconds pass."""
    return await _wait(ctx, scope, task_id, timeout)


async def _wait(ctx: Context, scope: Scope, task_id: UUID, timeout: float) -> TaskRow | None:
    deadline = time.monotonic() + timeout
    while True:
        task = await find(ctx, scope, task_id)
        if task is None or task.state != TaskState.PENDING or time.monotonic() >= deadline:
            return task
        await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
