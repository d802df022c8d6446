"""The management API (aiohttp.web): the ricloud dialect and native routes, on the ops server's listener."""

from __future__ import annotations

from aiohttp import web

from dispatcher.api import native, ricloud
from dispatcher.api.common import Context


def install(app: web.Application, ctx: Context) -> None:
    """Add every management route to `app` (which already answers unknown routes with JSON errors)."""
    ricloud.install(app, ctx)
    native.install(app, ctx)
