"""/console: the page, its static files and the session.

The page is plain HTML, ES modules and CSS served from `static/` (no build step). Signing in posts an API token to
`POST /console/session`, which checks it and sets it in an HttpOnly, SameSite=Strict cookie; the API accepts that
cookie as the token, and for any change only with the session's CSRF token in `X-CSRF-Token` (the page gets it
from `GET /console/session`). Every answer carries a Content-Security-Policy without inline script or style and
`frame-ancestors 'none'`. Producer tokens cannot sign in: the console is for admins and viewers.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from dispatcher.api.http import CSRF_HEADER, SESSION_COOKIE, ApiError, csrf_matches, csrf_token, error_response
from dispatcher.api.routes import CONTEXT
from dispatcher.resources import Scope
from dispatcher.tokens import digest, well_formed
from dispatcher.vocab import Role

PREFIX = "/console"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain",
}
MAX_SIGN_IN_BYTES = 4096


def _static_files() -> dict[str, tuple[bytes, str]]:
    """Every file of static/ (read once): name -> (content, content type). Only these names are served."""
    found: dict[str, tuple[bytes, str]] = {}
    root = resources.files("dispatcher.console").joinpath("static")
    for entry in root.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
        if entry.is_file() and suffix in _TYPES:
            kind = _TYPES[suffix]
            found[entry.name] = (entry.read_bytes(), f"{kind}; charset=utf-8" if kind.startswith("text") else kind)
    return found


def _error(status: int, code: str, message: str) -> web.Response:
    return error_response(ApiError(status, code, message), "native")


async def _caller(request: web.Request, token: str) -> Scope | None:
    """The scope of a live admin or viewer token; None for anything else."""
    token = token.strip()
    if not well_formed(token):
        return None
    caller = await request.app[CONTEXT].db.authenticate(digest=digest(token))
    if caller is None:
        return None
    return Scope(caller.organisation, Role(caller.role), caller.id, caller.webhook_id)


def _session_json(scope: Scope, token: str) -> dict[str, Any]:
    return {"organisation": scope.organisation, "role": str(scope.role), "csrf_token": csrf_token(token)}


class Console:
    """The handlers of /console."""

    def __init__(self) -> None:
        self._files = _static_files()

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{PREFIX}/")

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self._files or name == "index.html":
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        content, kind = self._files[name]
        return web.Response(body=content, headers={"Content-Type": kind})

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        """POST /console/session {"token"}: a JSON body only (a cross-site form cannot send one), from this
        origin when the browser names one."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            return _error(403, "origin", "sign in from the console's own page")
        if request.content_type != "application/json":
            return _error(415, "unsupported_media_type", 'send the token as JSON: {"token": "..."}')
        raw = await request.content.read(MAX_SIGN_IN_BYTES + 1)
        try:
            body = json.loads(raw) if len(raw) <= MAX_SIGN_IN_BYTES else None
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            return _error(400, "invalid", 'send the token as JSON: {"token": "..."}')
        scope = await _caller(request, token)
        if scope is None:
            return _error(401, "unauthorized", "the token is not valid (unknown or revoked)")
        if scope.role not in (Role.ADMIN, Role.VIEWER):
            return _error(403, "forbidden", f"a {scope.role} token cannot sign in to the console")
        response = web.json_response(_session_json(scope, token.strip()))
        # Secure over HTTPS, also when a reverse proxy terminates TLS (and says so in X-Forwarded-Proto).
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        response.set_cookie(SESSION_COOKIE, token.strip(), path="/", httponly=True, samesite="Strict", secure=secure)
        return response

    async def session(self, request: web.Request) -> web.StreamResponse:
        """GET /console/session: who is signed in, and the session's CSRF token; 401 when nobody is."""
        token = request.cookies.get(SESSION_COOKIE, "")
        scope = await _caller(request, token) if token else None
        if scope is None or scope.role not in (Role.ADMIN, Role.VIEWER):
            return _error(401, "unauthorized", "not signed in")
        return web.json_response(_session_json(scope, token.strip()))

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        """DELETE /console/session (with the CSRF token): the cookie is cleared."""
        token = request.cookies.get(SESSION_COOKIE)
        if token and not csrf_matches(token, request.headers.get(CSRF_HEADER)):
            return _error(403, "csrf", f"signing out needs the session's {CSRF_HEADER} header")
        response = web.Response(status=204)
        response.del_cookie(SESSION_COOKIE, path="/")
        return response


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


def mount(app: web.Application) -> None:
    """Add /console to the API's application (which holds the API's context)."""
    console = Console()
    app.router.add_get(PREFIX, console.redirect)
    app.router.add_get(f"{PREFIX}/", console.page)
    app.router.add_get(PREFIX + "/static/{name}", console.static)
    app.router.add_post(f"{PREFIX}/session", console.sign_in)
    app.router.add_get(f"{PREFIX}/session", console.session)
    app.router.add_delete(f"{PREFIX}/session", console.sign_out)
    app.on_response_prepare.append(_security_headers)
