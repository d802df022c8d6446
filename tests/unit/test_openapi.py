"""/openapi.json is generated from the route table: it documents exactly the routes the application registers,
and it is a valid OpenAPI 3.1 document."""

from __future__ import annotations

from typing import Any

from openapi_spec_validator import validate

from dispatcher.api import app
from dispatcher.config import load_config
from dispatcher.resources import Context
from tests.support.openapi import _public_routes, the_document


def registered() -> set[tuple[str, str]]:
    """(method, path) of every route the API's application registers (its handlers are never called here)."""
    application = app(Context(None, load_config(environ={})), _public_routes())  # type: ignore[arg-type]
    found = set()
    for route in application.router.routes():
        info: dict[str, Any] = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        found.add((route.method, path))
    return found


def test_every_registered_route_is_documented_and_every_documented_one_registered() -> None:
    """The document and the application come from one table: neither has a route the other lacks."""
    documented = {
        (method.upper(), path) for path, operations in the_document()["paths"].items() for method in operations
    }
    assert registered() == documented
    assert ("POST", "/configs/webhook") in documented and ("GET", "/metrics") in documented


def test_the_document_is_valid_openapi_3_1() -> None:
    """openapi-spec-validator accepts it; every operation has an id, a summary and its responses."""
    document = the_document()
    validate(document)
    assert document["openapi"] == "3.1.0"
    ids = []
    for operations in document["paths"].values():
        for operation in operations.values():
            ids.append(operation["operationId"])
            assert operation["summary"] and operation["responses"], operation
    assert len(ids) == len(set(ids)), sorted(ids)


def test_management_routes_document_their_auth_and_error_shape() -> None:
    """Token routes say so (security, 401, 403) and answer errors in their dialect's schema; public ones do not."""
    paths = the_document()["paths"]
    create = paths["/configs/webhook"]["post"]
    assert create["security"] == [{"token": []}]
    assert create["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/RicloudError")
    assert {"201", "400", "401", "403", "413"} <= set(create["responses"])
    tokens = paths["/tokens"]["post"]
    assert tokens["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/NativeError")
    assert "security" not in paths["/healthz"]["get"]
    query = {p["name"] for p in paths["/configs/webhook"]["get"]["parameters"]}
    assert {"state", "limit", "starting_after", "date_created[gt]", "date_created[lte]"} <= query
