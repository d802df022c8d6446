"""The queue's figures, for `dispatcher status` and the metrics: deliveries by state, ages, rates, webhooks."""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.db import Queries
from dispatcher.db.rows import (
    FailingWebhook,
    MinuteCount,
    QueueAges,
    Rates,
    StateCount,
    WebhookDetailRow,
    WebhookHourStats,
    WebhookStateCount,
)
from dispatcher.resources.scope import Context, Scope
from dispatcher.resources.webhooks import get_detail


@dataclass(frozen=True, slots=True)
class Figures:
    deliveries: tuple[StateCount, ...]
    ages: QueueAges
    webhooks: tuple[WebhookStateCount, ...]
    notification_queue_usage: float


async def figures(db: Queries) -> Figures:
    """What /metrics and `status` show of the queue (one consistent read per figure)."""
    return Figures(
        deliveries=tuple(await db.queue_status()),
        ages=await db.oldest_pending(),
        webhooks=tuple(await db.webhook_states()),
        notification_queue_usage=await db.notification_queue_usage(),
    )


async def failing(db: Queries, limit: int = 10) -> list[FailingWebhook]:
    """The webhooks that fail now, the worst first."""
    return await db.failing_webhooks(limit=limit)


async def rates(db: Queries) -> Rates:
    """Attempts finished in the last minute, by outcome."""
    return await db.recent_rates()


# ---- one organisation's figures (the console) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Overview:
    """An organisation's queue: deliveries by state, ages, the last minute's attempts, webhooks, failing ones."""

    deliveries: tuple[StateCount, ...]
    ages: QueueAges
    rates: Rates
    webhooks: tuple[WebhookStateCount, ...]
    failing: tuple[FailingWebhook, ...]


async def overview(ctx: Context, scope: Scope, *, failing_limit: int = 10) -> Overview:
    """The caller's organisation's figures (one read per figure)."""
    org = scope.organisation
    return Overview(
        deliveries=tuple(await ctx.db.organisation_queue_status(organisation=org)),
        ages=await ctx.db.organisation_queue_ages(organisation=org),
        rates=await ctx.db.organisation_rates(organisation=org),
        webhooks=tuple(await ctx.db.webhook_states(organisation=org)),
        failing=tuple(await ctx.db.failing_webhooks(limit=failing_limit, organisation=org)),
    )


@dataclass(frozen=True, slots=True)
class WebhookFigures:
    """A webhook with its last hour's attempts (None: none), and (for one webhook) its last day per minute."""

    webhook: WebhookDetailRow
    hour: WebhookHourStats | None
    minutes: tuple[MinuteCount, ...] = ()


# The most webhooks one listing shows.
MAX_LISTED = 1000


async def webhooks_with_figures(ctx: Context, scope: Scope) -> list[WebhookFigures]:
    """The organisation's live webhooks (newest first, at most MAX_LISTED) with their last hour's attempts."""
    rows = await ctx.db.list_webhook_details(organisation=scope.organisation, disabled=None, limit=MAX_LISTED, offset=0)
    hours = {h.webhook_id: h for h in await ctx.db.webhook_hour_stats(organisation=scope.organisation)}
    return [WebhookFigures(row, hours.get(row.id)) for row in rows]


async def webhook_figures(ctx: Context, scope: Scope, webhook_id: int) -> WebhookFigures:
    """One webhook of the organisation with its last hour's attempts and its last day's, per minute."""
    row = await get_detail(ctx, scope, webhook_id)
    hour = await ctx.db.webhook_hour_stats(organisation=scope.organisation, webhook_id=webhook_id)
    minutes = await ctx.db.webhook_minutes(webhook_id=webhook_id, organisation=scope.organisation)
    return WebhookFigures(row, hour[0] if hour else None, tuple(minutes))
