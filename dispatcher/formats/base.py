"""Pure: what every webhook format is (the `Format` protocol) and the pieces all formats share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

from dispatcher import signing
from dispatcher.envelope import EventData


class Format(Protocol):
    """Everything one webhook format means: the body, where it goes, and the headers that sign it.

    Implementations are pure (no I/O, no clock): the caller passes the time and the live secrets.
    """

    @property
    def body_per_webhook(self) -> bool:
        """True when `body` depends on the webhook (id, name), so one event's body cannot be shared."""
        ...

    def body(self, event: EventData, webhook_id: int, webhook_name: str) -> bytes:
        """The request body for `event`, built around the stored payload text without decoding it."""
        ...

    def target_url(self, url: str, event_id: str) -> str:
        """Where the request for `event_id` goes, given the webhook's URL."""
        ...

    def headers(
        self, delivery_id: UUID, event_id: str, timestamp: int, secrets: Sequence[str], body: bytes
    ) -> dict[str, str]:
        """The format's headers for one attempt, signatures included; they override the webhook's static headers.

        `secrets` are the live ones, current first; `timestamp` is the attempt's unix seconds.
        """
        ...


def dumps(value: object) -> str:
    """Compact JSON with non-ASCII kept as is: how every format writes a value into its body."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def standard_headers(event_id: str, timestamp: int, secrets: Sequence[str], body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers every format sends; without a live secret, only id and timestamp."""
    if secrets:
        return signing.standard_headers(secrets, event_id, timestamp, body)
    return {signing.HEADER_ID: event_id, signing.HEADER_TIMESTAMP: str(timestamp)}
