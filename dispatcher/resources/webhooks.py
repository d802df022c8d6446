"""Webhooks: create, read, list, change URL or state, pause, delete, test. Each operation once, for every door.

The state machine is SQL's (the queries named in dispatcher.db.queries); these are the operators' transitions,
each logged as one line per state change. What results do to a webhook is the engine's (dispatcher.health).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from secrets import token_urlsafe
from typing import Any

import structlog

from dispatcher.db.rows import StateChange, TaskRow, WebhookDetailRow, WebhookRow
from dispatcher.health import Change, log_change
from dispatcher.netguard import NetworkGuard
from dispatcher.resources import tasks
from dispatcher.resources.errors import Invalid, NotFound, RateLimited
from dispatcher.resources.scope import Context, Scope
from dispatcher.resources.secrets import seal
from dispatcher.signing import SECRET_PREFIX, generate_secret
from dispatcher.vocab import Role, WebhookFormat, WebhookState

log = structlog.get_logger("dispatcher.webhooks")

MAX_URL_LENGTH = 2048

# Tests per token and window (each sends a request to someone's server): 30 a minute.
TEST_LIMIT = 30
TEST_WINDOW_SECONDS = 60


@dataclass(frozen=True, slots=True)
class CreatedWebhook:
    """A new webhook, its secret (shown this once) and its first test's task (None when it was made disabled)."""

    webhook: WebhookRow
    secret: str
    test: TaskRow | None
    detail: WebhookDetailRow


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
    description: str = "",
    headers: Mapping[str, str] | None = None,
    rate_limit: float | None = None,
    mail_exceptions_to: str | None = None,
    source: str | None = None,
    source_id: str | None = None,
    policy_id: int | None = None,
    disabled: bool = False,
    verify: bool = False,
    secret: str | None = None,
) -> CreatedWebhook:
    """A new webhook with a fresh secret (or `secret`, one the operator made, as Svix allows): in state new with a
    test queued, or deactivated and untested when made `disabled` (4me's way to try a webhook before enabling it)."""
    checked = check_url(ctx, url)
    patterns = check_patterns(events, set(await ctx.db.event_type_names())) if events else []
    checked_headers = json.dumps(check_headers(headers or {}))
    check_text(description, "description", MAX_DESCRIPTION)
    check_text(source, "source", MAX_SOURCE)
    check_text(source_id, "source_id", MAX_SOURCE_ID)
    check_text(name, "name", MAX_NAME)
    check_rate_limit(rate_limit)
    mail = check_mail(mail_exceptions_to)
    await check_policy(ctx, scope, policy_id)
    secret = check_secret(secret) if secret is not None else generate_secret()
    detail = await ctx.db.create_webhook_full(
        organisation=scope.organisation, url=checked, events=patterns, format=format, name=name,
        secret=seal(ctx, secret), description=description, headers=checked_headers, rate_limit=rate_limit,
        mail_exceptions_to=mail,
        source=source, source_id=source_id, policy_id=policy_id,
        state=WebhookState.DEACTIVATED if disabled else WebhookState.NEW, verify=verify,
    )  # fmt: skip
    test = None
    if not disabled and not await start_verification(ctx, scope, detail.id):
        test = await tasks.request_test(ctx, scope, detail.id)
    if test is None:
        detail = await get_detail(ctx, scope, detail.id)
    return CreatedWebhook(detail.summary(), secret, test, detail)


def check_secret(secret: str, field: str = "secret") -> str:
    """A secret given by the operator: `whsec_` and the base64 of 24 to 64 random bytes (Standard Webhooks)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True) if secret.startswith(SECRET_PREFIX) else b""
    except (binascii.Error, ValueError):
        key = b""
    if not 24 <= len(key) <= 64:
        raise Invalid(field, f"{field} must be whsec_ followed by the base64 of 24 to 64 random bytes")
    return secret


# ---- the fields beyond the URL (4me's dialect sets them) -------------------------------------------------

MAX_NAME = 255
MAX_DESCRIPTION = 64 * 1024
MAX_SOURCE = 30
MAX_SOURCE_ID = 128
MAX_HEADERS = 20
MAX_HEADER_VALUE = 4096
MAX_MAIL = 4096

# Headers the daemon sets itself (or that would corrupt the request), refused whatever their case; and every name
# beginning with webhook- (the Standard Webhooks headers).
RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "content-type", "user-agent", "ricloud-signature",
     "x-4me-delivery", "connection"}
)  # fmt: skip
RESERVED_HEADER_PREFIX = "webhook-"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_MAIL = re.compile(rf"^[^@\s,;<>()\[\]\\\"]+@{_LABEL}(?:\.{_LABEL})+$")


def check_text(value: str | None, field: str, most: int) -> str | None:
    """Text of at most `most` characters (None stays None)."""
    if value is not None and len(value) > most:
        raise Invalid(field, f"{field} is longer than {most} characters")
    return value


def check_headers(headers: Mapping[str, str], field: str = "headers") -> dict[str, str]:
    """Static request headers: token names, printable values without line breaks, none the daemon sets itself."""
    if len(headers) > MAX_HEADERS:
        raise Invalid(field, f"{field}: at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, value in headers.items():
        lowered = name.lower()
        if not _HEADER_NAME.match(name):
            raise Invalid(field, f"{field}: {name!r} is not a valid header name")
        if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_HEADER_PREFIX):
            raise Invalid(field, f"{field}: {name} is set by dispatcher itself and cannot be given")
        if lowered in seen:
            raise Invalid(field, f"{field}: {name} is given twice")
        seen.add(lowered)
        if not isinstance(value, str) or len(value) > MAX_HEADER_VALUE:
            raise Invalid(field, f"{field}: the value of {name} must be text of at most {MAX_HEADER_VALUE} characters")
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
            raise Invalid(field, f"{field}: the value of {name} has a control character (line breaks are refused)")
    return dict(headers)


def check_mail(value: str | None, field: str = "mail_exceptions_to") -> str | None:
    """A comma-separated list of mail addresses, each checked; blank is none."""
    if value is None or not value.strip():
        return None
    if len(value) > MAX_MAIL:
        raise Invalid(field, f"{field} is longer than {MAX_MAIL} characters")
    addresses = [part.strip() for part in value.split(",")]
    for address in addresses:
        if not _MAIL.match(address):
            raise Invalid(field, f"{field}: {address!r} is not a mail address (give them separated by commas)")
    return ",".join(addresses)


def check_rate_limit(value: float | None, field: str = "rate_limit") -> float | None:
    """Requests per second, above 0 (None: no limit)."""
    if value is not None and not 0 < value <= 1_000_000:
        raise Invalid(field, f"{field} must be a number of requests per second above 0")
    return value


async def check_policy(ctx: Context, scope: Scope, policy_id: int | None, field: str = "policy_id") -> int | None:
    """A webhook policy of the caller's organisation (None: none)."""
    if policy_id is not None and await ctx.db.get_policy(policy_id=policy_id, organisation=scope.organisation) is None:
        raise Invalid(field, f"{field}: no such webhook policy")
    return policy_id


async def get_detail(ctx: Context, scope: Scope, webhook_id: int) -> WebhookDetailRow:
    """A live webhook of the caller's organisation with every field."""
    webhook = await ctx.db.get_webhook_detail(webhook_id=webhook_id, organisation=scope.organisation)
    if webhook is None:
        raise NotFound("webhook")
    return webhook


@dataclass(frozen=True, slots=True)
class DetailPage:
    """One page of webhooks, and how many there are in all."""

    items: tuple[WebhookDetailRow, ...]
    total: int


async def list_numbered(ctx: Context, scope: Scope, *, disabled: bool | None, page: int, per_page: int) -> DetailPage:
    """Page `page` (from 1) of `per_page` webhooks, newest first: all, or only disabled (invalid or deactivated)
    ones, or only enabled ones."""
    total = await ctx.db.count_webhook_details(organisation=scope.organisation, disabled=disabled)
    rows = await ctx.db.list_webhook_details(
        organisation=scope.organisation, disabled=disabled, limit=per_page, offset=(page - 1) * per_page
    )
    return DetailPage(tuple(rows), total)


def is_disabled(state: WebhookState) -> bool:
    """4me's `disabled`: the webhook receives nothing (deactivated) or its deliveries are held (invalid)."""
    return state in (WebhookState.INVALID, WebhookState.DEACTIVATED)


async def modify(
    ctx: Context,
    scope: Scope,
    webhook_id: int,
    *,
    url: object = None,
    disabled: bool | None = None,
    fields: Mapping[str, Any],
) -> WebhookDetailRow:
    """Change a webhook: the `fields` given (name, description, events, format, headers, rate_limit,
    mail_exceptions_to, source, source_id, policy_id), then its URL (state new and a test, as set_url), then
    `disabled`: true deactivates it; false re-enables a disabled one (state new and a test) and changes nothing on
    an enabled one. Everything is checked before anything changes."""
    current = await get_detail(ctx, scope, webhook_id)
    checked: dict[str, Any] = {}
    for name, value in fields.items():
        match name:
            case "name":
                checked[name] = check_text(value, "name", MAX_NAME) or ""
            case "description":
                checked[name] = check_text(value, "description", MAX_DESCRIPTION) or ""
            case "events":
                checked[name] = check_patterns(value, set(await ctx.db.event_type_names()))
            case "format":
                checked[name] = WebhookFormat(value)
            case "headers":
                checked[name] = json.dumps(check_headers(value or {}))
            case "rate_limit":
                checked[name] = check_rate_limit(value)
            case "mail_exceptions_to":
                checked[name] = check_mail(value)
            case "source":
                checked[name] = check_text(value, "source", MAX_SOURCE)
            case "source_id":
                checked[name] = check_text(value, "source_id", MAX_SOURCE_ID)
            case "policy_id":
                checked[name] = await check_policy(ctx, scope, value)
            case "verify":
                checked[name] = bool(value)
            case _:
                raise Invalid(name, f"{name} cannot be changed")
    new_url = check_url(ctx, url) if url is not None else None
    if checked:
        row = await ctx.db.update_webhook_fields(
            webhook_id=webhook_id, organisation=scope.organisation, fields=list(checked), **checked
        )
        if row is None:
            raise NotFound("webhook")
    if new_url is not None and new_url != current.url:
        await set_url(ctx, scope, webhook_id, new_url)
    if disabled is True and current.state != WebhookState.DEACTIVATED:
        await deactivate(ctx, scope, webhook_id)
    elif disabled is False and is_disabled((await get_detail(ctx, scope, webhook_id)).state):
        await renew(ctx, scope, webhook_id)
    elif current.verification_pending and "verify" in checked:
        # verify: true again sends a new callback (the old code stops working); false ends the wait with a test.
        restarted = checked["verify"] and await start_verification(ctx, scope, webhook_id, force=True)
        if not restarted:
            await tasks.request_test(ctx, scope, webhook_id)
    return await get_detail(ctx, scope, webhook_id)


# ---- ownership verification (4me's webhook.verify) -------------------------------------------------------

# How long a verification callback works.
VERIFY_SECONDS = 24 * 3600
NOT_VERIFIED = (
    "the webhook's ownership is not verified yet: its receiver must fetch the callback URL sent in the "
    "webhook.verify event (PATCH verify: true sends a new one)"
)


def _code_digest(code: str) -> bytes:
    return hashlib.sha256(code.encode("utf-8")).digest()


async def start_verification(ctx: Context, scope: Scope, webhook_id: int, *, force: bool = False) -> bool:
    """When the webhook has `verify` set (or `force`), send it a webhook.verify event whose payload's `callback` is a
    one-time URL on the API ([api] public_url), and hold its deliveries until that URL is fetched. Whether it was
    sent; the webhook is then tested only once verified."""
    code = token_urlsafe(32)
    expires = datetime.now(UTC) + timedelta(seconds=VERIFY_SECONDS)
    base = ctx.config.api.public_url.rstrip("/")
    callback = f"{base}/webhooks/{webhook_id}/verify?code={code}&expires_at={int(expires.timestamp())}"
    event_id = await ctx.db.start_verification(
        webhook_id=webhook_id, organisation=scope.organisation, code_digest=_code_digest(code), expires_at=expires,
        payload=json.dumps({"callback": callback}), force=force,
    )  # fmt: skip
    if event_id is None:
        return False
    await ctx.db.supersede_tests(webhook_id=webhook_id)
    log.info("webhook.verification_sent", webhook_id=webhook_id, event_id=str(event_id))
    return True


async def confirm_verification(ctx: Context, webhook_id: int, code: str) -> None:
    """The callback was fetched: with the webhook's current, unexpired code it is verified (the code is used up), its
    held deliveries are released by maintenance and it is tested as usual. A wrong, used or expired code: not
    found."""
    organisation = await ctx.db.confirm_verification(webhook_id=webhook_id, code_digest=_code_digest(code))
    if organisation is None:
        raise NotFound("verification (wrong, used or expired code)")
    log.info("webhook.verified", webhook_id=webhook_id, organisation=organisation)
    await tasks.request_test(ctx, Scope(organisation, Role.ADMIN), webhook_id)


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
    if change.new_state == WebhookState.NEW and not await start_verification(ctx, scope, webhook_id):
        await tasks.request_test(ctx, scope, webhook_id)
    return change


async def renew(ctx: Context, scope: Scope, webhook_id: int) -> Change:
    """Operator re-enable (or a request for state new): state new and a test of the new version."""
    changed = await ctx.db.renew_webhook(webhook_id=webhook_id, organisation=scope.organisation)
    change = _logged(webhook_id, changed, "set to new by an operator")
    await ctx.db.supersede_tests(webhook_id=webhook_id)
    if not await start_verification(ctx, scope, webhook_id):
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


@dataclass(frozen=True, slots=True)
class Rotated:
    """A webhook's new secret (shown this once) and when the secrets it replaced stop signing."""

    secret: str
    previous_expires_at: datetime


# A rotation's overlap: the old secret signs on for at most a week (default a day).
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
DEFAULT_OVERLAP_SECONDS = 24 * 3600


async def rotate_secret(
    ctx: Context, scope: Scope, webhook_id: int, *, overlap_seconds: int = DEFAULT_OVERLAP_SECONDS
) -> Rotated:
    """A new current secret; the old ones keep signing (a second signature) for `overlap_seconds`, then are pruned."""
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise Invalid("overlap_seconds", f"overlap_seconds must be between 0 and {MAX_OVERLAP_SECONDS} (7 days)")
    secret = generate_secret()
    stored = seal(ctx, secret)
    expires = await ctx.db.rotate_secret(
        webhook_id=webhook_id, organisation=scope.organisation, secret=stored, overlap_seconds=overlap_seconds
    )
    if expires is None:
        raise NotFound("webhook")
    log.info("webhook.secret_rotated", webhook_id=webhook_id, overlap_seconds=overlap_seconds)
    return Rotated(secret, expires)


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
    """Queue a test (or return the pending one), rate-limited per token; wait up to `wait` s for its result. A
    webhook awaiting ownership verification is tested only once verified."""
    detail = await ctx.db.get_webhook_detail(webhook_id=webhook_id, organisation=scope.organisation)
    if detail is not None and detail.verification_pending:
        raise Invalid("verify", NOT_VERIFIED)
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
