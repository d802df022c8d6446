"""A real HTTP receiver on 127.0.0.1 that records every request; a behaviour decides each answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Arrival:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


async def ok(request: web.Request, n: int) -> web.StreamResponse:
    """Answer 200."""
    return web.Response(status=200, text="ok")


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1:<random port> that logs arrivals; `behaviour` decides each answer.

    The behaviour gets the request and the number of requests seen so far with the same webhook-id.
    """

    behaviour: Behaviour = ok
    arrivals: list[Arrival] = field(default_factory=list)
    in_flight: int = 0  # requests being answered now (the behaviour sees itself counted)
    most_in_flight: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _counts: dict[str, int] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        message_id = request.headers.get("webhook-id", "")
        n = self._counts.get(message_id, 0)
        self._counts[message_id] = n + 1
        self.arrivals.append(Arrival(request.path, dict(request.headers), body, time.monotonic()))
        self._changed.set()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self.behaviour(request, n)
        finally:
            self.in_flight -= 1

    def ids(self) -> set[str]:
        return {a.message_id for a in self.arrivals}

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate()` holds; fail after `timeout` seconds (a liveness bound, not a speed test)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout} s; {len(self.arrivals)} arrivals")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))

    async def wait_count(self, n: int, timeout: float = 30.0) -> None:
        await self.wait_for(lambda: len(self.arrivals) >= n, timeout)
