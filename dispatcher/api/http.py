"""What every route shares at the HTTP level: bodies, path and query values, errors in each dialect's shape."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from aiohttp import web

from dispatcher.resources import Busy, Conflict, Forbidden, Invalid, NotFound, RateLimited, Rejected, ResourceError

# ricloud answers errors in its own shape; native and 4me as {"error": {"code", "message", "field"}}.
Dialect = Literal["ricloud", "native", "4me"]

# Ids are PostgreSQL integers.
MAX_ID = 2**31 - 1

# The console's session: the token in an HttpOnly, SameSite=Strict cookie; a change (any method but GET and HEAD)
# made with the cookie must also send the CSRF token, which only the signed-in page learns (GET /console/session).
SESSION_COOKIE = "dispatcher_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD"})


def csrf_token(token: str) -> str:
    """The CSRF token of a session: an HMAC of a fixed label under the session's API token, so that it needs no
    storage, holds in every process, and cannot be made without the token the HttpOnly cookie hides."""
    return hmac.new(token.encode(), b"dispatcher console csrf v1", hashlib.sha256).hexdigest()


def csrf_matches(token: str, sent: str | None) -> bool:
    """Whether `sent` is the CSRF token of the session of `token` (compared in constant time)."""
    return sent is not None and hmac.compare_digest(csrf_token(token).encode(), sent.encode())


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


def from_resource(error: ResourceError, dialect: Dialect = "native") -> ApiError:
    """The HTTP status of an operation's refusal (4me answers a value it does not accept with 422)."""
    match error:
        case NotFound():
            return ApiError(404, error.code, error.message)
        case Invalid():
            return ApiError(422 if dialect == "4me" else 400, error.code, error.message, field=error.field)
        case Rejected():
            message = f"{error.message} ({error.hint})" if error.hint else error.message
            return ApiError(422, error.code, message, field=error.field)
        case Forbidden():
            return ApiError(403, error.code, error.message)
        case RateLimited():
            return ApiError(429, error.code, error.message, headers={"Retry-After": str(error.retry_after)})
        case Busy() | Conflict():
            return ApiError(409, error.code, error.message, field=error.field)
        case _:
            return ApiError(400, error.code, error.message, field=error.field)


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


def path_id(request: web.Request, what: str) -> int:
    """The integer id in the path; anything else (not a number, out of range) is simply not found."""
    try:
        value = int(request.match_info["id"])
    except ValueError:
        raise NotFound(what) from None
    if not 1 <= value <= MAX_ID:
        raise NotFound(what)
    return value


def path_uuid(request: web.Request, what: str) -> UUID:
    """The UUID in the path; anything else is not found."""
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        raise NotFound(what) from None


def body_id(value: object, field: str) -> int | None:
    """An id (or null) given in a body; a whole resource with an `id` is accepted too (ricloud-py sends those)."""
    if value is None:
        return None
    if isinstance(value, dict) and "id" in value:
        value = value["id"]
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise Invalid(field, f"{field} must be an id or null")
    try:
        number = int(value)
    except ValueError:
        raise Invalid(field, f"{field} must be an id or null") from None
    if not 1 <= number <= MAX_ID:
        raise Invalid(field, f"{field}: no such id")
    return number


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
        value = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite)
    except ValueError as exc:  # malformed; NaN, Infinity or 1e999; an integer of over 4,300 digits
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is not JSON this API takes: it is nested too deeply") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return value


def _refuse_constant(name: str) -> object:
    """NaN, Infinity and -Infinity: Python's json accepts them, JSON (and PostgreSQL's jsonb) does not."""
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent, which must be a finite float (1e999 is not)."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


def parse_time(value: object) -> object:
    """An ISO 8601 / RFC 3339 time as a query gives it: a trailing Z, or a `+` that became a space; naive is UTC."""
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise ValueError("must be a date-time like 2026-11-22T09:27:30Z") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
