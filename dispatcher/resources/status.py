"""The queue's figures, for `dispatcher status` and the metrics: deliveries by state, ages, rates, webhooks."""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.db import Queries
from dispatcher.db.rows import FailingWebhook, QueueAges, Rates, StateCount, WebhookStateCount


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
