"""The management API (aiohttp.web): the ricloud dialect and native routes, declared in one route table."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from dispatcher.api import fourme, native, ricloud
from dispatcher.api.openapi import document
from dispatcher.api.openapi import route as openapi_route
from dispatcher.api.routes import Route, build_app
from dispatcher.resources import Context

# Every management route, in the order /openapi.json lists them.
ROUTES: tuple[Route, ...] = (*ricloud.ROUTES, *native.ROUTES, *fourme.ROUTES)


def app(ctx: Context, extra: Sequence[Route] = ()) -> web.Application:
    """The API's application: the management routes, `extra` public routes (health and metrics) and the
    OpenAPI document of them all."""
    routes = (*ROUTES, *extra)
    return build_app(ctx, (*routes, openapi_route(document(routes))))
