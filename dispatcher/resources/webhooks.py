"""Webhooks: create, read, list, change URL or state, pause, delete, test. Each operation once, for every door.

The state machine is SQL's (the queries named in dispatcher.db.queries); these are the operators' transitions,
each logged as one line per state change. What results do to a webhook is the engine's (dispatcher.health).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog

from dispatcher.db.rows import StateChange, TaskRow, WebhookRow
from dispatcher.health import Change, log_change
from dispatcher.netguard import NetworkGuard
from dispatcher.resources import tasks
from dispatcher.resources.errors import Invalid, NotFound, RateLimited
from dispatcher.resources.scope import Context, Scope
from dispatcher.signing import generate_secret
from dispatcher.vocab import WebhookFormat, WebhookState

log = structlog.get_logger("dispatcher.webhooks")

MAX_URL_LENGTH = 2048

# Tests per token and window (each sends a request to someone's server): 30 a minute.
TEST_LIMIT = 30
TEST_WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class CreatedWebhook:
    """A new webhook, its secret (shown this once) and its first test's task."""

    webhook: WebhookRow
    secret: str
    test: TaskRow


@dataclass(frozen=True, slots=True)
class Page:
    """Some webhooks, and whether more follow."""

    items: tuple[WebhookRow, ...]
    has_more: bool


def check_url(ctx: Context, value: object, field: str = "url") -> str:
    """A URL the daemon may deliver to: http(s), a host, not refused by the SSRF guard, https when required."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(field, f"{field} is required: the address of your webhook receiver")
    url = value.strip()
    if len(url) > MAX_URL_LENGTH:
        raise Invalid(field, f"{field} is longer than {MAX_URL_LENGTH} characters")
    try:
        NetworkGuard(ctx.config.delivery.allow_networks).check_url(url)
    except Exception as exc:
        raise Invalid(field, f"{field}: {exc}") from None
    if ctx.config.delivery.require_https and not url.lower().startswith("https://"):
        raise Invalid(field, f"{field} must use https ([delivery] require_https is set)")
    return url


def is_pattern(value: str) -> bool:
    """`*` or a prefix pattern such as `request.*`."""
    return value == "*" or (value.endswith(".*") and bool(value[:-2]) and "*" not in value[:-2])


def check_patterns(patterns: Sequence[str], catalogue: set[str], field: str = "events") -> list[str]:
    """Subscription patterns: a catalogue type, a prefix (`request.*`) or `*`; duplicates dropped, order kept."""
    for pattern in patterns:
        if not is_pattern(pattern) and pattern not in catalogue:
            raise Invalid(field, f"{pattern!r} is not an event type in the catalogue nor a pattern like 'request.*'")
    return list(dict.fromkeys(patterns))


async def create(
    ctx: Context,
    scope: Scope,
    *,
    url: object,
    events: Sequence[str] = (),
    format: WebhookFormat = WebhookFormat.STANDARD,
    name: str = "",
) -> CreatedWebhook:
    """A new webhook in state new, with a fresh secret, and a test queued for it."""
    checked = check_url(ctx, url)
    patterns = check_patterns(events, set(await ctx.db.event_type_names())) if events else []
    secret = generate_secret()
    webhook = await ctx.db.create_webhook(
        organisation=scope.organisation, url=checked, events=patterns, format=format, name=name, secret=secret
    )
    test = await tasks.request_test(ctx, scope, webhook.id)
    return CreatedWebhook(webhook, secret, test)


async def get(ctx: Context, scope: Scope, webhook_id: int) -> WebhookRow:
    """A live webhook of the caller's organisation."""
    webhook = await ctx.db.get_webhook(webhook_id=webhook_id, organisation=scope.organisation)
    if webhook is None:
        raise NotFound("webhook")
    return webhook


async def find(ctx: Context, webhook_id: int) -> WebhookRow:
    """A live webhook of any organisation (the CLI, which works on the whole database)."""
    webhook = await ctx.db.get_webhook(webhook_id=webhook_id, organisation=None)
    if webhook is None:
        raise NotFound("webhook")
    return webhook


async def list_all(ctx: Context, organisation: str | None) -> list[WebhookRow]:
    """Every live webhook of `organisation` (None: of all), oldest first."""
    return await ctx.db.list_webhooks(organisation=organisation)


async def list_page(
    ctx: Context,
    scope: Scope,
    *,
    states: Sequence[WebhookState] | None = None,
    created_gt: datetime | None = None,
    created_gte: datetime | None = None,
    created_lt: datetime | None = None,
    created_lte: datetime | None = None,
    starting_after: int | None = None,
    limit: int = 20,
) -> Page:
    """Newest first; without `states`, deactivated webhooks are left out."""
    rows = await ctx.db.list_webhook_configs(
        organisation=scope.organisation, states=states, created_gt=created_gt, created_gte=created_gte,
        created_lt=created_lt, created_lte=created_lte, before_id=starting_after, limit=limit + 1,
    )  # fmt: skip
    return Page(tuple(rows[:limit]), len(rows) > limit)


def _logged(webhook_id: int, change: StateChange | None, reason: str) -> Change:
    if change is None:
        raise NotFound("webhook")
    logged = Change(webhook_id, change.old_state, change.new_state, reason)
    log_change(logged)
    return logged


async def set_url(ctx: Context, scope: Scope, webhook_id: int, url: object) -> Change:
    """A new URL: state new and a test of the new version (a deactivated webhook stays deactivated, untested)."""
    checked = check_url(ctx, url)
    changed = await ctx.db.set_webhook_url(webhook_id=webhook_id, organisation=scope.organisation, url=checked)
    change = _logged(webhook_id, changed, "url changed")
    await ctx.db.supersede_tests(webhook_id=webhook_id)
    if change.new_state == WebhookState.NEW:
        await tasks.request_test(ctx, scope, webhook_id)
    return change


async def renew(ctx: Context, scope: Scope, webhook_id: int) -> Change:
    """Operator re-enable (or a request for state new): state new and a test of the new version."""
    changed = await ctx.db.renew_webhook(webhook_id=webhook_id, organisation=scope.organisation)
    change = _logged(webhook_id, changed, "set to new by an operator")
    await ctx.db.supersede_tests(webhook_id=webhook_id)
    await tasks.request_test(ctx, scope, webhook_id)
    return change


async def deactivate(ctx: Context, scope: Scope, webhook_id: int) -> Change:
    """Nothing more is sent; pending and held deliveries are cancelled, as is a pending test's task (a new test
    may be asked for: tests of deactivated webhooks are sent and change nothing)."""
    changed = await ctx.db.deactivate_webhook(webhook_id=webhook_id, organisation=scope.organisation)
    change = _logged(webhook_id, changed, "deactivated by an operator")
    await ctx.db.supersede_tests(webhook_id=webhook_id)
    return change


async def update(
    ctx: Context, scope: Scope, webhook_id: int, *, url: str | None = None, state: WebhookState | None = None
) -> WebhookRow:
    """ricloud's update: a new URL (None: unchanged) and/or state `new` (retest) or `deactivated`."""
    if state is not None and state not in (WebhookState.NEW, WebhookState.DEACTIVATED):
        raise Invalid("state", "state can only be set to new (retest) or deactivated")
    if url is not None:
        await set_url(ctx, scope, webhook_id, url)
    if state == WebhookState.DEACTIVATED:
        await deactivate(ctx, scope, webhook_id)
    elif state == WebhookState.NEW:
        await renew(ctx, scope, webhook_id)
    return await get(ctx, scope, webhook_id)


async def set_paused(ctx: Context, scope: Scope, webhook_id: int, paused: bool) -> WebhookState:
    """Pause (deliveries held, tests still sent) or resume (held deliveries released by maintenance)."""
    row = await ctx.db.set_paused(webhook_id=webhook_id, organisation=scope.organisation, paused=paused)
    if row is None:
        raise NotFound("webhook")
    log.info("webhook.paused" if paused else "webhook.resumed", webhook_id=webhook_id, state=row.state)
    return row.state


async def delete(ctx: Context, scope: Scope, webhook_id: int) -> WebhookRow:
    """Pending and held deliveries cancelled, attempts kept, key bindings and default cleared; returns the
    webhook as it was."""
    webhook = await get(ctx, scope, webhook_id)
    if not await ctx.db.delete_webhook(webhook_id=webhook_id, organisation=scope.organisation):
        raise NotFound("webhook")
    await ctx.db.supersede_tests(webhook_id=webhook_id)
    log.info("webhook.deleted", webhook_id=webhook_id, organisation=scope.organisation)
    return webhook


async def test(ctx: Context, scope: Scope, webhook_id: int, *, wait: float = 0.0) -> TaskRow:
    """Queue a test (or return the pending one), rate-limited per token; wait up to `wait` s for its result."""
    if scope.token_id is not None:
        hit = await ctx.db.rate_limit_hit(
            token_id=scope.token_id, action="test", limit=TEST_LIMIT, window_seconds=TEST_WINDOW_SECONDS
        )
        if not hit.allowed:
            retry = max(1, hit.retry_after)
            raise RateLimited(
                f"at most {TEST_LIMIT} test requests per {TEST_WINDOW_SECONDS} s per token; try again in {retry} s",
                retry_after=retry,
            )
    task = await tasks.request_test(ctx, scope, webhook_id)
    if wait > 0:
        task = await tasks.wait(ctx, scope, task.id, wait) or task
    return task
