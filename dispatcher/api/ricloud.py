"""The ricloud dialect: what ricloud-py 3.2.0 sends, answered as Reincubate's API does.

Routes: /configs/webhook (create, list, retrieve, update, test, delete), /tasks/{id}, /key, /keys/{id},
/organisation, /events, /events/{id}. Errors: {"error", "message", "params"}.
"""

from __future__ import annotations

import functools
import json
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

from dispatcher import health
from dispatcher.api.common import (
    MAX_ID,
    Caller,
    Context,
    Role,
    body_id,
    int_param,
    invalid,
    json_body,
    not_found,
    path_id,
    rate_limited,
    route,
    time_param,
)
from dispatcher.envelope import rfc3339
from dispatcher.netguard import NetworkGuard
from dispatcher.sender import mask_url
from dispatcher.signing import generate_secret

READ: tuple[Role, ...] = ("admin", "viewer")
ADMIN: tuple[Role, ...] = ("admin",)

# Tests per token and minute (each sends a request to someone's server).
TEST_LIMIT = (30, 60)
# Ricloud-Await waits at most this long, whatever is asked.
MAX_AWAIT_SECONDS = 30.0


def webhook_config(row: asyncpg.Record, secret: str | None = None) -> dict[str, Any]:
    """The webhook_config resource; the secret only in the create response."""
    out: dict[str, Any] = {
        "id": row["id"],
        "resource": "webhook_config",
        "organisation": row["organisation"],
        "url": mask_credentials(row["url"]),
        "state": row["state"],
        "date_created": rfc3339(row["created_at"]),
    }
    if secret is not None:
        out["secret"] = secret
    return out


def mask_credentials(url: str) -> str:
    """URLs are shown with any user:password replaced."""
    return mask_url(url)


def task_resource(row: asyncpg.Record) -> dict[str, Any]:
    """The task resource of a webhook_config test."""
    result = json.loads(row["result"]) if row["result"] else None
    return {
        "id": str(row["id"]),
        "resource": "task",
        "type": row["type"],
        "state": row["state"],
        "result": result,
        "date_created": rfc3339(row["created_at"]),
        "date_completed": rfc3339(row["completed_at"]) if row["completed_at"] else None,
    }


def event_resource(row: asyncpg.Record) -> dict[str, Any]:
    """ricloud's event resource: type and action are the halves of the dotted type."""
    kind, _, action = row["type"].partition(".")
    if row["failed"]:
        state = "failed"
    elif row["deliveries"] and row["delivered"] == row["deliveries"]:
        state = "delivered"
    else:
        state = "pending"
    return {
        "id": str(row["id"]),
        "resource": "event",
        "type": kind,
        "action": action,
        "data": json.loads(row["payload"]),
        "state": state,
        "retries": row["retries"],
        "date_created": rfc3339(row["created_at"]),
        "date_delivered": rfc3339(row["delivered_at"]) if state == "delivered" and row["delivered_at"] else None,
    }


def key_resource(row: asyncpg.Record) -> dict[str, Any]:
    """The calling token as ricloud's key resource."""
    return {
        "id": row["id"],
        "resource": "key",
        "organisation": row["organisation"],
        "name": row["name"],
        "role": row["role"],
        "webhook_config": row["webhook_id"],
        "date_created": rfc3339(row["created_at"]),
        "date_last_used": rfc3339(row["last_used_at"]) if row["last_used_at"] else None,
        "revoked": row["revoked_at"] is not None,
    }


def organisation_resource(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "resource": "organisation",
        "name": row["name"],
        "default_webhook_config": row["default_webhook_id"],
        "date_created": rfc3339(row["created_at"]),
    }


def webhook_id_param(request: web.Request) -> int:
    return path_id(request, "webhook_config")


def check_url(ctx: Context, value: object) -> str:
    """A URL the daemon may deliver to: http(s), a host, not refused by the SSRF guard."""
    if not isinstance(value, str) or not value.strip():
        raise invalid("url", "url is required: the address of your webhook receiver")
    url = value.strip()
    if len(url) > 2048:
        raise invalid("url", "url is longer than 2048 characters")
    try:
        NetworkGuard(ctx.config.delivery.allow_networks).check_url(url)
    except Exception as exc:
        raise invalid("url", f"url: {exc}") from None
    if ctx.config.delivery.require_https and not url.lower().startswith("https://"):
        raise invalid("url", "url must use https ([delivery] require_https is set)")
    return url


# ---- /configs/webhook -----------------------------------------------------------------------------------


async def create_config(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    body = await json_body(request, ctx.config.api.max_body_bytes)
    url = check_url(ctx, body.get("url"))
    secret = generate_secret()
    row = await ctx.db.fetchrow("create_webhook", caller.organisation, url, [], "ricloud", "", secret)
    assert row is not None
    await health.request_test(ctx.db, row["id"], caller.organisation)
    return web.json_response(webhook_config(row, secret), status=201)


async def get_config(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    row = await ctx.db.fetchrow("get_webhook", webhook_id_param(request), caller.organisation)
    if row is None:
        raise not_found("webhook_config")
    return web.json_response(webhook_config(row))


async def list_configs(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    query = request.query
    limit = int_param(query.get("limit"), "limit", default=20)
    assert limit is not None
    states = None
    if query.get("state"):
        states = [s.strip() for s in query["state"].split(",")]
        unknown = [s for s in states if s not in ("new", "valid", "invalid", "deactivated")]
        if unknown:
            raise invalid("state", f"state must be new, valid, invalid or deactivated, not {unknown[0]!r}")
    bounds = {
        op: time_param(query.get(f"date_created[{op}]"), f"date_created[{op}]") for op in ("gt", "gte", "lt", "lte")
    }
    exact = time_param(query.get("date_created"), "date_created")
    if exact is not None:  # a bare date_created means "created at or after"
        bounds["gte"] = bounds["gte"] or exact
    after = int_param(query.get("starting_after"), "starting_after", low=1, high=MAX_ID)
    rows = await ctx.db.fetch(
        "list_webhook_configs", caller.organisation, states,
        bounds["gt"], bounds["gte"], bounds["lt"], bounds["lte"], after, limit + 1,
    )  # fmt: skip
    return web.json_response(
        {"resource": "list", "data": [webhook_config(r) for r in rows[:limit]], "has_more": len(rows) > limit}
    )


async def update_config(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    webhook_id = webhook_id_param(request)
    body = await json_body(request, ctx.config.api.max_body_bytes)
    unknown = sorted(set(body) - {"url", "state"})
    if unknown:
        raise invalid(unknown[0], f"{unknown[0]} cannot be updated; send url and/or state")
    state = body.get("state")
    if state is not None and state not in ("new", "deactivated"):
        raise invalid("state", "state can only be set to new (retest) or deactivated")
    url = check_url(ctx, body["url"]) if "url" in body else None
    try:
        if url is not None:
            await health.set_url(ctx.db, webhook_id, caller.organisation, url)
        if state == "deactivated":
            await health.deactivate(ctx.db, webhook_id, caller.organisation)
        elif state == "new":
            await health.renew(ctx.db, webhook_id, caller.organisation)
    except health.WebhookNotFound:
        raise not_found("webhook_config") from None
    return await get_config(request, ctx, caller)


async def test_config(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    webhook_id = webhook_id_param(request)
    await rate_limited(ctx.db, caller, "test", *TEST_LIMIT)
    try:
        task = await health.request_test(ctx.db, webhook_id, caller.organisation)
    except health.WebhookNotFound:
        raise not_found("webhook_config") from None
    wait = _await_seconds(request)
    if wait > 0:
        task = await health.wait_for_task(ctx.db, task["id"], caller.organisation, wait) or task
    return web.json_response(task_resource(task))


def _await_seconds(request: web.Request) -> float:
    """Ricloud-Await: N (seconds to wait for the task's result); absent, 0 or unreadable means no wait."""
    try:
        return min(max(float(request.headers.get("Ricloud-Await", "0")), 0.0), MAX_AWAIT_SECONDS)
    except ValueError:
        return 0.0


async def delete_config(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    webhook_id = webhook_id_param(request)
    row = await ctx.db.fetchrow("get_webhook", webhook_id, caller.organisation)
    if row is None:
        raise not_found("webhook_config")
    try:
        await health.delete(ctx.db, webhook_id, caller.organisation)
    except health.WebhookNotFound:
        raise not_found("webhook_config") from None
    return web.json_response(webhook_config(row))


# ---- tasks, key, organisation, events ------------------------------------------------------------------


async def get_task(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    try:
        task_id = UUID(request.match_info["id"])
    except ValueError:
        raise not_found("task") from None
    task = await health.get_task(ctx.db, task_id, caller.organisation)
    if task is None:
        raise not_found("task")
    wait = _await_seconds(request)
    if wait > 0 and task["state"] == "pending":
        task = await health.wait_for_task(ctx.db, task_id, caller.organisation, wait) or task
    return web.json_response(task_resource(task))


async def get_key(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    row = await ctx.db.fetchrow("get_token", caller.token_id, caller.organisation)
    assert row is not None
    return web.json_response(key_resource(row))


async def update_key(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    token_id = path_id(request, "key")
    body = await json_body(request, ctx.config.api.max_body_bytes)
    if "webhook_config" not in body:
        raise invalid("webhook_config", "send webhook_config: a webhook config id, or null to unbind")
    webhook_id = body_id(body["webhook_config"], "webhook_config")
    row = await ctx.db.fetchrow("bind_token", token_id, caller.organisation, webhook_id)
    if row is None:
        if await ctx.db.fetchrow("get_token", token_id, caller.organisation) is None:
            raise not_found("key")
        raise invalid("webhook_config", f"no webhook config {webhook_id} in this organisation")
    return web.json_response(key_resource(row))


async def get_organisation(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    row = await ctx.db.fetchrow("get_organisation", caller.organisation)
    assert row is not None
    return web.json_response(organisation_resource(row))


async def update_organisation(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    body = await json_body(request, ctx.config.api.max_body_bytes)
    if "default_webhook_config" not in body:
        raise invalid("default_webhook_config", "send default_webhook_config: a webhook config id, or null")
    webhook_id = body_id(body["default_webhook_config"], "default_webhook_config")
    row = await ctx.db.fetchrow("set_default_webhook", caller.organisation, webhook_id)
    if row is None:
        raise invalid("default_webhook_config", f"no webhook config {webhook_id} in this organisation")
    return web.json_response(organisation_resource(row))


async def list_events(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    query = request.query
    limit = int_param(query.get("limit"), "limit", default=20)
    assert limit is not None
    after = None
    if query.get("starting_after"):
        try:
            after = UUID(query["starting_after"])
        except ValueError:
            raise invalid("starting_after", "starting_after must be an event id") from None
    rows = await ctx.db.fetch(
        "list_event_resources", caller.organisation, query.get("type") or None, query.get("action") or None,
        after, limit + 1,
    )  # fmt: skip
    return web.json_response(
        {"resource": "list", "data": [event_resource(r) for r in rows[:limit]], "has_more": len(rows) > limit}
    )


async def get_event(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    try:
        event_id = UUID(request.match_info["id"])
    except ValueError:
        raise not_found("event") from None
    row = await ctx.db.fetchrow("get_event_resource", caller.organisation, event_id)
    if row is None:
        raise not_found("event")
    return web.json_response(event_resource(row))


def install(app: web.Application, ctx: Context) -> None:
    """Add the ricloud routes to `app`."""

    r = functools.partial(route, ctx, "ricloud")

    app.router.add_post("/configs/webhook", r(ADMIN, create_config))
    app.router.add_get("/configs/webhook", r(READ, list_configs))
    app.router.add_get("/configs/webhook/{id}", r(READ, get_config))
    app.router.add_post("/configs/webhook/{id}", r(ADMIN, update_config))
    app.router.add_delete("/configs/webhook/{id}", r(ADMIN, delete_config))
    app.router.add_post("/configs/webhook/{id}/test", r(ADMIN, test_config))
    app.router.add_get("/tasks/{id}", r(READ, get_task))
    app.router.add_get("/key", r(("admin", "viewer", "producer"), get_key))
    app.router.add_post("/keys/{id}", r(ADMIN, update_key))
    app.router.add_get("/organisation", r(READ, get_organisation))
    app.router.add_post("/organisation", r(ADMIN, update_organisation))
    app.router.add_get("/events", r(READ, list_events))
    app.router.add_get("/events/{id}", r(READ, get_event))
