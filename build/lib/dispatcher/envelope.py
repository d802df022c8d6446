"""Pure: the three envelope formats, built around the stored payload text without decoding it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, assert_never

Format = Literal["standard", "4me", "ricloud"]

_INTEGER = re.compile(r"^-?(0|[1-9][0-9]*)$")


def rfc3339(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and a Z, as every dialect shows time: 2026-11-22T09:27:30.123Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class EventData:
    """What an envelope is made of: the event as stored, the payload and actor as JSON text."""

    id: str
    organisation: str
    type: str
    object_id: str | None
    payload: str
    actor: str | None
    created_at: datetime


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def standard(event: EventData) -> str:
    """The native envelope: id, type, timestamp, organisation, object_id, actor, data (the payload)."""
    return (
        f'{{"id":{_dumps(event.id)},"type":{_dumps(event.type)},"timestamp":{_dumps(rfc3339(event.created_at))},'
        f'"organisation":{_dumps(event.organisation)},"object_id":{_dumps(event.object_id)},'
        f'"actor":{event.actor or "null"},"data":{event.payload}}}'
    )


def fourme(event: EventData, webhook_id: int, webhook_name: str) -> str:
    """4me's envelope; object_id is a JSON integer when it is an integer literal, person_* from the actor."""
    object_id: object = event.object_id
    if event.object_id is not None and _INTEGER.match(event.object_id):
        object_id = int(event.object_id)
    person_id: object = None
    person_name: object = None
    if event.actor:
        actor = json.loads(event.actor)
        person_id = actor.get("id")
        person_name = actor.get("name")
    return (
        f'{{"webhook_id":{webhook_id},"account_id":{_dumps(event.organisation)},'
        f'"name":{_dumps(webhook_name or event.type)},"event":{_dumps(event.type)},'
        f'"object_id":{_dumps(object_id)},"person_id":{_dumps(person_id)},'
        f'"person_name":{_dumps(person_name)},"payload":{event.payload}}}'
    )


def ricloud(event: EventData) -> str:
    """ricloud's event resource: type is the first segment of the event type, action the rest."""
    kind, _, action = event.type.partition(".")
    return (
        f'{{"id":{_dumps(event.id)},"resource":"event","type":{_dumps(kind)},"action":{_dumps(action)},'
        f'"data":{event.payload},"date_created":{_dumps(rfc3339(event.created_at))}}}'
    )


def build(fmt: Format, event: EventData, webhook_id: int, webhook_name: str) -> bytes:
    """The request body for a webhook of format `fmt`."""
    match fmt:
        case "standard":
            text = standard(event)
        case "4me":
            text = fourme(event, webhook_id, webhook_name)
        case "ricloud":
            text = ricloud(event)
        case _:
            assert_never(fmt)
    return text.encode()


def target_url(fmt: Format, url: str, event_id: str) -> str:
    """Where the request goes: ricloud receivers take the event id as the last path segment."""
    if fmt == "ricloud":
        return url.rstrip("/") + "/" + event_id
    return url
