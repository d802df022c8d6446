"""The delivery log and redelivery: every delivery of a webhook or an event with its attempts, and one more try.

Dead letters (`failed`, kind original/redeliver/replay) and failed tests (kind `test`) are told apart by kind.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from dispatcher import __version__
from dispatcher.db.rows import AttemptRow, DeliveryDetailRow, DeliveryLogRow
from dispatcher.formats import FORMATS
from dispatcher.resources.errors import Invalid, NotFound, RateLimited, Rejected
from dispatcher.resources.scope import Context, Scope
from dispatcher.resources.webhooks import get as get_webhook
from dispatcher.sender import mask_url
from dispatcher.vocab import DeliveryKind, DeliveryState, WebhookFormat, WebhookState

# Redeliveries per token and window (each sends a request to someone's server): 60 a minute.
REDELIVER_LIMIT = 60
REDELIVER_WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Filters:
    """What a delivery list is narrowed to (None: no narrowing)."""

    states: Sequence[DeliveryState] | None = None
    kinds: Sequence[DeliveryKind] | None = None
    types: Sequence[str] | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """Some deliveries, newest first, and the cursor of the next page (None: the last page)."""

    items: tuple[DeliveryLogRow, ...]
    next_cursor: UUID | None


@dataclass(frozen=True, slots=True)
class Detail:
    """A delivery, its attempts, and the headers its requests carried (signatures and timestamps left out)."""

    delivery: DeliveryDetailRow
    attempts: tuple[AttemptRow, ...]
    request_url: str
    request_headers: dict[str, str]


def parse_list(value: str | None, vocabulary: type[DeliveryState] | type[DeliveryKind], field: str) -> list[str] | None:
    """A comma-separated list of words of `vocabulary` (None or empty: any)."""
    if not value:
        return None
    words = [w.strip() for w in value.split(",") if w.strip()]
    allowed = [member.value for member in vocabulary]
    for word in words:
        if word not in allowed:
            raise Invalid(field, f"{field} must be one or more of {', '.join(allowed)} (comma-separated), not {word!r}")
    return words


def _check_window(filters: Filters) -> None:
    if filters.since is not None and filters.until is not None and filters.since >= filters.until:
        raise Invalid("until", "until must be after since")


def _page(rows: list[DeliveryLogRow], limit: int) -> Page:
    items = tuple(rows[:limit])
    return Page(items, items[-1].id if len(rows) > limit else None)


async def list_for_webhook(
    ctx: Context, scope: Scope, webhook_id: int, filters: Filters, *, cursor: UUID | None = None, limit: int = 25
) -> Page:
    """A live webhook's deliveries, newest first."""
    await get_webhook(ctx, scope, webhook_id)
    _check_window(filters)
    rows = await ctx.db.list_webhook_deliveries(
        organisation=scope.organisation, webhook_id=webhook_id, states=filters.states, kinds=filters.kinds,
        types=filters.types, since=filters.since, until=filters.until, before_id=cursor, limit=limit + 1,
    )  # fmt: skip
    return _page(rows, limit)


async def list_for_event(
    ctx: Context, scope: Scope, event_id: UUID, filters: Filters, *, cursor: UUID | None = None, limit: int = 25
) -> Page:
    """An event's deliveries (to every webhook), newest first."""
    if await ctx.db.get_event_summary(organisation=scope.organisation, event_id=event_id) is None:
        raise NotFound("event")
    _check_window(filters)
    rows = await ctx.db.list_event_deliveries(
        organisation=scope.organisation, event_id=event_id, states=filters.states, kinds=filters.kinds,
        types=filters.types, since=filters.since, until=filters.until, before_id=cursor, limit=limit + 1,
    )  # fmt: skip
    return _page(rows, limit)


def _request(row: DeliveryDetailRow) -> tuple[str, dict[str, str]]:
    """The URL and headers a request of this delivery carries, without signatures and the per-attempt timestamp;
    the values of the webhook's static headers are masked (they often hold the receiver's credentials)."""
    headers = {"Content-Type": "application/json", "User-Agent": f"dispatcher/{__version__}"}
    static = json.loads(row.headers) if row.headers else {}
    headers.update({name: "***" for name in static})
    headers["webhook-id"] = str(row.event_id)
    if row.format == WebhookFormat.FOURME:
        headers["X-4me-Delivery"] = str(row.id)
    url = FORMATS[row.format].target_url(row.url, str(row.event_id))
    return mask_url(url), headers


async def get(ctx: Context, scope: Scope, delivery_id: UUID) -> Detail:
    """A delivery of the caller's organisation with its attempts."""
    row = await ctx.db.get_delivery(organisation=scope.organisation, delivery_id=delivery_id)
    if row is None:
        raise NotFound("delivery")
    attempts = await ctx.db.delivery_attempts(delivery_id=delivery_id)
    url, headers = _request(row)
    return Detail(row, tuple(attempts), url, headers)


async def redeliver(ctx: Context, scope: Scope, delivery_id: UUID) -> DeliveryLogRow:
    """A new delivery (kind redeliver) of the same event to the same webhook: one attempt, now, even to an invalid
    webhook (held while it is paused). Rate-limited per token."""
    row = await ctx.db.get_delivery(organisation=scope.organisation, delivery_id=delivery_id)
    if row is None:
        raise NotFound("delivery")
    if row.webhook_deleted or row.webhook_state == WebhookState.DEACTIVATED:
        what = "deleted" if row.webhook_deleted else "deactivated"
        raise Rejected("webhook_unavailable", f"webhook {row.webhook_id} is {what}: nothing can be sent", field=None)
    if scope.token_id is not None:
        hit = await ctx.db.rate_limit_hit(
            token_id=scope.token_id, action="redeliver", limit=REDELIVER_LIMIT, window_seconds=REDELIVER_WINDOW_SECONDS
        )
        if not hit.allowed:
            retry = max(1, hit.retry_after)
            raise RateLimited(
                f"at most {REDELIVER_LIMIT} redeliveries per {REDELIVER_WINDOW_SECONDS} s per token; "
                f"try again in {retry} s",
                retry_after=retry,
            )
    made = await ctx.db.redeliver(organisation=scope.organisation, delivery_id=delivery_id)
    if made is None:
        raise NotFound("delivery")
    return made
