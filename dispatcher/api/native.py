"""Native routes beyond both dialects (so far): POST /events and the token routes. Errors:
{"error": {"code", "message", "field"}}."""

from __future__ import annotations

import functools
import json
from typing import Any

import asyncpg
from aiohttp import web

from dispatcher.api.common import (
    MAX_ID,
    ApiError,
    Caller,
    Context,
    body_id,
    int_param,
    invalid,
    json_body,
    not_found,
    path_id,
    route,
)
from dispatcher.envelope import rfc3339
from dispatcher.tokens import new_token

ROLES = ("admin", "producer", "viewer")


async def post_event(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    """Insert an event as a producer would; key_id is the caller's token, so its webhook binding applies."""
    body = await json_body(request, ctx.config.api.max_body_bytes)
    event_type = body.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise invalid("type", "type is required: an event type of the catalogue, e.g. request.create")
    payload = body.get("payload", body.get("data", {}))
    object_id = body.get("object_id")
    if object_id is not None and not isinstance(object_id, str | int):
        raise invalid("object_id", "object_id must be a string or an integer")
    actor = body.get("actor")
    if actor is not None and not isinstance(actor, dict):
        raise invalid("actor", 'actor must be an object, e.g. {"id": 591, "name": "Ann"}')
    key = body.get("idempotency_key", request.headers.get("Idempotency-Key"))
    if key is not None and (not isinstance(key, str) or len(key) > 255):
        raise invalid("idempotency_key", "idempotency_key must be a string of at most 255 characters")
    try:
        event_id = await ctx.db.fetchval(
            "emit_event_full", caller.organisation, event_type, json.dumps(payload),
            None if object_id is None else str(object_id), None if actor is None else json.dumps(actor),
            caller.token_id, key,
        )  # fmt: skip
    except asyncpg.IntegrityConstraintViolationError as exc:
        field = {"event_type_unknown": "type", "event_payload_too_large": "payload"}.get(exc.constraint_name or "")
        raise ApiError(422, exc.constraint_name or "constraint", str(exc), field=field) from None
    return web.json_response({"id": str(event_id), "resource": "event", "type": event_type}, status=201)


def token_json(row: asyncpg.Record, token: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row["id"],
        "organisation": row["organisation"],
        "role": row["role"],
        "name": row["name"],
        "webhook_id": row["webhook_id"],
        "created_at": rfc3339(row["created_at"]),
        "last_used_at": rfc3339(row["last_used_at"]) if row["last_used_at"] else None,
        "revoked_at": rfc3339(row["revoked_at"]) if row["revoked_at"] else None,
    }
    if token is not None:
        out["token"] = token
    return out


async def list_tokens(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    limit = int_param(request.query.get("limit"), "limit", default=25)
    assert limit is not None
    cursor = int_param(request.query.get("cursor"), "cursor", low=1, high=MAX_ID)
    rows = await ctx.db.fetch("list_tokens", caller.organisation, cursor, limit + 1)
    page = rows[:limit]
    next_cursor = page[-1]["id"] if len(rows) > limit else None
    return web.json_response({"data": [token_json(r) for r in page], "next_cursor": next_cursor})


async def create_token(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    body = await json_body(request, ctx.config.api.max_body_bytes)
    role = body.get("role")
    if role not in ROLES:
        raise invalid("role", "role must be admin, producer or viewer")
    name = body.get("name", "")
    if not isinstance(name, str):
        raise invalid("name", "name must be a string")
    webhook_id = body_id(body.get("webhook_id"), "webhook_id")
    token, token_digest = new_token()
    row = await ctx.db.fetchrow("create_token_bound", caller.organisation, role, token_digest, name, webhook_id)
    if row is None:
        raise invalid("webhook_id", f"no webhook {webhook_id} in this organisation")
    return web.json_response(token_json(row, token), status=201)


async def revoke_token(request: web.Request, ctx: Context, caller: Caller) -> web.Response:
    token_id = path_id(request, "token")
    row = await ctx.db.fetchrow("revoke_token", token_id, caller.organisation)
    if row is None:
        raise not_found("token")
    return web.json_response(token_json(row))


def install(app: web.Application, ctx: Context) -> None:
    """Add the native routes to `app`."""

    r = functools.partial(route, ctx, "native")

    app.router.add_post("/events", r(("admin", "producer"), post_event))
    app.router.add_get("/tokens", r(("admin",), list_tokens))
    app.router.add_post("/tokens", r(("admin",), create_token))
    app.router.add_delete("/tokens/{id}", r(("admin",), revoke_token))
