"""Events: emit one as a producer would, list and read them with their delivery state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from uuid import UUID

from dispatcher.db import ConstraintViolation
from dispatcher.db.rows import EventSummaryRow
from dispatcher.resources.errors import Invalid, NotFound, Rejected
from dispatcher.resources.scope import Context, Scope

MAX_IDEMPOTENCY_KEY = 255

# The input each constraint of the events table judges.
# What to do about a refusal whose constraint carries no hint of its own, and plainer words than PostgreSQL's.
_HINTS = {
    "event_type_unknown": "add the type to [events] types in the configuration, or POST /event_types",
    "event_organisation_unknown": "create the organisation first: dispatcher org create",
}
_MESSAGES = {
    "event_type_unknown": "type is not an event type of the catalogue",
    "event_organisation_unknown": "the organisation does not exist",
}

_CONSTRAINT_FIELDS = {
    "event_type_unknown": "type",
    "event_payload_too_large": "payload",
    "event_object_id_length": "object_id",
}


@dataclass(frozen=True, slots=True)
class Page:
    """Some events, newest first, and whether more follow."""

    items: tuple[EventSummaryRow, ...]
    has_more: bool


async def emit(
    ctx: Context,
    scope: Scope,
    *,
    type: object,
    payload: object = None,
    payload_text: str | None = None,
    object_id: object = None,
    actor: object = None,
    idempotency_key: object = None,
) -> UUID:
    """Insert an event (the caller's token as its key, so the token's webhook binding applies); returns its id.

    `payload` is a decoded JSON value, or `payload_text` JSON text as given (the CLI's). The database judges the
    type, the organisation and the size; its refusals name the field.
    """
    if not isinstance(type, str) or not type:
        raise Invalid("type", "type is required: an event type of the catalogue, e.g. request.create")
    if object_id is not None and (isinstance(object_id, bool) or not isinstance(object_id, str | int)):
        raise Invalid("object_id", "object_id must be a string or an integer")
    if actor is not None and not isinstance(actor, dict):
        raise Invalid("actor", 'actor must be an object, e.g. {"id": 591, "name": "Ann"}')
    if idempotency_key is not None and (
        not isinstance(idempotency_key, str) or len(idempotency_key) > MAX_IDEMPOTENCY_KEY
    ):
        raise Invalid("idempotency_key", f"idempotency_key must be a string of at most {MAX_IDEMPOTENCY_KEY} chars")
    if payload_text is None:
        payload_text = json.dumps(payload)
    else:
        try:
            json.loads(payload_text)
        except ValueError as exc:
            raise Invalid("payload", f"payload is not JSON: {exc}") from None
    try:
        return await ctx.db.emit_event(
            organisation=scope.organisation,
            type=type,
            payload=payload_text,
            object_id=None if object_id is None else str(object_id),
            actor=None if actor is None else json.dumps(actor),
            key_id=scope.token_id,
            idempotency_key=idempotency_key,
        )
    except ConstraintViolation as exc:
        field = _CONSTRAINT_FIELDS.get(exc.constraint)
        hint = exc.hint or _HINTS.get(exc.constraint)
        raise Rejected(exc.constraint, _MESSAGES.get(exc.constraint, str(exc)), field=field, hint=hint) from None


async def list_page(
    ctx: Context,
    scope: Scope,
    *,
    type: str | None = None,
    action: str | None = None,
    starting_after: UUID | None = None,
    limit: int = 20,
) -> Page:
    """Events (not tests) newest first, filtered by ricloud's halves of the dotted type."""
    rows = await ctx.db.list_event_summaries(
        organisation=scope.organisation, type=type, action=action, before_id=starting_after, limit=limit + 1
    )
    return Page(tuple(rows[:limit]), len(rows) > limit)


async def get(ctx: Context, scope: Scope, event_id: UUID) -> EventSummaryRow:
    """An event of the caller's organisation (test events too)."""
    row = await ctx.db.get_event_summary(organisation=scope.organisation, event_id=event_id)
    if row is None:
        raise NotFound("event")
    return row
