"""Native routes beyond both dialects (so far): POST /events and the token routes. Errors:
{"error": {"code", "message", "field"}}."""

from __future__ import annotations

from dispatcher.api import models as m
from dispatcher.api.http import body_id
from dispatcher.api.routes import ADMIN, Call, Reply, Route
from dispatcher.db.rows import TokenRow
from dispatcher.envelope import rfc3339
from dispatcher.resources import events, tokens
from dispatcher.vocab import Role


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


ROUTES = (
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
