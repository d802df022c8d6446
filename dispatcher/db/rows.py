"""The rows the named queries return, as frozen values. Field names are the queries' column names.

Fields typed with a vocabulary enum hold the plain string PostgreSQL returned: a StrEnum member equals its string,
so comparisons, `match` and JSON read the same either way, and the claim's hot path converts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """A webhook without its secrets (get_webhook, list_webhooks, list_webhook_configs)."""

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
    # The webhook's JWT policy (4me), all None when it has none; signing_key is a private key PEM or hs256 key.
    policy_id: int | None = None
    policy_disabled: bool | None = None
    jwt_alg: str | None = None
    jwt_audience: str | None = None
    jwt_claim_expires_in: int | None = None
    signing_key: str | None = field(default=None, repr=False)  # never in a log line or an error
    # The webhook's limits: the concurrency its receiver taught (None: the configured cap) and requests per second.
    concurrency_limit: int | None = None
    rate_limit: float | None = None


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
class FailingWebhook(_Row):
    """A webhook that is failing, as `dispatcher status` lists it."""

    id: int
    organisation: str
    state: WebhookState
    paused: bool
    last_error: str | None
    failure_count: int
    failures_last_hour: int
    oldest_waiting_since: datetime | None


@dataclass(frozen=True, slots=True)
class Rates(_Row):
    """Attempts finished in the last minute by outcome."""

    delivered: int
    failed: int


# ---- 4me ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookDetailRow(_Row):
    """A webhook with every field but its secrets (the 4me dialect); `headers` is a JSON object's text."""

    id: int
    organisation: str
    name: str
    description: str
    url: str
    events: list[str]
    format: WebhookFormat
    state: WebhookState
    paused: bool
    policy_id: int | None
    headers: str
    rate_limit: float | None
    mail_exceptions_to: str | None
    source: str | None
    source_id: str | None
    last_error: str | None
    last_error_at: datetime | None
    failure_count: int
    failing_since: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    verify: bool
    verification_pending: bool
    # What its receiver has taught (429/503): the concurrency limit below the configured cap, and Retry-After's time.
    concurrency_limit: int | None = None
    throttled_until: datetime | None = None

    def summary(self) -> WebhookRow:
        """The same webhook as the other dialects read it."""
        return WebhookRow(
            self.id, self.organisation, self.name, self.description, self.url, self.events, self.format, self.state,
            self.paused, self.last_error, self.last_error_at, self.failure_count, self.failing_since, self.version,
            self.created_at, self.updated_at,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class PolicyRow(_Row):
    """A webhook policy without its key."""

    id: int
    organisation: str
    name: str
    disabled: bool
    jwt_alg: str
    jwt_audience: str | None
    jwt_claim_expires_in: int | None
    created_at: datetime
    updated_at: datetime


# ---- recovery: the delivery log, replays, rotation, event types ----------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryLogRow(_Row):
    """A delivery as the log shows it (the delivery_log view)."""

    id: UUID
    organisation: str
    event_id: UUID
    webhook_id: int
    event_type: str
    kind: DeliveryKind
    state: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    replay_id: UUID | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryDetailRow(_Row):
    """A delivery with what its requests were sent with (static headers as JSON text)."""

    id: UUID
    organisation: str
    event_id: UUID
    webhook_id: int
    event_type: str
    kind: DeliveryKind
    state: str
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    replay_id: UUID | None
    created_at: datetime
    finished_at: datetime | None
    format: WebhookFormat
    url: str
    headers: str
    webhook_state: WebhookState
    paused: bool
    webhook_deleted: bool


@dataclass(frozen=True, slots=True)
class AttemptRow(_Row):
    """One HTTP try of a delivery."""

    number: int
    started_at: datetime
    finished_at: datetime
    status: int | None
    error_class: str | None
    error: str | None
    duration_ms: int
    response: str | None


@dataclass(frozen=True, slots=True)
class ReplayRow(_Row):
    """A replay and the progress of the deliveries it made (the replay_progress view)."""

    id: UUID
    organisation: str
    webhook_id: int
    since: datetime
    until: datetime
    only_failed: bool
    types: list[str] | None
    state: str
    max_events: int
    events_considered: int
    deliveries_created: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    scanned_at: datetime | None
    delivered: int
    failed: int
    in_progress: int


@dataclass(frozen=True, slots=True)
class ReplayStepRow(_Row):
    """What one batch of a replay did."""

    id: UUID
    webhook_id: int
    state: str
    considered: int
    created: int
    scanned: bool


@dataclass(frozen=True, slots=True)
class EventTypeRow(_Row):
    """An event type of the catalogue."""

    name: str
    description: str
    source: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class WebhookHourStats(_Row):
    """A webhook's attempts of the last hour: how many, how many answered 2xx, mean and p95 duration (ms)."""

    webhook_id: int
    attempts: int
    succeeded: int
    mean_ms: float
    p95_ms: float


@dataclass(frozen=True, slots=True)
class MinuteCount(_Row):
    """Attempts finished in one minute: answered 2xx (delivered) and not (failed)."""

    minute: datetime
    delivered: int
    failed: int
