"""Webhook health: what the daemon does when results change a webhook's state.

The state machine itself lives in SQL (record_results and the queries it names), so that every process
applies it the same way inside the statements that write results. This module logs one line per state change,
holds deliveries of webhooks that turn invalid and queues failure mail. Operators' transitions (URL change,
renew, deactivate, pause, delete, tests) are dispatcher.resources.webhooks'; they log through `log_change`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from dispatcher.db import Database
from dispatcher.db.rows import WebhookOutcome
from dispatcher.vocab import WebhookState

log = structlog.get_logger("dispatcher.health")


@dataclass(frozen=True, slots=True)
class Change:
    """A webhook's state before and after something happened to it."""

    webhook_id: int
    old_state: WebhookState
    new_state: WebhookState
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

    async def after_batch(self, outcomes: Sequence[WebhookOutcome]) -> None:
        """`outcomes` are record_results' webhook rows: state changes and webhooks with new failures."""
        if not outcomes:
            return
        invalid: list[int] = []
        failing: list[int] = []
        for outcome in outcomes:
            change = Change(
                outcome.webhook_id, outcome.old_state, outcome.new_state, "delivery results", outcome.last_error or None
            )
            log_change(change)
            if change.new_state == WebhookState.INVALID and change.old_state != WebhookState.INVALID:
                invalid.append(change.webhook_id)
            elif outcome.new_failures and change.new_state != WebhookState.DEACTIVATED:
                failing.append(change.webhook_id)
        if invalid:
            await self._db.hold_deliveries(webhook_ids=invalid)
        if self._mail_enabled:
            if invalid:
                await self._db.queue_invalid_mail(webhook_ids=invalid)
            if failing:
                await self._db.queue_failing_mail(webhook_ids=failing, at=datetime.now(UTC))
