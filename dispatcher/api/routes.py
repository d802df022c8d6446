"""The route table: each route declared once (method, path, dialect, roles, request and response shapes,
handler). The application, its authentication and errors, and /openapi.json are all built from it.

A handler gets a `Call` (the request, the caller's scope, the validated body and query) and returns a `Reply`.
Errors take the shape of the matched route's dialect; for an unknown path or method, the dialect of the
declared routes nearest to it (no prefix lists to keep in step).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from dispatcher.api.http import (
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    ApiError,
    Dialect,
    csrf_matches,
    error_response,
    from_resource,
    json_body,
    path_id,
    path_uuid,
)
from dispatcher.resources import Context, Invalid, ResourceError, Scope
from dispatcher.tokens import digest, well_formed
from dispatcher.vocab import Role

log = structlog.get_logger("dispatcher.api")

ANY_ROLE = frozenset(Role)
READ = frozenset({Role.ADMIN, Role.VIEWER})
ADMIN = frozenset({Role.ADMIN})


@dataclass(frozen=True, slots=True)
class Call:
    """One request to a route: who calls, and what they sent, validated by the route's shapes."""

    request: web.Request
    ctx: Context
    scope: Scope
    body: Any
    query: Any

    def id(self, what: str) -> int:
        """The integer `{id}` of the path (not a valid id: not found)."""
        return path_id(self.request, what)

    def uuid(self, what: str) -> UUID:
        """The UUID `{id}` of the path (not a valid UUID: not found)."""
        return path_uuid(self.request, what)


@dataclass(frozen=True, slots=True)
class Reply:
    """A handler's answer: a response shape (or None for an empty body), its status and extra headers."""

    body: BaseModel | None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


CONTEXT = web.AppKey("context", Context)
"""The API's context in its application, for public (raw) routes."""

Handler = Callable[[Call], Awaitable[Reply]]
RawHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One operation of the API."""

    method: str
    path: str
    dialect: Dialect
    summary: str
    handler: Handler | None = None
    roles: frozenset[Role] = ANY_ROLE
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    # Public routes (health, metrics, the document itself) take the request as it is and need no token.
    raw: RawHandler | None = None
    content_type: str = "application/json"

    @property
    def public(self) -> bool:
        return self.raw is not None

    @property
    def operation_id(self) -> str:
        name = self.handler.__name__ if self.handler is not None else self.raw.__name__ if self.raw else "op"
        return f"{self.dialect}_{name}"


def _segments(path: str) -> list[str]:
    return [part for part in path.strip("/").split("/") if part]


def _shared_prefix(template: list[str], actual: list[str]) -> int:
    count = 0
    for want, got in zip(template, actual, strict=False):
        if want != got and not want.startswith("{"):
            break
        count += 1
    return count


def dialect_of(routes: Sequence[Route], method: str, path: str) -> Dialect:
    """The dialect for an error on `method path` that matched no route: that of the declared routes sharing the
    longest path prefix with it (those of the same method first); native when they disagree."""
    actual = _segments(path)
    best: list[Route] = []
    best_length = 0
    for route in routes:
        length = _shared_prefix(_segments(route.path), actual)
        if length > best_length:
            best, best_length = [route], length
        elif length == best_length and length > 0:
            best.append(route)
    same_method = [route for route in best if route.method == method] or best
    dialects = {route.dialect for route in same_method}
    return dialects.pop() if len(dialects) == 1 else "native"


async def authenticate(ctx: Context, request: web.Request) -> Scope:
    """The caller of `Authorization: Token <t>` or `Bearer <t>`, or of the console's session cookie (with the
    session's CSRF token in X-CSRF-Token for any change); 401 otherwise (403 for a change without the CSRF token)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header and (session := request.cookies.get(SESSION_COOKIE)):
        scheme, token = "token", session
        if request.method not in SAFE_METHODS and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            raise ApiError(403, "csrf", f"a change made with the console's session needs its {CSRF_HEADER} header")
    if scheme.lower() not in ("token", "bearer") or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Token <token> (or Bearer <token>)")
    if not well_formed(token.strip()):
        raise ApiError(401, "unauthorized", "the token is not valid (unknown or revoked)")
    caller = await ctx.db.authenticate(digest=digest(token.strip()))
    if caller is None:
        raise ApiError(401, "unauthorized", "the token is not valid (unknown or revoked)")
    return Scope(caller.organisation, Role(caller.role), caller.id, caller.webhook_id)


def validated(model: type[BaseModel], data: Any) -> BaseModel:
    """`data` as `model`; the first field at fault is an Invalid naming it (as sent: aliases, not attributes), with
    every problem pydantic found in it (a union's alternatives are joined with "or")."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        field = str(errors[0]["loc"][0]) if errors[0]["loc"] else "body"
        problems: list[str] = []
        for error in errors:
            if (str(error["loc"][0]) if error["loc"] else "body") != field:
                continue
            text = "is not a field of this request" if error["type"] == "extra_forbidden" else error["msg"]
            text = text[:1].lower() + text[1:]
            if text not in problems:
                problems.append(text)
        raise Invalid(field, f"{field}: {' or '.join(problems)}") from None


def _endpoint(ctx: Context, route: Route) -> RawHandler:
    """The aiohttp handler of a route: authenticate, check the role, validate, run, answer in the dialect."""
    handler = route.handler
    assert handler is not None

    async def endpoint(request: web.Request) -> web.StreamResponse:
        try:
            scope = await authenticate(ctx, request)
            if scope.role not in route.roles:
                needs = " or ".join(sorted(route.roles))
                raise ApiError(403, "forbidden", f"a {scope.role} token may not do this; it needs {needs}")
            body = query = None
            if route.query is not None:
                query = validated(route.query, dict(request.query))
            if route.body is not None:
                body = validated(route.body, await json_body(request, ctx.config.api.max_body_bytes))
            reply = await handler(Call(request, ctx, scope, body, query))
        except ResourceError as exc:
            return error_response(from_resource(exc, route.dialect), route.dialect)
        except ApiError as exc:
            return error_response(exc, route.dialect)
        if reply.body is None:
            return web.Response(status=reply.status, headers=reply.headers)
        return web.json_response(
            reply.body.model_dump(mode="json", exclude_unset=True), status=reply.status, headers=reply.headers
        )

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    return endpoint


def errors_middleware(routes: Sequence[Route]) -> Any:
    """Unknown routes, wrong methods and crashes as JSON errors in the nearest routes' dialect."""

    @web.middleware
    async def json_errors(request: web.Request, handler: RawHandler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
            message = f"no route for {request.method} {request.path}" if exc.status in (404, 405) else exc.reason
            dialect = dialect_of(routes, request.method, request.path)
            return error_response(ApiError(exc.status, code, message), dialect)
        except Exception as exc:
            log.error("api.error", path=request.path, error=repr(exc))
            dialect = dialect_of(routes, request.method, request.path)
            return error_response(ApiError(500, "internal", "internal error; see the daemon's log"), dialect)

    return json_errors


async def _no_store(request: web.Request, response: web.StreamResponse) -> None:
    """Answers hold secrets and live state: never cached, never sniffed as another type."""
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def build_app(ctx: Context | None, routes: Sequence[Route]) -> web.Application:
    """An application serving `routes` (routes with a handler need `ctx`)."""
    app = web.Application(middlewares=[errors_middleware(routes)])
    if ctx is not None:
        app[CONTEXT] = ctx  # for public routes that read the database (4me's verification callback)
    app.on_response_prepare.append(_no_store)
    for route in routes:
        if route.raw is not None:
            app.router.add_route(route.method, route.path, route.raw)
        else:
            assert ctx is not None, f"{route.method} {route.path} needs the API's context"
            app.router.add_route(route.method, route.path, _endpoint(ctx, route))
    return app
