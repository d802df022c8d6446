"""Pure: the native format. The standard envelope, the webhook's URL as is, Standard Webhooks signatures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from uuid import UUID

from dispatcher.envelope import EventData, rfc3339
from dispatcher.formats.base import dumps, standard_headers


class Standard:
    """id, type, timestamp, organisation, object_id, actor, data (the payload); signed per Standard Webhooks."""

    body_per_webhook: Final = False

    def body(self, event: EventData, webhook_id: int, webhook_name: str) -> bytes:
        """The native envelope; the webhook is not named in it."""
        return (
            f'{{"id":{dumps(event.id)},"type":{dumps(event.type)},"timestamp":{dumps(rfc3339(event.created_at))},'
            f'"organisation":{dumps(event.organisation)},"object_id":{dumps(event.object_id)},'
            f'"actor":{event.actor or "null"},"data":{event.payload}}}'
        ).encode()

    def target_url(self, url: str, event_id: str) -> str:
        """The webhook's URL, unchanged."""
        return url

    def headers(
        self, delivery_id: UUID, event_id: str, timestamp: int, secrets: Sequence[str], body: bytes
    ) -> dict[str, str]:
        """webhook-id (the event id), webhook-timestamp and, with live secrets, webhook-signature."""
        return standard_headers(event_id, timestamp, secrets, body)


STANDARD: Final = Standard()
