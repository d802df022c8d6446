"""Pure: what every envelope is made of (`EventData`) and how every format writes time (`rfc3339`).

The envelopes themselves, one per webhook format, are in `dispatcher.formats`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dispatcher.vocab import WebhookFormat


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


def build(fmt: str, event: EventData, webhook_id: int, webhook_name: str) -> bytes:
    """The request body for a webhook of format `fmt`; kept for bench/limits.py, new code uses dispatcher.formats."""
    from dispatcher.formats import FORMATS  # here, not at the top: dispatcher.formats imports this module

    return FORMATS[WebhookFormat(fmt)].body(event, webhook_id, webhook_name)
