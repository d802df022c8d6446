"""The ricloud dialect: what ricloud-py 3.2.0 sends, answered as Reincubate's API does.

Routes: /configs/webhook (create, list, retrieve, update, test, delete), /tasks/{id}, /key, /keys/{id},
/organisation, /events, /events/{id}. Errors: {"error", "message", "params"}. Each handler maps the request to
one operation of dispatcher.resources and its result to ricloud's resource.
"""

from __future__ import annotations

import json
from typing import Literal
from uuid import UUID

from dispatcher.api import models as m
from dispatcher.api.http import body_id
from dispatcher.api.routes import ADMIN, ANY_ROLE, READ, Call, Reply, Route
from dispatcher.db.rows import EventSummaryRow, OrganisationRow, TaskRow, TokenRow, WebhookRow
from dispatcher.envelope import rfc3339
from dispatcher.resources import Invalid, NotFound, events, organisations, tasks, tokens, webhooks
from dispatcher.sender import mask_url
from dispatcher.vocab import WebhookFormat, WebhookState

# Ricloud-Await waits at most this long, whatever is asked.
MAX_AWAIT_SECONDS = 30.0


def webhook_config(row: WebhookRow, secret: str | None = None) -> m.WebhookConfig:
    """The webhook_config resource; the secret only in the create response."""
    resource = m.WebhookConfig(
        id=row.id,
        resource="webhook_config",
        organisation=row.organisation,
        url=mask_url(row.url),
        state=row.state,
        date_created=rfc3339(row.created_at),
    )
    return resource if secret is None else resource.model_copy(update={"secret": secret})


def task_resource(row: TaskRow) -> m.Task:
    """The task resource of a webhook_config test."""
    return m.Task(
        id=str(row.id),
        resource="task",
        type=row.type,
        state=row.state,
        result=json.loads(row.result) if row.result else None,
        date_created=rfc3339(row.created_at),
        date_completed=rfc3339(row.completed_at) if row.completed_at else None,
    )


def event_resource(row: EventSummaryRow) -> m.Event:
    """ricloud's event resource: type and action are the halves of the dotted type."""
    kind, _, action = row.type.partition(".")
    state: Literal["pending", "delivered", "failed"]
    if row.failed:
        state = "failed"
    elif row.delivered == row.deliveries and row.dispatched_at is not None:
        state = "delivered"  # every delivery delivered; also an event routed to nobody (nothing left to do)
    else:
        state = "pending"
    done = row.delivered_at or row.dispatched_at
    return m.Event(
        id=str(row.id),
        resource="event",
        type=kind,
        action=action,
        data=json.loads(row.payload),
        state=state,
        retries=row.retries,
        date_created=rfc3339(row.created_at),
        date_delivered=rfc3339(done) if state == "delivered" and done is not None else None,
    )


def key_resource(row: TokenRow) -> m.Key:
    """The calling token as ricloud's key resource."""
    return m.Key(
        id=row.id,
        resource="key",
        organisation=row.organisation,
        name=row.name,
        role=row.role,
        webhook_config=row.webhook_id,
        date_created=rfc3339(row.created_at),
        date_last_used=rfc3339(row.last_used_at) if row.last_used_at else None,
        revoked=row.revoked_at is not None,
    )


def organisation_resource(row: OrganisationRow) -> m.Organisation:
    return m.Organisation(
        id=row.id,
        resource="organisation",
        name=row.name,
        default_webhook_config=row.default_webhook_id,
        date_created=rfc3339(row.created_at),
    )


def _await_seconds(call: Call) -> float:
    """Ricloud-Await: N (seconds to wait for the task's result); absent, 0 or unreadable means no wait."""
    try:
        return min(max(float(call.request.headers.get("Ricloud-Await", "0")), 0.0), MAX_AWAIT_SECONDS)
    except ValueError:
        return 0.0


def _config_id(call: Call) -> int:
    return call.id("webhook_config")


def _renamed(error: NotFound) -> NotFound:
    """ricloud calls webhooks webhook configs."""
    return NotFound("webhook_config") if error.what == "webhook" else error


# ---- /configs/webhook -----------------------------------------------------------------------------------


async def create_config(call: Call) -> Reply:
    body: m.WebhookConfigCreate = call.body
    made = await webhooks.create(call.ctx, call.scope, url=body.url, format=WebhookFormat.RICLOUD)
    return Reply(webhook_config(made.webhook, made.secret), 201)


async def get_config(call: Call) -> Reply:
    try:
        return Reply(webhook_config(await webhooks.get(call.ctx, call.scope, _config_id(call))))
    except NotFound as exc:
        raise _renamed(exc) from None


async def list_configs(call: Call) -> Reply:
    query: m.WebhookConfigQuery = call.query
    states = None
    if query.state:
        states = [s.strip() for s in query.state.split(",")]
        unknown = [s for s in states if s not in tuple(WebhookState)]
        if unknown:
            raise Invalid("state", f"state must be new, valid, invalid or deactivated, not {unknown[0]!r}")
    page = await webhooks.list_page(
        call.ctx, call.scope, states=[WebhookState(s) for s in states] if states is not None else None,
        created_gt=query.date_created_gt, created_gte=query.date_created_gte or query.date_created,
        created_lt=query.date_created_lt, created_lte=query.date_created_lte,
        starting_after=query.starting_after, limit=query.limit,
    )  # fmt: skip
    data = [webhook_config(r) for r in page.items]
    return Reply(m.WebhookConfigList(resource="list", data=data, has_more=page.has_more))


async def update_config(call: Call) -> Reply:
    webhook_id = _config_id(call)
    body: m.WebhookConfigUpdate = call.body
    try:
        row = await webhooks.update(
            call.ctx, call.scope, webhook_id,
            url=(body.url or "") if "url" in body.model_fields_set else None,  # a null url is a missing one
            state=body.state,
        )  # fmt: skip
    except NotFound as exc:
        raise _renamed(exc) from None
    return Reply(webhook_config(row))


async def test_config(call: Call) -> Reply:
    webhook_id = _config_id(call)
    try:
        task = await webhooks.test(call.ctx, call.scope, webhook_id, wait=_await_seconds(call))
    except NotFound as exc:
        raise _renamed(exc) from None
    return Reply(task_resource(task))


async def delete_config(call: Call) -> Reply:
    try:
        row = await webhooks.delete(call.ctx, call.scope, _config_id(call))
    except NotFound as exc:
        raise _renamed(exc) from None
    return Reply(webhook_config(row))


# ---- tasks, key, organisation, events ------------------------------------------------------------------


async def get_task(call: Call) -> Reply:
    task = await tasks.get(call.ctx, call.scope, call.uuid("task"), wait=_await_seconds(call))
    return Reply(task_resource(task))


async def get_key(call: Call) -> Reply:
    return Reply(key_resource(await tokens.current(call.ctx, call.scope)))


async def update_key(call: Call) -> Reply:
    token_id = call.id("key")
    body: m.KeyUpdate = call.body
    webhook_id = body_id(body.webhook_config, "webhook_config")
    return Reply(key_resource(await tokens.bind(call.ctx, call.scope, token_id, webhook_id, "webhook_config")))


async def get_organisation(call: Call) -> Reply:
    return Reply(organisation_resource(await organisations.get(call.ctx, call.scope)))


async def update_organisation(call: Call) -> Reply:
    body: m.OrganisationUpdate = call.body
    webhook_id = body_id(body.default_webhook_config, "default_webhook_config")
    row = await organisations.set_default_webhook(call.ctx, call.scope, webhook_id, "default_webhook_config")
    return Reply(organisation_resource(row))


async def list_events(call: Call) -> Reply:
    query: m.EventQuery = call.query
    after = None
    if query.starting_after:
        try:
            after = UUID(query.starting_after)
        except ValueError:
            raise Invalid("starting_after", "starting_after must be an event id") from None
    page = await events.list_page(
        call.ctx, call.scope, type=query.type or None, action=query.action or None, starting_after=after,
        limit=query.limit,
    )  # fmt: skip
    return Reply(m.EventList(resource="list", data=[event_resource(r) for r in page.items], has_more=page.has_more))


async def get_event(call: Call) -> Reply:
    return Reply(event_resource(await events.get(call.ctx, call.scope, call.uuid("event"))))


E404, E400, E429 = 404, 400, 429

ROUTES = (
    Route("POST", "/configs/webhook", "ricloud", "Create a webhook config (a test task is queued)", create_config,
          ADMIN, body=m.WebhookConfigCreate, response=m.WebhookConfig, status=201, errors=(E400,)),
    Route("GET", "/configs/webhook", "ricloud", "List webhook configs, newest first", list_configs, READ,
          query=m.WebhookConfigQuery, response=m.WebhookConfigList, errors=(E400,)),
    Route("GET", "/configs/webhook/{id}", "ricloud", "Retrieve a webhook config", get_config, READ,
          response=m.WebhookConfig, errors=(E404,)),
    Route("POST", "/configs/webhook/{id}", "ricloud", "Update a webhook config's url and/or state", update_config,
          ADMIN, body=m.WebhookConfigUpdate, response=m.WebhookConfig, errors=(E400, E404)),
    Route("DELETE", "/configs/webhook/{id}", "ricloud", "Delete a webhook config", delete_config, ADMIN,
          response=m.WebhookConfig, errors=(E404,)),
    Route("POST", "/configs/webhook/{id}/test", "ricloud", "Test a webhook config (Ricloud-Await: N waits)",
          test_config, ADMIN, response=m.Task, errors=(E400, E404, E429)),
    Route("GET", "/tasks/{id}", "ricloud", "Retrieve a task (Ricloud-Await: N waits)", get_task, READ,
          response=m.Task, errors=(E404,)),
    Route("GET", "/key", "ricloud", "The calling key", get_key, ANY_ROLE, response=m.Key),
    Route("POST", "/keys/{id}", "ricloud", "Bind a key to a webhook config", update_key, ADMIN, body=m.KeyUpdate,
          response=m.Key, errors=(E400, E404)),
    Route("GET", "/organisation", "ricloud", "The caller's organisation", get_organisation, READ,
          response=m.Organisation),
    Route("POST", "/organisation", "ricloud", "Set the organisation's default webhook config", update_organisation,
          ADMIN, body=m.OrganisationUpdate, response=m.Organisation, errors=(E400,)),
    Route("GET", "/events", "ricloud", "List events with their delivery state", list_events, READ,
          query=m.EventQuery, response=m.EventList, errors=(E400,)),
    Route("GET", "/events/{id}", "ricloud", "Retrieve an event with its delivery state", get_event, READ,
          response=m.Event, errors=(E404,)),
)  # fmt: skip
