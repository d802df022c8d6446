"""Pure: ricloud's format. ricloud's event resource, posted to <url>/<event id>, with a Ricloud-Signature too."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final
from uuid import UUID

from dispatcher import signing
from dispatcher.envelope import EventData, rfc3339
from dispatcher.formats.base import dumps, standard_headers


class Ricloud:
    """id, resource "event", type (the event type's first segment), action (the rest), data, date_created."""

    body_per_webhook: Final = False

    def body(self, event: EventData, webhook_id: int, webhook_name: str) -> bytes:
        """ricloud's event resource; the webhook is not named in it."""
        kind, _, action = event.type.partition(".")
        return (
            f'{{"id":{dumps(event.id)},"resource":"event","type":{dumps(kind)},"action":{dumps(action)},'
            f'"data":{event.payload},"date_created":{dumps(rfc3339(event.created_at))}}}'
        ).encode()

    def target_url(self, url: str, event_id: str) -> str:
        """ricloud receivers take the event id as the last path segment."""
        return url.rstrip("/") + "/" + event_id

    def headers(
        self, delivery_id: UUID, event_id: str, timestamp: int, secrets: Sequence[str], body: bytes
    ) -> dict[str, str]:
        """The Standard Webhooks headers and, with live secrets, one Ricloud-Signature."""
        headers = standard_headers(event_id, timestamp, secrets, body)
        if secrets:
            # One signature only: the oldest live secret, so receivers keep working through a rotation.
            headers[signing.RICLOUD_HEADER] = signing.ricloud_signature(secrets[-1], timestamp, body)
        return headers


RICLOUD: Final = Ricloud()
