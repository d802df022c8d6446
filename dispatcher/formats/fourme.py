"""Pure: 4me's format. 4me's webhook envelope, naming the webhook; Standard Webhooks signatures; X-4me-Delivery."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Final
from uuid import UUID

from dispatcher.envelope import EventData
from dispatcher.formats.base import dumps, standard_headers

DELIVERY_HEADER: Final = "X-4me-Delivery"
"""The header that carries the delivery id, as 4me's own webhooks do."""

_INTEGER: Final = re.compile(r"^-?(0|[1-9][0-9]*)$")


class FourMe:
    """webhook_id, account_id, name, event, object_id, person_id, person_name, payload."""

    body_per_webhook: Final = True

    def body(self, event: EventData, webhook_id: int, webhook_name: str) -> bytes:
        """4me's envelope: object_id is a JSON integer when it is an integer literal, person_* come from the actor,
        and name is the webhook's name (the event type when the webhook has none)."""
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
            f'{{"webhook_id":{webhook_id},"account_id":{dumps(event.organisation)},'
            f'"name":{dumps(webhook_name or event.type)},"event":{dumps(event.type)},'
            f'"object_id":{dumps(object_id)},"person_id":{dumps(person_id)},'
            f'"person_name":{dumps(person_name)},"payload":{event.payload}}}'
        ).encode()

    def target_url(self, url: str, event_id: str) -> str:
        """The webhook's URL, unchanged."""
        return url

    def headers(
        self, delivery_id: UUID, event_id: str, timestamp: int, secrets: Sequence[str], body: bytes
    ) -> dict[str, str]:
        """The Standard Webhooks headers, then X-4me-Delivery: the delivery id."""
        headers = standard_headers(event_id, timestamp, secrets, body)
        headers[DELIVERY_HEADER] = str(delivery_id)
        return headers


FOURME: Final = FourMe()
