"""The 4me dialect: 4me's (R-Service's) Webhooks API and its webhook policies, as an integrator who knows 4me sends.

Routes: /webhooks[/enabled|/disabled], /webhooks/{id}, /webhooks/{id}/test, /webhooks/{id}/verify (the public
callback of ownership verification), /webhook_policies[/enabled|/disabled], /webhook_policies/{id}.
Administrators only, as 4me. Lists are bare JSON arrays paged with `per_page` (default 25, at most 100) and `page`,
with a `Link` header (first, prev, next, last) and `X-Pagination-*` headers. Errors are {"error": {"code",
"message", "field"}}; a value 4me would not accept is a 422 naming its field (4me's names: `uri`, `sourceID`,
`webhook_policy`). Each handler maps the request to one operation of dispatcher.resources.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from dispatcher.api.http import body_id, error_response, from_resource, path_id
from dispatcher.api.models import IdRef, Strict, Timestamp
from dispatcher.api.routes import ADMIN, CONTEXT, Call, Reply, Route
from dispatcher.db.rows import PolicyRow, WebhookDetailRow
from dispatcher.envelope import rfc3339
from dispatcher.resources import Invalid, ResourceError, policies, webhooks
from dispatcher.sender import mask_url
from dispatcher.vocab import WebhookFormat, WebhookState

# ---- shapes ---------------------------------------------------------------------------------------------

EventName = Annotated[str, Field(max_length=100, examples=["request.create"])]


class WebhookCreate(Strict):
    """POST /webhooks. `event` (one catalogue type) or `events` (types or patterns such as `request.*`)."""

    event: EventName | None = None
    events: list[EventName] | None = None
    uri: str | None = Field(None, description="where the webhook's requests are POSTed")
    name: str | None = Field(None, description="defaults to the event")
    description: str | None = None
    disabled: bool = Field(False, description="true: made deactivated and not tested, until enabled")
    mail_exceptions_to: str | None = Field(None, description="comma-separated mail addresses")
    webhook_policy: IdRef = Field(None, description="a webhook policy's id: its requests are JWT bodies")
    source: str | None = None
    sourceID: str | None = None
    format: WebhookFormat = WebhookFormat.FOURME
    headers: dict[str, str] | None = Field(None, description="static request headers, e.g. Authorization")
    rate_limit: float | None = Field(None, description="requests per second")
    verify: bool = Field(False, description="ownership verification: webhook.verify with a one-time callback first")


class WebhookUpdate(WebhookCreate):
    """PATCH /webhooks/{id}: the fields given change; `disabled: false` re-enables (state new, and a test)."""

    disabled: bool | None = None  # type: ignore[assignment]
    format: WebhookFormat | None = None  # type: ignore[assignment]
    verify: bool | None = None  # type: ignore[assignment]


class Webhook(BaseModel):
    """A webhook as 4me shows it, with dispatcher's state, paused flag, format, headers and rate limit."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    event: str | None = Field(description="the single exact event, else null")
    events: list[str]
    uri: str = Field(description="credentials in the URL are masked")
    disabled: bool = Field(description="true when the webhook is invalid or deactivated")
    state: WebhookState
    paused: bool
    last_error: str | None
    description: str
    mail_exceptions_to: str | None
    webhook_policy: int | None
    source: str | None
    sourceID: str | None
    format: WebhookFormat
    headers: dict[str, str] = Field(description="header names; values masked")
    rate_limit: float | None
    concurrency_limit: int | None = Field(
        None, description="requests in flight its receiver has shown it takes (429/503), when below the configured cap"
    )
    throttled_until: Timestamp | None = Field(None, description="no request before then (its receiver's Retry-After)")
    verify: bool = Field(description="new and re-pointed webhooks must fetch a webhook.verify callback first")
    verification_pending: bool = Field(description="waiting for the callback: stays new, deliveries held")
    created_at: Timestamp
    updated_at: Timestamp
    secret: str | None = Field(None, description="only in the create response")


class WebhookList(RootModel[list[Webhook]]):
    """A page of webhooks, newest first (Link and X-Pagination-* headers)."""


class PageQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    per_page: int = Field(25, ge=1, le=100)
    page: int = Field(1, ge=1, le=1_000_000)


class PolicyCreate(Strict):
    name: str = ""
    disabled: bool = False
    jwt_alg: Literal["rs256", "es256", "hs256"] = "rs256"
    jwt_audience: str | None = None
    jwt_claim_expires_in: int | None = Field(None, description="minutes; tokens without exp when absent")


class PolicyUpdate(Strict):
    name: str | None = None
    disabled: bool | None = None
    jwt_audience: str | None = None
    jwt_claim_expires_in: int | None = None
    jwt_alg: str | None = Field(None, description="cannot change: make a new policy")


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    disabled: bool
    jwt_alg: str
    jwt_audience: str | None
    jwt_claim_expires_in: int | None
    created_at: Timestamp
    updated_at: Timestamp
    public_key_pem: str | None = Field(None, description="rs256/es256: only in the create response")
    shared_key: str | None = Field(None, description="hs256: only in the create response")


class PolicyList(RootModel[list[Policy]]):
    """A page of webhook policies, newest first (Link and X-Pagination-* headers)."""


# ---- resources ------------------------------------------------------------------------------------------

# The operations' field names and 4me's.
_FIELDS = {"url": "uri", "source_id": "sourceID", "policy_id": "webhook_policy"}


def _renamed(error: Invalid, given_event: bool) -> Invalid:
    """An operation's Invalid naming 4me's field."""
    field = error.field or "body"
    new = "event" if field == "events" and given_event else _FIELDS.get(field, field)
    message = error.message
    if message.startswith(field):
        message = new + message[len(field) :]
    return Invalid(new, message)


def _single_event(events: list[str]) -> str | None:
    return events[0] if len(events) == 1 and not webhooks.is_pattern(events[0]) else None


def webhook_json(row: WebhookDetailRow, secret: str | None = None) -> Webhook:
    """A webhook as 4me shows it; the secret only in the create response, header values masked."""
    shown = Webhook(
        id=row.id,
        name=row.name or _single_event(row.events) or "",
        event=_single_event(row.events),
        events=list(row.events),
        uri=mask_url(row.url),
        disabled=webhooks.is_disabled(row.state),
        state=row.state,
        paused=row.paused,
        last_error=row.last_error,
        description=row.description,
        mail_exceptions_to=row.mail_exceptions_to,
        webhook_policy=row.policy_id,
        source=row.source,
        sourceID=row.source_id,
        format=row.format,
        headers={name: "***" for name in json.loads(row.headers)},
        rate_limit=row.rate_limit,
        concurrency_limit=row.concurrency_limit,
        throttled_until=rfc3339(row.throttled_until) if row.throttled_until else None,
        verify=row.verify,
        verification_pending=row.verification_pending,
        created_at=rfc3339(row.created_at),
        updated_at=rfc3339(row.updated_at),
    )
    return shown if secret is None else shown.model_copy(update={"secret": secret})


def policy_json(row: PolicyRow, shown_key: str | None = None) -> Policy:
    """A policy; its public key (or hs256 shared key) only in the create response."""
    policy = Policy(
        id=row.id,
        name=row.name,
        disabled=row.disabled,
        jwt_alg=row.jwt_alg,
        jwt_audience=row.jwt_audience,
        jwt_claim_expires_in=row.jwt_claim_expires_in,
        created_at=rfc3339(row.created_at),
        updated_at=rfc3339(row.updated_at),
    )
    if shown_key is None:
        return policy
    return policy.model_copy(update={"shared_key" if row.jwt_alg == "hs256" else "public_key_pem": shown_key})


def paging_headers(call: Call, query: PageQuery, total: int) -> dict[str, str]:
    """4me's paging headers: Link (RFC 8288: first, prev, next, last) and X-Pagination-*."""
    pages = max(1, math.ceil(total / query.per_page))
    url = call.request.url

    def link(page: int, rel: str) -> str:
        target = url.update_query({"page": str(page), "per_page": str(query.per_page)})
        return f'<{target}>; rel="{rel}"'

    links = [link(1, "first")]
    if query.page > 1:
        links.append(link(min(query.page - 1, pages), "prev"))
    if query.page < pages:
        links.append(link(query.page + 1, "next"))
    links.append(link(pages, "last"))
    return {
        "Link": ", ".join(links),
        "X-Pagination-Per-Page": str(query.per_page),
        "X-Pagination-Current-Page": str(query.page),
        "X-Pagination-Total-Pages": str(pages),
        "X-Pagination-Total-Entries": str(total),
    }


# ---- /webhooks ------------------------------------------------------------------------------------------


def _patterns(body: WebhookCreate) -> list[str] | None:
    """The subscription from `event` or `events` (not both); None when neither is given."""
    given = body.model_fields_set
    has_event = "event" in given and body.event is not None  # a null event is no event
    if has_event and "events" in given:
        raise Invalid("events", "give event or events, not both")
    if "event" in given and ("events" not in given or has_event):
        if body.event is None or webhooks.is_pattern(body.event):
            raise Invalid("event", "event must be one event type of the catalogue (events takes patterns)")
        return [body.event]
    if "events" in given:
        return list(body.events or [])
    return None


async def _list_webhooks(call: Call, disabled: bool | None) -> Reply:
    query: PageQuery = call.query
    page = await webhooks.list_numbered(
        call.ctx, call.scope, disabled=disabled, page=query.page, per_page=query.per_page
    )
    body = WebhookList([webhook_json(row) for row in page.items])
    return Reply(body, headers=paging_headers(call, query, page.total))


async def list_webhooks(call: Call) -> Reply:
    return await _list_webhooks(call, None)


async def list_enabled_webhooks(call: Call) -> Reply:
    return await _list_webhooks(call, False)


async def list_disabled_webhooks(call: Call) -> Reply:
    return await _list_webhooks(call, True)


async def get_webhook(call: Call) -> Reply:
    return Reply(webhook_json(await webhooks.get_detail(call.ctx, call.scope, call.id("webhook"))))


async def create_webhook(call: Call) -> Reply:
    body: WebhookCreate = call.body
    patterns = _patterns(body)
    if patterns is None:
        raise Invalid("event", "event is required: the event type that triggers this webhook")
    try:
        policy_id = body_id(body.webhook_policy, "webhook_policy")
        made = await webhooks.create(
            call.ctx, call.scope, url=body.uri, events=patterns, format=body.format,
            name=body.name or (patterns[0] if len(patterns) == 1 else ", ".join(patterns)[:255]),
            description=body.description or "", headers=body.headers, rate_limit=body.rate_limit,
            mail_exceptions_to=body.mail_exceptions_to, source=body.source, source_id=body.sourceID,
            policy_id=policy_id, disabled=body.disabled, verify=body.verify,
        )  # fmt: skip
    except Invalid as exc:
        raise _renamed(exc, body.event is not None) from None
    return Reply(webhook_json(made.detail, made.secret))


async def update_webhook(call: Call) -> Reply:
    webhook_id = call.id("webhook")
    body: WebhookUpdate = call.body
    given = body.model_fields_set
    fields: dict[str, Any] = {}
    patterns = _patterns(body)
    if patterns is not None:
        fields["events"] = patterns
    try:
        for name in ("name", "description", "headers", "rate_limit", "mail_exceptions_to", "source"):
            if name in given:
                fields[name] = getattr(body, name)
        if "sourceID" in given:
            fields["source_id"] = body.sourceID
        if "verify" in given:
            if body.verify is None:
                raise Invalid("verify", "verify must be true or false")
            fields["verify"] = body.verify
        if "format" in given:
            if body.format is None:
                raise Invalid("format", "format cannot be null")
            fields["format"] = body.format
        if "webhook_policy" in given:
            fields["policy_id"] = body_id(body.webhook_policy, "webhook_policy")
        if "uri" in given and body.uri is None:
            raise Invalid("uri", "uri cannot be null")
        row = await webhooks.modify(
            call.ctx, call.scope, webhook_id, url=body.uri, disabled=body.disabled, fields=fields
        )
    except Invalid as exc:
        raise _renamed(exc, body.event is not None) from None
    return Reply(webhook_json(row))


async def delete_webhook(call: Call) -> Reply:
    await webhooks.delete(call.ctx, call.scope, call.id("webhook"))
    return Reply(None, 204)


class Verified(BaseModel):
    """The webhook's ownership is verified; it is tested next."""

    model_config = ConfigDict(frozen=True)

    verified: Literal[True]
    webhook_id: int


async def verify_webhook(request: web.Request) -> web.StreamResponse:
    """The callback of a webhook.verify event, fetched by the receiver (no token: the one-time code is the proof)."""
    ctx = request.app[CONTEXT]
    try:
        webhook_id = path_id(request, "verification")
        await webhooks.confirm_verification(ctx, webhook_id, request.query.get("code", ""))
    except ResourceError as exc:
        return error_response(from_resource(exc, "4me"), "4me")
    return web.json_response(Verified(verified=True, webhook_id=webhook_id).model_dump(mode="json"))


async def test_webhook(call: Call) -> Reply:
    await webhooks.test(call.ctx, call.scope, call.id("webhook"))
    return Reply(None, 204)


# ---- /webhook_policies ----------------------------------------------------------------------------------


async def _list_policies(call: Call, disabled: bool | None) -> Reply:
    query: PageQuery = call.query
    page = await policies.list_numbered(
        call.ctx, call.scope, disabled=disabled, page=query.page, per_page=query.per_page
    )
    return Reply(PolicyList([policy_json(r) for r in page.items]), headers=paging_headers(call, query, page.total))


async def list_policies(call: Call) -> Reply:
    return await _list_policies(call, None)


async def list_enabled_policies(call: Call) -> Reply:
    return await _list_policies(call, False)


async def list_disabled_policies(call: Call) -> Reply:
    return await _list_policies(call, True)


async def get_policy(call: Call) -> Reply:
    return Reply(policy_json(await policies.get(call.ctx, call.scope, call.id("webhook policy"))))


async def create_policy(call: Call) -> Reply:
    body: PolicyCreate = call.body
    made = await policies.create(
        call.ctx, call.scope, name=body.name, disabled=body.disabled, jwt_alg=body.jwt_alg,
        jwt_audience=body.jwt_audience, jwt_claim_expires_in=body.jwt_claim_expires_in,
    )  # fmt: skip
    return Reply(policy_json(made.policy, made.shown_key))


async def update_policy(call: Call) -> Reply:
    policy_id = call.id("webhook policy")
    body: PolicyUpdate = call.body
    fields = {name: getattr(body, name) for name in body.model_fields_set}
    if "disabled" in fields and fields["disabled"] is None:
        raise Invalid("disabled", "disabled must be true or false")
    return Reply(policy_json(await policies.modify(call.ctx, call.scope, policy_id, fields=fields)))


E404, E422, E429 = 404, 422, 429

ROUTES = (
    Route("GET", "/webhooks", "4me", "List webhooks, newest first (per_page, page; Link)", list_webhooks, ADMIN,
          query=PageQuery, response=WebhookList, errors=(E422,)),
    Route("GET", "/webhooks/enabled", "4me", "List enabled webhooks", list_enabled_webhooks, ADMIN,
          query=PageQuery, response=WebhookList, errors=(E422,)),
    Route("GET", "/webhooks/disabled", "4me", "List disabled (invalid or deactivated) webhooks",
          list_disabled_webhooks, ADMIN, query=PageQuery, response=WebhookList, errors=(E422,)),
    Route("POST", "/webhooks", "4me", "Create a webhook (disabled: true to test it before enabling)",
          create_webhook, ADMIN, body=WebhookCreate, response=Webhook, errors=(E422,)),
    Route("GET", "/webhooks/{id}", "4me", "Retrieve a webhook", get_webhook, ADMIN, response=Webhook,
          errors=(E404,)),
    Route("PATCH", "/webhooks/{id}", "4me", "Update a webhook", update_webhook, ADMIN, body=WebhookUpdate,
          response=Webhook, errors=(E404, E422)),
    Route("DELETE", "/webhooks/{id}", "4me", "Delete a webhook", delete_webhook, ADMIN, status=204,
          errors=(E404,)),
    Route("GET", "/webhooks/{id}/verify", "4me", "The webhook.verify callback (no token: the code is the proof)",
          raw=verify_webhook, response=Verified, errors=(E404,)),
    Route("POST", "/webhooks/{id}/test", "4me", "Send a test (object_id 12345), also to a disabled webhook",
          test_webhook, ADMIN, status=204, errors=(E404, E422, E429)),
    Route("GET", "/webhook_policies", "4me", "List webhook policies, newest first", list_policies, ADMIN,
          query=PageQuery, response=PolicyList, errors=(E422,)),
    Route("GET", "/webhook_policies/enabled", "4me", "List enabled webhook policies", list_enabled_policies,
          ADMIN, query=PageQuery, response=PolicyList, errors=(E422,)),
    Route("GET", "/webhook_policies/disabled", "4me", "List disabled webhook policies", list_disabled_policies,
          ADMIN, query=PageQuery, response=PolicyList, errors=(E422,)),
    Route("POST", "/webhook_policies", "4me", "Create a webhook policy (its public key is shown this once)",
          create_policy, ADMIN, body=PolicyCreate, response=Policy, errors=(E422,)),
    Route("GET", "/webhook_policies/{id}", "4me", "Retrieve a webhook policy", get_policy, ADMIN,
          response=Policy, errors=(E404,)),
    Route("PATCH", "/webhook_policies/{id}", "4me", "Update a webhook policy (disabled: holds its webhooks)",
          update_policy, ADMIN, body=PolicyUpdate, response=Policy, errors=(E404, E422)),
)  # fmt: skip
