"""The API's request and response shapes, declared once (pydantic v2): they validate what comes in, document
what goes out, and /openapi.json is generated from them.

Times are strings in RFC 3339 UTC with milliseconds and a Z, as every dialect shows them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from dispatcher.api.http import MAX_ID, parse_time
from dispatcher.vocab import Role, TaskState, WebhookState

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"}, examples=["2026-11-22T09:27:30.123Z"])]
QueryTime = Annotated[datetime | None, BeforeValidator(parse_time)]
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


def _not_a_boolean(value: Any) -> Any:
    # JSON true is not an id, though pydantic's int would read it as 1.
    if isinstance(value, bool):
        raise ValueError("expected an id, not true or false")
    return value


# An id as ricloud-py sends it: a number, a numeric string, or the whole resource with its "id"; null unsets.
IdRef = Annotated[
    int | str | dict[str, Any] | None,
    BeforeValidator(_not_a_boolean),
    Field(json_schema_extra={"description": "an id, or an object with an id, or null"}),
]


class Shape(BaseModel):
    """A response shape: fields as named."""

    model_config = ConfigDict(frozen=True)


class Body(BaseModel):
    """A request body: unknown fields are ignored unless the body says otherwise."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class Strict(BaseModel):
    """A request body or query whose unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ---- errors ----------------------------------------------------------------------------------------------


class RicloudError(Shape):
    """ricloud's error: what ricloud-py prints."""

    error: str
    message: str
    params: dict[str, str]


class NativeErrorDetail(Shape):
    code: str
    message: str
    field: str | None


class NativeError(Shape):
    """Every other route's error."""

    error: NativeErrorDetail


# ---- ricloud --------------------------------------------------------------------------------------------


class WebhookConfigCreate(Body):
    url: str = Field(description="where events are POSTed (to <url>/<event id>)")


class WebhookConfigUpdate(Strict):
    url: str | None = None
    state: WebhookState | None = Field(None, description="only new (retest) or deactivated")


class WebhookConfig(Shape):
    id: int
    resource: Literal["webhook_config"] = "webhook_config"
    organisation: str
    url: str = Field(description="credentials in the URL are masked")
    state: WebhookState
    date_created: Timestamp
    secret: str | None = Field(None, description="only in the create response")


class WebhookConfigList(Shape):
    resource: Literal["list"] = "list"
    data: list[WebhookConfig]
    has_more: bool


class WebhookConfigQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    state: str | None = Field(None, description="comma-separated states; deactivated ones only when asked")
    date_created: QueryTime = Field(None, description="created at or after")
    date_created_gt: QueryTime = Field(None, alias="date_created[gt]")
    date_created_gte: QueryTime = Field(None, alias="date_created[gte]")
    date_created_lt: QueryTime = Field(None, alias="date_created[lt]")
    date_created_lte: QueryTime = Field(None, alias="date_created[lte]")
    limit: int = Field(20, ge=1, le=100)
    starting_after: Id | None = None


class Task(Shape):
    id: str
    resource: Literal["task"] = "task"
    type: str
    state: TaskState
    result: dict[str, Any] | None = Field(description="{status, error} once completed")
    date_created: Timestamp
    date_completed: Timestamp | None


class Key(Shape):
    id: int
    resource: Literal["key"] = "key"
    organisation: str
    name: str
    role: Role
    webhook_config: int | None
    date_created: Timestamp
    date_last_used: Timestamp | None
    revoked: bool


class KeyUpdate(Body):
    webhook_config: IdRef = Field(description="a webhook config of this organisation, or null to unbind")


class Organisation(Shape):
    id: str
    resource: Literal["organisation"] = "organisation"
    name: str
    default_webhook_config: int | None
    date_created: Timestamp


class OrganisationUpdate(Body):
    default_webhook_config: IdRef


class Event(Shape):
    id: str
    resource: Literal["event"] = "event"
    type: str = Field(description="the first segment of the event type")
    action: str = Field(description="the rest of the event type")
    data: Any
    state: Literal["pending", "delivered", "failed"]
    retries: int
    date_created: Timestamp
    date_delivered: Timestamp | None


class EventList(Shape):
    resource: Literal["list"] = "list"
    data: list[Event]
    has_more: bool


class EventQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str | None = None
    action: str | None = None
    limit: int = Field(20, ge=1, le=100)
    starting_after: str | None = Field(None, description="an event id")


# ---- native ---------------------------------------------------------------------------------------------


class EventCreate(Strict):
    type: str = Field(description="an event type of the catalogue, e.g. request.create")
    payload: Any = Field(None, description="the event's data (default {}); `data` is accepted too")
    data: Any = None
    object_id: str | int | None = None
    actor: dict[str, Any] | None = None
    idempotency_key: str | None = Field(None, max_length=255, description="or the Idempotency-Key header")


class EventCreated(Shape):
    id: str
    resource: Literal["event"] = "event"
    type: str


class TokenCreate(Body):
    role: Role
    name: str = ""
    webhook_id: IdRef = None


class Token(Shape):
    id: int
    organisation: str
    role: Role
    name: str
    webhook_id: int | None
    created_at: Timestamp
    last_used_at: Timestamp | None
    revoked_at: Timestamp | None
    token: str | None = Field(None, description="only in the create response")


class TokenList(Shape):
    data: list[Token]
    next_cursor: int | None


class TokenQuery(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    limit: int = Field(25, ge=1, le=100)
    cursor: Id | None = None


# ---- health and metrics ---------------------------------------------------------------------------------


class Health(Shape):
    status: Literal["ok"]


class Readiness(Shape):
    """The checks (each "ok" or what is wrong) only for callers on loopback or with a valid token."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, str] | None = None
    not_ready: list[str] | None = None
