"""/openapi.json: an OpenAPI 3.1 document generated from the route table and its pydantic shapes."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dispatcher import __version__
from dispatcher.api import models as m
from dispatcher.api.routes import Route

REF = "#/components/schemas/{model}"
_PARAM = re.compile(r"{(\w+)}")
_ERROR_TEXT = {
    400: "a value is not valid (the error names its field)",
    401: "no token, or not a valid one",
    403: "the token's role may not do this",
    404: "no such record in the caller's organisation",
    413: "the body is too large",
    422: "the record was refused (the error names the field)",
    429: "rate-limited: see Retry-After",
}


def _models(routes: Sequence[Route]) -> list[tuple[type[BaseModel], Any]]:
    found: list[tuple[type[BaseModel], Any]] = [(m.RicloudError, "serialization"), (m.NativeError, "serialization")]
    for route in routes:
        for model, mode in ((route.body, "validation"), (route.response, "serialization")):
            if model is not None and (model, mode) not in found:
                found.append((model, mode))
    return found


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(by_alias=True, ref_template=REF)
    return [
        {"name": name, "in": "query", "required": False, "schema": {k: v for k, v in prop.items() if k != "title"}}
        for name, prop in schema.get("properties", {}).items()
    ]


def _operation(route: Route, ref: dict[Any, str]) -> dict[str, Any]:
    error_schema = {"$ref": ref[(m.RicloudError if route.dialect == "ricloud" else m.NativeError, "serialization")]}
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.dialect],
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM.findall(route.path)
    ]
    if route.query is not None:
        parameters += _query_parameters(route.query)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"$ref": ref[(route.body, "validation")]}}},
        }
    if route.response is not None:
        success: dict[str, Any] = {
            "description": route.summary,
            "content": {route.content_type: {"schema": {"$ref": ref[(route.response, "serialization")]}}},
        }
    elif route.content_type != "application/json":
        success = {"description": route.summary, "content": {route.content_type: {"schema": {"type": "string"}}}}
    else:
        success = {"description": route.summary}
    responses: dict[str, Any] = {str(route.status): success}
    codes = set(route.errors)
    if not route.public:
        codes |= {401, 403}
        operation["security"] = [{"token": []}]
    if route.body is not None:
        codes |= {400, 413}
    for code in sorted(codes):
        responses[str(code)] = {
            "description": _ERROR_TEXT.get(code, "error"),
            "content": {"application/json": {"schema": error_schema}},
        }
    operation["responses"] = responses
    return operation


def document(routes: Sequence[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (itself included: GET /openapi.json)."""
    models = _models(routes)
    keys, schemas = models_json_schema(models, ref_template=REF)
    ref = {key: value["$ref"] for key, value in keys.items()}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, ref)
    paths["/openapi.json"] = {
        "get": {
            "operationId": "native_openapi",
            "summary": "This document",
            "tags": ["native"],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {}}}}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dispatcher",
            "version": __version__,
            "description": "Webhook dispatch: the ricloud dialect, native routes, health and metrics.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "Token <token> (or Bearer <token>)",
                }
            },
        },
    }


def route(doc: dict[str, Any]) -> Route:
    """GET /openapi.json, serving `doc` (public: a client generator needs no token)."""
    text = json.dumps(doc)

    async def openapi(request: web.Request) -> web.StreamResponse:
        return web.Response(text=text, content_type="application/json")

    return Route("GET", "/openapi.json", "native", "This document", raw=openapi)
