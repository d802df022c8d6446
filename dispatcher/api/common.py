"""What every API route shares: authentication, roles, JSON bodies, errors in each dialect, paging."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from aiohttp import web

from dispatcher.config import Config
from dispatcher.db import Database
from dispatcher.tokens import digest

Dialect = Literal["ricloud", "native"]
Role = Literal["admin", "producer", "viewer"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: their token's id, organisation, role and bound webhook."""

    token_id: int
    organisation: str
    role: str
    webhook_id: int | None


@dataclass(frozen=True, slots=True)
class Context:
    """What the route handlers need: the API's own pool and the configuration."""

    db: Database
    config: Config


class ApiError(Exception):
    """An error answered as JSON; `field` names the input at fault."""

    def __init__(
        self, status: int, code: str, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


# Ids are PostgreSQL integers.
MAX_ID = 2**31 - 1


def path_id(request: web.Request, what: str) -> int:
    """The integer id in the path; anything else (not a number, out of range) is simply not found."""
    try:
        value = int(request.match_info["id"])
    except ValueError:
        raise not_found(what) from None
    if not 1 <= value <= MAX_ID:
        raise not_found(what)
    return value


def body_id(value: object, field: str) -> int | None:
    """An id (or null) given in a body; a whole resource with an `id` is accepted too (ricloud-py sends those)."""
    if value is None:
        return None
    if isinstance(value, dict) and "id" in value:
        value = value["id"]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise invalid(field, f"{field} must be an id or null")
    try:
        number = int(value)
    except ValueError:
        raise invalid(field, f"{field} must be an id or null") from None
    if not 1 <= number <= MAX_ID:
        raise invalid(field, f"{field}: no such id")
    return number


def not_found(what: str) -> ApiError:
    """The answer for a record that does not exist or belongs to another organisation."""
    return ApiError(404, "not_found", f"no such {what}")


def invalid(field: str, message: str) -> ApiError:
    """A validation error naming the field (400 in ricloud's dialect)."""
    return ApiError(400, "invalid_field", message, field=field)


def error_response(error: ApiError, dialect: Dialect) -> web.Response:
    """The error in the dialect's shape: ricloud's {error, message, params}, else {error: {code, message, field}}."""
    if dialect == "ricloud":
        body: dict[str, Any] = {
            "error": error.code,
            "message": error.message,
            "params": {error.field: error.message} if error.field else {},
        }
    else:
        body = {"error": {"code": error.code, "message": error.message, "field": error.field}}
    return web.json_response(body, status=error.status, headers=error.headers)


Handler = Callable[[web.Request, Context, Caller], Awaitable[web.StreamResponse]]


def route(ctx: Context, dialect: Dialect, roles: tuple[Role, ...], handler: Handler) -> Callable[..., Any]:
    """Wrap a handler: authenticate, check the role, answer errors as JSON in the dialect's shape."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            caller = await authenticate(ctx.db, request)
            if caller.role not in roles:
                raise ApiError(
                    403, "forbidden", f"a {caller.role} token may not do this; it needs {' or '.join(roles)}"
                )
            return await handler(request, ctx, caller)
        except ApiError as exc:
            return error_response(exc, dialect)

    return wrapped


async def authenticate(db: Database, request: web.Request) -> Caller:
    """The caller of `Authorization: Token <t>` or `Bearer <t>`; 401 otherwise."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() not in ("token", "bearer") or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Token <token> (or Bearer <token>)")
    row = await db.fetchrow("authenticate", digest(token.strip()))
    if row is None:
        raise ApiError(401, "unauthorized", "the token is not valid (unknown or revoked)")
    return Caller(row["id"], row["organisation"], row["role"], row["webhook_id"])


async def json_body(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object whatever the Content-Type; empty or `null` is {}; over `max_bytes` is 413."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "too_large", f"the body is over {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(max_bytes + 1 - size):  # read() returns what is buffered
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "too_large", f"the body is over {max_bytes} bytes")
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return value


def int_param(
    value: str | None, field: str, *, default: int | None = None, low: int = 1, high: int = 100
) -> int | None:
    """An integer query parameter within [low, high]."""
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise invalid(field, f"{field} must be an integer") from None
    if not low <= number <= high:
        raise invalid(field, f"{field} must be between {low} and {high}")
    return number


def time_param(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 / RFC 3339 time query parameter (a trailing Z is accepted); naive times are UTC."""
    if value is None or value == "":
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise invalid(field, f"{field} must be a date-time like 2026-11-22T09:27:30Z") from None
    if moment.tzinfo is None:
        from datetime import UTC

        moment = moment.replace(tzinfo=UTC)
    return moment


async def rate_limited(db: Database, caller: Caller, action: str, limit: int, window: int) -> None:
    """429 with Retry-After once `caller` has used `action` `limit` times in the current `window` seconds."""
    row = await db.fetchrow("rate_limit_hit", caller.token_id, action, limit, window)
    assert row is not None
    if not row["allowed"]:
        retry = max(1, int(row["retry_after"]))
        raise ApiError(
            429,
            "rate_limited",
            f"at most {limit} {action} requests per {window} s per token; try again in {retry} s",
            headers={"Retry-After": str(retry)},
        )
