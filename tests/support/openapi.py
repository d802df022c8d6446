"""Every JSON answer the API tests receive is checked against /openapi.json: the documented schema of the route
that answered and of its status (an undocumented status of a declared route fails the test too)."""

from __future__ import annotations

import functools
import re
from typing import Any

from jsonschema import Draft202012Validator

from dispatcher.api import ROUTES
from dispatcher.api.openapi import document
from dispatcher.api.routes import Route


def _public_routes() -> tuple[Route, ...]:
    """The health and metrics routes as the daemon declares them (their handlers are never called here)."""
    from dispatcher.ops_http import OpsServer

    server = OpsServer(None, None, listener=None, stopping=None)  # type: ignore[arg-type]
    return server.routes()


@functools.cache
def the_document() -> dict[str, Any]:
    """The document the daemon serves (it is built from the same table)."""
    return document((*ROUTES, *_public_routes()))


@functools.cache
def _matchers() -> list[tuple[str, re.Pattern[str], str]]:
    found = []
    for path, operations in the_document()["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\{\w+\\}", "[^/]+", re.escape(path)) + "$")
        for method in operations:
            found.append((method.upper(), pattern, path))
    # Literal paths before templates (/configs/webhook before /configs/webhook/{id} cannot clash, but keep it so).
    return sorted(found, key=lambda item: item[2].count("{"))


def check_reply(method: str, path: str, status: int, body: Any, content_type: str) -> None:
    """Fail when a JSON answer of a documented route does not match its documented schema for `status`."""
    if not content_type.startswith("application/json"):
        return
    path = path.split("?", 1)[0]
    found = [template for want, pattern, template in _matchers() if want == method.upper() and pattern.match(path)]
    if not found:
        return  # no such route: the router's 404/405, whose shape the error tests assert
    template = found[0]
    document_ = the_document()
    responses = document_["paths"][template][method.lower()]["responses"]
    documented = responses.get(str(status))
    assert documented is not None, f"{method} {template} answered {status}, which /openapi.json does not document"
    schema = documented.get("content", {}).get("application/json", {}).get("schema")
    if not schema:
        return
    validator = Draft202012Validator({**schema, "components": document_["components"]})
    problems = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not problems, f"{method} {path} -> {status} does not match its documented schema: " + "; ".join(
        f"{list(p.path)}: {p.message}" for p in problems[:5]
    )
