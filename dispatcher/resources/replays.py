"""Replays: send a webhook's window of events again (the ones that failed, or all), in batches by maintenance.

A replay is a row; maintenance's `replay` job walks its window one batch per transaction, remembering where it
stopped, so it survives a restart and never holds a transaction across batches (dispatcher.maintenance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from dispatcher.db.rows import ReplayRow
from dispatcher.resources.errors import Busy, Invalid, NotFound, RateLimited, Rejected
from dispatcher.resources.scope import Context, Scope
from dispatcher.resources.webhooks import get as get_webhook
from dispatcher.resources.webhooks import is_pattern
from dispatcher.vocab import WebhookState

MAX_WINDOW = timedelta(days=14)
MAX_EVENTS = 10_000

# Replays asked for per token and window: 10 a minute.
REPLAY_LIMIT = 10
REPLAY_WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class Started:
    """The replay, and whether this request started it (False: the same replay was already running)."""

    replay: ReplayRow
    created: bool


@dataclass(frozen=True, slots=True)
class Page:
    items: tuple[ReplayRow, ...]
    next_cursor: UUID | None


def _check_types(types: Sequence[str] | None, catalogue: set[str]) -> list[str] | None:
    if types is None:
        return None
    if not types:
        raise Invalid("types", "types must list at least one event type or pattern (leave it out for all)")
    for name in types:
        if not is_pattern(name) and name not in catalogue:
            raise Invalid("types", f"{name!r} is not an event type in the catalogue nor a pattern like 'request.*'")
    return sorted(set(types))


def _same(row: ReplayRow, since: datetime, until: datetime | None, only_failed: bool, types: list[str] | None) -> bool:
    """Whether a request asks for the running replay `row` (an open `until` matches any)."""
    return (
        row.since == since
        and (until is None or row.until == until)
        and row.only_failed == only_failed
        and sorted(row.types or []) == (types or [])
    )


async def start(
    ctx: Context,
    scope: Scope,
    webhook_id: int,
    *,
    since: datetime,
    until: datetime | None = None,
    only_failed: bool = True,
    types: Sequence[str] | None = None,
) -> Started:
    """Start a replay of [since, until or now); the same request while it runs returns the running replay, a
    different one is refused (one replay per webhook at a time). At most 14 days and 10,000 events."""
    webhook = await get_webhook(ctx, scope, webhook_id)
    now = datetime.now(UTC)
    wanted_types = _check_types(types, set(await ctx.db.event_type_names()))
    running = await ctx.db.running_replay(organisation=scope.organisation, webhook_id=webhook_id)
    if running is not None:
        if _same(running, since, until, only_failed, wanted_types):
            return Started(running, False)
        raise Busy(f"replay {running.id} of webhook {webhook_id} is running; wait for it to finish")
    if webhook.state == WebhookState.DEACTIVATED:
        raise Rejected("webhook_deactivated", f"webhook {webhook_id} is deactivated: re-enable it first", field=None)
    end = until if until is not None else now
    if since >= end:
        raise Invalid("until" if until is not None else "since", "the window is empty: since must be before until")
    if end - since > MAX_WINDOW:
        raise Rejected(
            "replay_window_too_long", f"the window is {end - since}; a replay covers at most 14 days",
            field="since", hint="split it into several replays",
        )  # fmt: skip
    if scope.token_id is not None:
        hit = await ctx.db.rate_limit_hit(
            token_id=scope.token_id, action="replay", limit=REPLAY_LIMIT, window_seconds=REPLAY_WINDOW_SECONDS
        )
        if not hit.allowed:
            retry = max(1, hit.retry_after)
            raise RateLimited(
                f"at most {REPLAY_LIMIT} replays per {REPLAY_WINDOW_SECONDS} s per token; try again in {retry} s",
                retry_after=retry,
            )
    count = await ctx.db.count_replay_events(
        webhook_id=webhook_id, since=since, until=end, only_failed=only_failed, types=wanted_types,
        at_most=MAX_EVENTS + 1,
    )  # fmt: skip
    if count > MAX_EVENTS:
        raise Rejected(
            "replay_too_many_events", f"more than {MAX_EVENTS:,} events of the window would be sent again",
            field="since", hint="narrow the window or the types",
        )  # fmt: skip
    replay_id = await ctx.db.create_replay(
        organisation=scope.organisation, webhook_id=webhook_id, since=since, until=end, only_failed=only_failed,
        types=wanted_types, max_events=MAX_EVENTS,
    )  # fmt: skip
    if replay_id is None:  # another request started one meanwhile
        running = await ctx.db.running_replay(organisation=scope.organisation, webhook_id=webhook_id)
        if running is not None and _same(running, since, until, only_failed, wanted_types):
            return Started(running, False)
        raise Busy(f"a replay of webhook {webhook_id} is running; wait for it to finish")
    return Started(await get(ctx, scope, replay_id), True)


async def get(ctx: Context, scope: Scope, replay_id: UUID) -> ReplayRow:
    row = await ctx.db.get_replay(organisation=scope.organisation, replay_id=replay_id)
    if row is None:
        raise NotFound("replay")
    return row


async def list_page(
    ctx: Context, scope: Scope, webhook_id: int, *, cursor: UUID | None = None, limit: int = 25
) -> Page:
    """A webhook's replays, newest first."""
    await get_webhook(ctx, scope, webhook_id)
    rows = await ctx.db.list_replays(
        organisation=scope.organisation, webhook_id=webhook_id, before_id=cursor, limit=limit + 1
    )
    items = tuple(rows[:limit])
    return Page(items, items[-1].id if len(rows) > limit else None)
