"""The rows the named queries return, as frozen values. Field names are the queries' column names.

Fields typed with a vocabulary enum hold the plain string PostgreSQL returned: a StrEnum member equals its string,
so comparisons, `match` and JSON read the same either way, and the claim's hot path converts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self
from uuid import UUID

from dispatcher.vocab import DeliveryKind, Role, TaskState, WebhookFormat, WebhookState


class _Row:
    """Built from an asyncpg record whose columns are exactly the dataclass's fields."""

    __slots__ = ()

    @classmethod
    def of(cls, record: Any) -> Self:
        return cls(**record)


@dataclass(frozen=True, slots=True)
class WebhookRow(_Row):
    """A webhook without its secrets (get_webhook, create_webhook, list_webhooks, list_webhook_configs)."""

    id: int
    organisation: str
    name: str
    description: str
    url: str
    events: list[str]
    format: WebhookFormat
    state: WebhookState
    paused: bool
    last_error: str | None
    last_error_at: datetime | None
    failure_count: int
    failing_since: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StateChange(_Row):
    """A webhook's state before and after an operator's transition."""

    old_state: WebhookState
    new_state: WebhookState


@dataclass(frozen=True, slots=True)
class PausedRow(_Row):
    """A webhook's state after pause or resume."""

    state: WebhookState
    paused: bool


@dataclass(frozen=True, slots=True)
class TaskRow(_Row):
    """A webhook test's task; `result` is its JSON text ({status, error}) once completed."""

    id: UUID
    organisation: str
    type: str
    webhook_id: int | None
    event_id: UUID | None
    webhook_version: int | None
    state: TaskState
    result: str | None
    created_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class TokenRow(_Row):
    """A token without its digest."""

    id: int
    organisation: str
    role: Role
    name: str
    webhook_id: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class CallerRow(_Row):
    """The live token a request authenticated with."""

    id: int
    organisation: str
    role: Role
    webhook_id: int | None


@dataclass(frozen=True, slots=True)
class RateLimitRow(_Row):
    """Whether one more use fits the window, and the seconds until the window ends."""

    allowed: bool
    retry_after: int


@dataclass(frozen=True, slots=True)
class OrganisationRow(_Row):
    id: str
    name: str
    default_webhook_id: int | None
    contact_emails: list[str]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EventSummaryRow(_Row):
    """An event with its deliveries counted (tests' deliveries left out of the lists)."""

    id: UUID
    type: str
    payload: str
    created_at: datetime
    dispatched_at: datetime | None
    delivery_count: int | None
    deliveries: int
    delivered: int
    failed: int
    retries: int
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class RoutedRow(_Row):
    """An event taken by route_events and the number of deliveries made for it."""

    id: UUID
    organisation: str
    type: str
    delivery_count: int


@dataclass(frozen=True, slots=True)
class ClaimRow(_Row):
    """A leased delivery with its event and webhook (secrets and headers as JSON text)."""

    id: UUID
    event_id: UUID
    webhook_id: int
    kind: DeliveryKind
    attempts: int
    lease_token: int
    retry_delay: float | None
    next_attempt_at: datetime
    organisation: str
    type: str
    object_id: str | None
    payload: str
    actor: str | None
    created_at: datetime
    url: str
    format: WebhookFormat
    webhook_name: str
    secrets: str
    headers: str
    webhook_version: int
    webhook_state: WebhookState


@dataclass(frozen=True, slots=True)
class WebhookOutcome(_Row):
    """What a batch of results did to one webhook: its state change and its new failures."""

    webhook_id: int
    old_state: WebhookState
    new_state: WebhookState
    last_error: str
    failure_count: int
    new_failures: int


@dataclass(frozen=True, slots=True)
class RecordedBatch:
    """record_results: the deliveries whose result applied, and the webhooks it changed or that failed."""

    applied: frozenset[UUID]
    webhooks: tuple[WebhookOutcome, ...]


@dataclass(frozen=True, slots=True)
class DeliveryRef(_Row):
    """A delivery and its webhook (maintenance's results)."""

    id: UUID
    webhook_id: int


@dataclass(frozen=True, slots=True)
class RescuedRow(_Row):
    """A delivery whose lease expired, and the state it went back to."""

    id: UUID
    webhook_id: int
    state: str


@dataclass(frozen=True, slots=True)
class MailRow(_Row):
    """A queued mail taken for sending."""

    id: int
    recipients: list[str]
    subject: str
    body: str
    attempts: int


@dataclass(frozen=True, slots=True)
class StateCount(_Row):
    """How many deliveries are in one state."""

    state: str
    count: int


@dataclass(frozen=True, slots=True)
class WebhookStateCount(_Row):
    """How many webhooks are in one state, and how many of them are paused."""

    state: WebhookState
    count: int
    paused: int


@dataclass(frozen=True, slots=True)
class QueueAges(_Row):
    """Seconds since the oldest due pending delivery became due and since the oldest unrouted event."""

    oldest_due_seconds: float | None
    oldest_unrouted_seconds: float | None
    unrouted_events: int


@dataclass(frozen=True, slots=True)
class Rates(_Row):
    """Attempts finished in the last minute by outcome."""

    delivered: int
    failed: int
