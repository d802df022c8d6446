"""Shapes of the native recovery routes: the delivery log, redelivery, replays, webhooks' pause and rotation,
event types and organisation settings. Times are RFC 3339 UTC with milliseconds and a Z."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from dispatcher.api.http import parse_time
from dispatcher.api.models import QueryTime, Shape, Strict, Timestamp
from dispatcher.vocab import DeliveryKind, DeliveryState, WebhookFormat, WebhookState

Time = Annotated[datetime, BeforeValidator(parse_time)]
ReplayState = Literal["running", "completed", "cancelled"]


class Delivery(Shape):
    id: str
    event_id: str = Field(description="the message id receivers de-duplicate on (the webhook-id header)")
    webhook_id: int
    event_type: str
    kind: DeliveryKind
    state: DeliveryState
    dead_letter: bool = Field(description="failed after its attempts (not a test): replay or redeliver it")
    attempts: int
    max_attempts: int
    next_attempt_at: Timestamp | None = Field(description="when it is tried next (pending only)")
    last_status: int | None
    last_error: str | None
    replay_id: str | None
    created_at: Timestamp
    finished_at: Timestamp | None


class DeliveryList(Shape):
    data: list[Delivery]
    next_cursor: str | None


class DeliveryQuery(Strict):
    state: str | None = Field(None, description="comma-separated delivery states")
    kind: str | None = Field(None, description="comma-separated kinds: original, test, redeliver, replay")
    type: str | None = Field(None, description="comma-separated event types or patterns (request.*)")
    since: QueryTime = Field(None, description="created at or after")
    until: QueryTime = Field(None, description="created before")
    cursor: str | None = Field(None, description="the next_cursor of the page before")
    limit: int = Field(25, ge=1, le=100)


class Attempt(Shape):
    number: int
    started_at: Timestamp
    finished_at: Timestamp
    status: int | None
    duration_ms: int
    error_class: str | None
    error: str | None
    response: str | None = Field(description="the start of the response body as stored (at most 4 KiB)")


class RequestSent(Shape):
    url: str = Field(description="credentials masked")
    headers: dict[str, str] = Field(description="without signatures and timestamp; static header values masked")


class DeliveryDetail(Delivery):
    request: RequestSent
    attempt_log: list[Attempt]


class Replay(Shape):
    id: str
    webhook_id: int
    state: ReplayState
    since: Timestamp
    until: Timestamp
    only_failed: bool
    types: list[str] | None
    events_considered: int = Field(description="events of the window walked so far")
    deliveries_created: int
    delivered: int
    failed: int
    in_progress: int
    walked: bool = Field(description="the whole window has been walked")
    error: str | None
    created_at: Timestamp
    completed_at: Timestamp | None


class ReplayList(Shape):
    data: list[Replay]
    next_cursor: str | None


class ReplayCreate(Strict):
    since: Time = Field(description="start of the window (inclusive)")
    until: QueryTime = Field(None, description="end of the window (exclusive; default now); at most 14 days")
    only_failed: bool = Field(True, description="only events whose last delivery to the webhook was not delivered")
    types: list[str] | None = Field(None, description="event types or patterns (default: all)")


class ListQuery(Strict):
    cursor: str | None = None
    limit: int = Field(25, ge=1, le=100)


class Webhook(Shape):
    """A webhook as the native routes show it (no secret)."""

    id: int
    organisation: str
    name: str
    url: str = Field(description="credentials masked")
    events: list[str]
    format: WebhookFormat
    state: WebhookState
    paused: bool
    last_error: str | None
    created_at: Timestamp
    updated_at: Timestamp


class RotateSecret(Strict):
    overlap_seconds: int = Field(86400, ge=0, le=7 * 24 * 3600, description="how long the old secret still signs")


class RotatedSecret(Shape):
    webhook_id: int
    secret: str = Field(description="the new secret, shown this once")
    previous_expires_at: Timestamp = Field(description="when the replaced secrets stop signing")


class EventType(Shape):
    name: str
    description: str
    source: Literal["builtin", "config", "api"]
    created_at: Timestamp


class EventTypeList(Shape):
    data: list[EventType]
    next_cursor: str | None


class EventTypeCreate(Strict):
    name: str
    description: str = ""


class OrganisationSettings(Shape):
    id: str
    name: str
    contact_emails: list[str]
    default_webhook_id: int | None
    created_at: Timestamp


class OrganisationSettingsUpdate(Strict):
    name: str | None = None
    contact_emails: list[str] | None = None


# ---- figures: an organisation's queue, its webhooks' last hour, one webhook's last day ----------------------


class FailingWebhook(Shape):
    id: int
    state: WebhookState
    paused: bool
    last_error: str | None
    failure_count: int = Field(description="failed attempts in a row (tests and 429s not counted)")
    failures_last_hour: int
    oldest_waiting_since: Timestamp | None = Field(description="the oldest pending or held delivery's creation")


class Status(Shape):
    """The caller's organisation's queue and webhooks (figures of its own records only)."""

    deliveries: dict[str, int] = Field(description="deliveries by state (failed tests left out)")
    held: int
    dead_letters: int = Field(description="failed deliveries of events (not tests), until retention prunes them")
    oldest_pending_seconds: float | None = Field(description="how long the oldest due pending delivery has waited")
    unrouted_events: int
    oldest_unrouted_seconds: float | None
    delivered_last_minute: int = Field(description="attempts answered 2xx in the last minute")
    failed_last_minute: int = Field(description="other attempts finished in the last minute")
    webhooks: dict[str, int] = Field(description="live webhooks by state")
    paused_webhooks: int
    failing: list[FailingWebhook] = Field(description="invalid ones first, then the most failures in the last hour")


class HourFigures(Shape):
    attempts: int
    succeeded: int = Field(description="attempts answered 2xx")
    success_rate: float | None = Field(description="succeeded / attempts, null without attempts")
    mean_ms: float | None
    p95_ms: float | None


class WebhookFigures(Shape):
    """A webhook (no secret, header values left out) with its last hour's attempts."""

    id: int
    name: str
    url: str = Field(description="credentials masked")
    events: list[str]
    format: WebhookFormat
    state: WebhookState
    paused: bool
    last_error: str | None
    last_error_at: Timestamp | None
    header_names: list[str]
    rate_limit: float | None
    mail_exceptions_to: str | None
    verification_pending: bool
    created_at: Timestamp
    updated_at: Timestamp
    last_hour: HourFigures


class WebhookFiguresList(Shape):
    data: list[WebhookFigures]


class Minute(Shape):
    minute: Timestamp
    delivered: int = Field(description="attempts answered 2xx")
    failed: int


class WebhookStats(Shape):
    webhook: WebhookFigures
    minutes: list[Minute] = Field(description="the last day's attempts per minute, oldest first (empty ones left out)")
