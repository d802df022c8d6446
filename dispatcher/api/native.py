"""Native routes beyond both dialects: POST /events, the token routes, and recovery (the delivery log,
redeliver, replay, pause and resume, secret rotation, event types, organisation settings). Errors:
{"error": {"code", "message", "field"}}."""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

from dispatcher.api import models as m
from dispatcher.api import native_models as n
from dispatcher.api.http import body_id
from dispatcher.api.routes import ADMIN, READ, Call, Reply, Route
from dispatcher.db.rows import DeliveryLogRow, EventTypeRow, OrganisationRow, ReplayRow, TokenRow, WebhookRow
from dispatcher.envelope import rfc3339
from dispatcher.resources import (
    Invalid,
    deliveries,
    event_types,
    events,
    organisations,
    replays,
    status,
    tokens,
    webhooks,
)
from dispatcher.sender import mask_url
from dispatcher.vocab import DeliveryKind, DeliveryState, Role


async def post_event(call: Call) -> Reply:
    """Insert an event as a producer would; key_id is the caller's token, so its webhook binding applies."""
    body: m.EventCreate = call.body
    given = body.model_fields_set
    payload = body.payload if "payload" in given else body.data if "data" in given else {}
    key = body.idempotency_key if "idempotency_key" in given else call.request.headers.get("Idempotency-Key")
    event_id = await events.emit(
        call.ctx, call.scope, type=body.type, payload=payload, object_id=body.object_id, actor=body.actor,
        idempotency_key=key,
    )  # fmt: skip
    return Reply(m.EventCreated(id=str(event_id), resource="event", type=body.type), 201)


def token_json(row: TokenRow, token: str | None = None) -> m.Token:
    shown = m.Token(
        id=row.id,
        organisation=row.organisation,
        role=row.role,
        name=row.name,
        webhook_id=row.webhook_id,
        created_at=rfc3339(row.created_at),
        last_used_at=rfc3339(row.last_used_at) if row.last_used_at else None,
        revoked_at=rfc3339(row.revoked_at) if row.revoked_at else None,
    )
    return shown if token is None else shown.model_copy(update={"token": token})


async def list_tokens(call: Call) -> Reply:
    query: m.TokenQuery = call.query
    page = await tokens.list_page(call.ctx, call.scope, cursor=query.cursor, limit=query.limit)
    return Reply(m.TokenList(data=[token_json(r) for r in page.items], next_cursor=page.next_cursor))


async def create_token(call: Call) -> Reply:
    body: m.TokenCreate = call.body
    webhook_id = body_id(body.webhook_id, "webhook_id")
    made = await tokens.create(call.ctx, call.scope, role=body.role, name=body.name, webhook_id=webhook_id)
    return Reply(token_json(made.token, made.secret), 201)


async def revoke_token(call: Call) -> Reply:
    return Reply(token_json(await tokens.revoke(call.ctx, call.scope, call.id("token"))))


BASE_ROUTES = (
    Route("POST", "/events", "native", "Emit an event (Idempotency-Key honoured)", post_event,
          frozenset({Role.ADMIN, Role.PRODUCER}), body=m.EventCreate, response=m.EventCreated, status=201,
          errors=(400, 422)),
    Route("GET", "/tokens", "native", "List the organisation's tokens, newest first", list_tokens, ADMIN,
          query=m.TokenQuery, response=m.TokenList, errors=(400,)),
    Route("POST", "/tokens", "native", "Create a token (shown once)", create_token, ADMIN, body=m.TokenCreate,
          response=m.Token, status=201, errors=(400,)),
    Route("DELETE", "/tokens/{id}", "native", "Revoke a token", revoke_token, ADMIN, response=m.Token,
          errors=(404,)),
)  # fmt: skip


# ---- recovery: the delivery log, redeliver, replay, pause, rotation, event types, organisation settings -----


def _time(value: datetime | None) -> str | None:
    return rfc3339(value) if value is not None else None


def delivery_json(row: DeliveryLogRow) -> n.Delivery:
    return n.Delivery(
        id=str(row.id), event_id=str(row.event_id), webhook_id=row.webhook_id, event_type=row.event_type,
        kind=row.kind, state=DeliveryState(row.state),
        dead_letter=row.state == DeliveryState.FAILED and row.kind != DeliveryKind.TEST,
        attempts=row.attempts, max_attempts=row.max_attempts,
        next_attempt_at=rfc3339(row.next_attempt_at) if row.state == DeliveryState.PENDING else None,
        last_status=row.last_status, last_error=row.last_error,
        replay_id=str(row.replay_id) if row.replay_id else None,
        created_at=rfc3339(row.created_at), finished_at=_time(row.finished_at),
    )  # fmt: skip


def _cursor(value: str | None) -> UUID | None:
    """A page cursor (the id after which the page starts), or None for the first page."""
    if not value:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise Invalid("cursor", "cursor must be the next_cursor of the page before") from None


def _filters(query: n.DeliveryQuery) -> tuple[deliveries.Filters, UUID | None]:
    types = [t.strip() for t in query.type.split(",") if t.strip()] if query.type else None
    cursor = _cursor(query.cursor)
    filters = deliveries.Filters(
        states=deliveries.parse_list(query.state, DeliveryState, "state"),  # type: ignore[arg-type]
        kinds=deliveries.parse_list(query.kind, DeliveryKind, "kind"),  # type: ignore[arg-type]
        types=types, since=query.since, until=query.until,
    )  # fmt: skip
    return filters, cursor


def _delivery_page(page: deliveries.Page) -> Reply:
    data = [delivery_json(r) for r in page.items]
    return Reply(n.DeliveryList(data=data, next_cursor=str(page.next_cursor) if page.next_cursor else None))


async def list_webhook_deliveries(call: Call) -> Reply:
    filters, cursor = _filters(call.query)
    page = await deliveries.list_for_webhook(
        call.ctx, call.scope, call.id("webhook"), filters, cursor=cursor, limit=call.query.limit
    )
    return _delivery_page(page)


async def list_event_deliveries(call: Call) -> Reply:
    filters, cursor = _filters(call.query)
    page = await deliveries.list_for_event(
        call.ctx, call.scope, call.uuid("event"), filters, cursor=cursor, limit=call.query.limit
    )
    return _delivery_page(page)


async def get_delivery(call: Call) -> Reply:
    detail = await deliveries.get(call.ctx, call.scope, call.uuid("delivery"))
    row = detail.delivery
    log_row = DeliveryLogRow(**{f: getattr(row, f) for f in DeliveryLogRow.__dataclass_fields__})
    attempts = [
        n.Attempt(
            number=a.number,
            started_at=rfc3339(a.started_at),
            finished_at=rfc3339(a.finished_at),
            status=a.status,
            duration_ms=a.duration_ms,
            error_class=a.error_class,
            error=a.error,
            response=a.response,
        )
        for a in detail.attempts
    ]
    shown = n.DeliveryDetail(
        **delivery_json(log_row).model_dump(),
        request=n.RequestSent(url=detail.request_url, headers=detail.request_headers),
        attempt_log=attempts,
    )
    return Reply(shown)


async def redeliver(call: Call) -> Reply:
    made = await deliveries.redeliver(call.ctx, call.scope, call.uuid("delivery"))
    return Reply(delivery_json(made), 201)


def replay_json(row: ReplayRow) -> n.Replay:
    return n.Replay(
        id=str(row.id), webhook_id=row.webhook_id, state=row.state,
        since=rfc3339(row.since), until=rfc3339(row.until), only_failed=row.only_failed,
        types=list(row.types) if row.types is not None else None, events_considered=row.events_considered,
        deliveries_created=row.deliveries_created, delivered=row.delivered, failed=row.failed,
        in_progress=row.in_progress, walked=row.scanned_at is not None, error=row.error,
        created_at=rfc3339(row.created_at), completed_at=_time(row.completed_at),
    )  # fmt: skip


async def start_replay(call: Call) -> Reply:
    body: n.ReplayCreate = call.body
    started = await replays.start(
        call.ctx, call.scope, call.id("webhook"), since=body.since, until=body.until, only_failed=body.only_failed,
        types=body.types,
    )  # fmt: skip
    return Reply(replay_json(started.replay))


async def get_replay(call: Call) -> Reply:
    return Reply(replay_json(await replays.get(call.ctx, call.scope, call.uuid("replay"))))


async def list_replays(call: Call) -> Reply:
    query: n.ListQuery = call.query
    cursor = _cursor(query.cursor)
    page = await replays.list_page(call.ctx, call.scope, call.id("webhook"), cursor=cursor, limit=query.limit)
    data = [replay_json(r) for r in page.items]
    return Reply(n.ReplayList(data=data, next_cursor=str(page.next_cursor) if page.next_cursor else None))


def webhook_json(row: WebhookRow) -> n.Webhook:
    return n.Webhook(
        id=row.id, organisation=row.organisation, name=row.name, url=mask_url(row.url), events=list(row.events),
        format=row.format, state=row.state, paused=row.paused, last_error=row.last_error,
        created_at=rfc3339(row.created_at), updated_at=rfc3339(row.updated_at),
    )  # fmt: skip


async def pause_webhook(call: Call) -> Reply:
    webhook_id = call.id("webhook")
    await webhooks.set_paused(call.ctx, call.scope, webhook_id, True)
    return Reply(webhook_json(await webhooks.get(call.ctx, call.scope, webhook_id)))


async def resume_webhook(call: Call) -> Reply:
    webhook_id = call.id("webhook")
    await webhooks.set_paused(call.ctx, call.scope, webhook_id, False)
    return Reply(webhook_json(await webhooks.get(call.ctx, call.scope, webhook_id)))


async def rotate_secret(call: Call) -> Reply:
    body: n.RotateSecret = call.body
    webhook_id = call.id("webhook")
    rotated = await webhooks.rotate_secret(call.ctx, call.scope, webhook_id, overlap_seconds=body.overlap_seconds)
    return Reply(
        n.RotatedSecret(
            webhook_id=webhook_id, secret=rotated.secret, previous_expires_at=rfc3339(rotated.previous_expires_at)
        )
    )


def event_type_json(row: EventTypeRow) -> n.EventType:
    return n.EventType(
        name=row.name, description=row.description, source=row.source,
        created_at=rfc3339(row.created_at),
    )  # fmt: skip


async def list_event_types(call: Call) -> Reply:
    query: n.ListQuery = call.query
    page = await event_types.list_page(call.ctx, call.scope, cursor=query.cursor or None, limit=query.limit)
    return Reply(n.EventTypeList(data=[event_type_json(r) for r in page.items], next_cursor=page.next_cursor))


async def create_event_type(call: Call) -> Reply:
    body: n.EventTypeCreate = call.body
    row = await event_types.create(call.ctx, call.scope, name=body.name, description=body.description)
    return Reply(event_type_json(row), 201)


def settings_json(row: OrganisationRow) -> n.OrganisationSettings:
    return n.OrganisationSettings(
        id=row.id, name=row.name, contact_emails=list(row.contact_emails), default_webhook_id=row.default_webhook_id,
        created_at=rfc3339(row.created_at),
    )  # fmt: skip


async def get_settings(call: Call) -> Reply:
    return Reply(settings_json(await organisations.get(call.ctx, call.scope)))


async def update_settings(call: Call) -> Reply:
    body: n.OrganisationSettingsUpdate = call.body
    row = await organisations.set_settings(call.ctx, call.scope, name=body.name, contact_emails=body.contact_emails)
    return Reply(settings_json(row))


RECOVERY_ROUTES = (
    Route("GET", "/webhooks/{id}/deliveries", "native", "A webhook's deliveries, newest first (filters, cursor)",
          list_webhook_deliveries, READ, query=n.DeliveryQuery, response=n.DeliveryList, errors=(400, 404)),
    Route("GET", "/events/{id}/deliveries", "native", "An event's deliveries, newest first (filters, cursor)",
          list_event_deliveries, READ, query=n.DeliveryQuery, response=n.DeliveryList, errors=(400, 404)),
    Route("GET", "/deliveries/{id}", "native", "A delivery with its attempts and request headers", get_delivery,
          READ, response=n.DeliveryDetail, errors=(404,)),
    Route("POST", "/deliveries/{id}/redeliver", "native", "Send a delivery's event again: one attempt, now",
          redeliver, ADMIN, response=n.Delivery, status=201, errors=(404, 422, 429)),
    Route("POST", "/webhooks/{id}/replay", "native",
          "Replay a window of events (the same request while one runs returns it)", start_replay, ADMIN,
          body=n.ReplayCreate, response=n.Replay, errors=(400, 404, 409, 422, 429)),
    Route("GET", "/webhooks/{id}/replays", "native", "A webhook's replays, newest first", list_replays, READ,
          query=n.ListQuery, response=n.ReplayList, errors=(400, 404)),
    Route("GET", "/replays/{id}", "native", "A replay and its progress", get_replay, READ, response=n.Replay,
          errors=(404,)),
    Route("POST", "/webhooks/{id}/pause", "native", "Pause a webhook: new deliveries are held, not dropped",
          pause_webhook, ADMIN, response=n.Webhook, errors=(404,)),
    Route("POST", "/webhooks/{id}/resume", "native", "Resume a webhook: held deliveries released at a ramped rate",
          resume_webhook, ADMIN, response=n.Webhook, errors=(404,)),
    Route("POST", "/webhooks/{id}/rotate_secret", "native",
          "A new secret (shown once); the old one signs on for overlap_seconds", rotate_secret, ADMIN,
          body=n.RotateSecret, response=n.RotatedSecret, errors=(400, 404)),
    Route("GET", "/event_types", "native", "The event type catalogue, by name", list_event_types, READ,
          query=n.ListQuery, response=n.EventTypeList, errors=(400,)),
    Route("POST", "/event_types", "native", "Add an event type (usable at once in every process)",
          create_event_type, ADMIN, body=n.EventTypeCreate, response=n.EventType, status=201, errors=(400, 422)),
    Route("GET", "/organisation_settings", "native", "The organisation's name and contact_emails", get_settings,
          READ, response=n.OrganisationSettings),
    Route("PATCH", "/organisation_settings", "native", "Set the organisation's name and/or contact_emails",
          update_settings, ADMIN, body=n.OrganisationSettingsUpdate, response=n.OrganisationSettings,
          errors=(400,)),
)  # fmt: skip

# ---- figures: the organisation's queue and webhooks (the console's overview and chart) ----------------------


async def get_status(call: Call) -> Reply:
    now = await status.overview(call.ctx, call.scope)
    deliveries = {row.state: row.count for row in now.deliveries}
    failing = [
        n.FailingWebhook(
            id=f.id, state=f.state, paused=f.paused, last_error=f.last_error, failure_count=f.failure_count,
            failures_last_hour=f.failures_last_hour, oldest_waiting_since=_time(f.oldest_waiting_since),
        )
        for f in now.failing
    ]  # fmt: skip
    return Reply(
        n.Status(
            deliveries=deliveries, held=deliveries.get("held", 0), dead_letters=deliveries.get("failed", 0),
            oldest_pending_seconds=now.ages.oldest_due_seconds, unrouted_events=now.ages.unrouted_events,
            oldest_unrouted_seconds=now.ages.oldest_unrouted_seconds, delivered_last_minute=now.rates.delivered,
            failed_last_minute=now.rates.failed, webhooks={str(row.state): row.count for row in now.webhooks},
            paused_webhooks=sum(row.paused for row in now.webhooks), failing=failing,
        )
    )  # fmt: skip


def figures_json(figures: status.WebhookFigures) -> n.WebhookFigures:
    row, hour = figures.webhook, figures.hour
    attempts = hour.attempts if hour else 0
    last_hour = n.HourFigures(
        attempts=attempts, succeeded=hour.succeeded if hour else 0,
        success_rate=hour.succeeded / attempts if hour and attempts else None,
        mean_ms=hour.mean_ms if hour else None, p95_ms=hour.p95_ms if hour else None,
    )  # fmt: skip
    return n.WebhookFigures(
        id=row.id, name=row.name, url=mask_url(row.url), events=list(row.events), format=row.format,
        state=row.state, paused=row.paused, last_error=row.last_error, last_error_at=_time(row.last_error_at),
        header_names=sorted(json.loads(row.headers)), rate_limit=row.rate_limit,
        mail_exceptions_to=row.mail_exceptions_to, verification_pending=row.verification_pending,
        created_at=rfc3339(row.created_at), updated_at=rfc3339(row.updated_at), last_hour=last_hour,
    )  # fmt: skip


async def list_webhook_figures(call: Call) -> Reply:
    listed = await status.webhooks_with_figures(call.ctx, call.scope)
    return Reply(n.WebhookFiguresList(data=[figures_json(f) for f in listed]))


async def get_webhook_stats(call: Call) -> Reply:
    figures = await status.webhook_figures(call.ctx, call.scope, call.id("webhook"))
    minutes = [n.Minute(minute=rfc3339(m.minute), delivered=m.delivered, failed=m.failed) for m in figures.minutes]
    return Reply(n.WebhookStats(webhook=figures_json(figures), minutes=minutes))


FIGURE_ROUTES = (
    Route("GET", "/status", "native", "The organisation's queue: deliveries by state, ages, rates, webhooks",
          get_status, READ, response=n.Status),
    Route("GET", "/webhook_stats", "native", "Every webhook with its last hour's attempts (success rate, latency)",
          list_webhook_figures, READ, response=n.WebhookFiguresList),
    Route("GET", "/webhooks/{id}/stats", "native", "A webhook, its last hour, and its last day's attempts per minute",
          get_webhook_stats, READ, response=n.WebhookStats, errors=(404,)),
)  # fmt: skip

ROUTES = (*BASE_ROUTES, *RECOVERY_ROUTES, *FIGURE_ROUTES)
