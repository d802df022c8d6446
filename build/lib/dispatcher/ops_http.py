"""Health and metrics over HTTP on ``[api] listen``: ``/healthz``, ``/readyz`` and ``/metrics``.

- ``GET /healthz``: the process is up and its event loop answers (200 ``{"status": "ok"}``).
- ``GET /readyz``: 200 when the database answers, its schema is current and (when the worker runs) the LISTEN
  connection is up; else 503 naming each check that is not ready. 503 as well while the daemon drains.
- ``GET /metrics``: the Prometheus text format (:mod:`dispatcher.metrics`); the figures read from the database
  are refreshed at most every ``refresh_interval`` seconds, however often Prometheus scrapes.

The server has its own small pool with a statement timeout, so a slow scrape never takes the worker's
connections. The management API, when it comes, serves on the same listener: :meth:`OpsServer.app` is the
application to add its routes to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from dispatcher.db import LATEST_VERSION, Database, schema_version
from dispatcher.errors import DispatcherError
from dispatcher.listener import Listener
from dispatcher.metrics import Metrics

log = structlog.get_logger("dispatcher.ops_http")


CHECK_TIMEOUT = 3.0  # seconds for /readyz's database query
STATEMENT_TIMEOUT_MS = 5000  # a scrape's queries give up after this


class ListenError(DispatcherError):
    """Cannot listen on [api] listen; is another process using the address?"""


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` as (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# Paths of the ricloud dialect, whose errors ricloud-py parses as {"error", "message", "params"}.
RICLOUD_PREFIXES = ("/configs/", "/tasks", "/key", "/keys", "/organisation")


def error_body(status: int, code: str, message: str, path: str = "", method: str = "GET") -> web.Response:
    """The JSON error shape of the path's dialect: ricloud's on its routes, the native one elsewhere."""
    ricloud = (
        path.startswith(RICLOUD_PREFIXES)
        or path == "/configs/webhook"
        or (method == "GET" and path.startswith("/events"))
    )
    if ricloud:
        return web.json_response({"error": code, "message": message, "params": {}}, status=status)
    return web.json_response({"error": {"code": code, "message": message, "field": None}}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes, wrong methods and crashes as JSON errors instead of aiohttp's text pages."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "http_error")
        message = f"no route for {request.method} {request.path}" if exc.status in (404, 405) else exc.reason
        return error_body(exc.status, code, message, request.path, request.method)
    except Exception as exc:
        log.error("ops_http.error", path=request.path, error=repr(exc))
        return error_body(500, "internal", "internal error; see the daemon's log", request.path, request.method)


class OpsServer:
    """The health, readiness and metrics endpoints, with the database figures behind them."""

    def __init__(
        self,
        listen: str,
        dsn: str,
        metrics: Metrics,
        *,
        listener: Listener | None,
        stopping: asyncio.Event,
        refresh_interval: float = 5.0,
    ) -> None:
        self._listen = listen
        self._dsn = dsn
        self._metrics = metrics
        self._listener = listener
        self._stopping = stopping
        self._refresh_interval = refresh_interval
        self._refreshed_at = -float("inf")
        self._refresh_lock = asyncio.Lock()
        self._db: Database | None = None
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[json_errors])
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics)
        self.address: str | None = None

    async def start(self) -> str:
        """Open the pool and listen; returns the address bound ("host:port", the real port when 0 was asked)."""
        pool: asyncpg.Pool = await asyncpg.create_pool(
            self._dsn,
            min_size=0,
            max_size=2,
            command_timeout=CHECK_TIMEOUT + STATEMENT_TIMEOUT_MS / 1000,
            server_settings={
                "application_name": "dispatcher-ops",
                "statement_timeout": str(STATEMENT_TIMEOUT_MS),
            },
        )
        self._db = Database(pool)
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        host, port = split_listen(self._listen)
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as exc:
            await self.close()
            raise ListenError(f"cannot listen on [api] listen {self._listen!r}: {exc.strerror or exc}") from None
        bound = self._runner.addresses[0]
        self.address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        log.info("api.listening", address=self.address, endpoints=["/healthz", "/readyz", "/metrics"])
        return self.address

    async def close(self) -> None:
        """Stop listening and close the pool."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    # ---- routes -----------------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is up."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Database reachable, schema current, LISTEN connected, not draining."""
        checks = await self.checks()
        not_ready = [name for name, result in checks.items() if result != "ok"]
        body: dict[str, Any] = {"status": "not_ready" if not_ready else "ready", "checks": checks}
        if not_ready:
            body["not_ready"] = not_ready
        return web.json_response(body, status=503 if not_ready else 200)

    async def checks(self) -> dict[str, str]:
        """Each readiness check's result: "ok" or what is wrong."""
        assert self._db is not None
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(CHECK_TIMEOUT), self._db.pool.acquire() as conn:
                version = await schema_version(conn)
        except Exception as exc:  # whatever went wrong, the answer is "not ready", not a 500
            checks["database"] = f"unreachable: {_describe(exc)}"
            checks["schema"] = "unknown: the database is unreachable"
        else:
            checks["database"] = "ok"
            if version is None or version < LATEST_VERSION:
                checks["schema"] = f"at version {version or 0}, this dispatcher needs {LATEST_VERSION}: run migrate"
            else:
                checks["schema"] = "ok"
        if self._listener is not None:
            checks["listener"] = "ok" if self._listener.connected.is_set() else "not connected (reconnecting)"
        checks["process"] = "stopping: draining" if self._stopping.is_set() else "ok"
        return checks

    async def metrics(self, request: web.Request) -> web.Response:
        """The Prometheus exposition, with the database figures at most `refresh_interval` old."""
        await self.refresh()
        return web.Response(body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- database figures --------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the queue figures when the last read is older than the refresh interval; one read at a time."""
        async with self._refresh_lock:
            if time.monotonic() - self._refreshed_at < self._refresh_interval:
                return
            try:
                await self._read_figures()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                self._metrics.database_up.set(0)
                log.warning("metrics.database_unavailable", error=_describe(exc))
            else:
                self._metrics.database_up.set(1)
            # A failed read waits out the interval too: scrapes must not hammer a database in trouble.
            self._refreshed_at = time.monotonic()

    async def _read_figures(self) -> None:
        assert self._db is not None
        db = self._db
        async with asyncio.timeout(STATEMENT_TIMEOUT_MS / 1000 + CHECK_TIMEOUT):
            states = await db.fetch("queue_status")
            ages = await db.fetchrow("oldest_pending")
            webhooks = await db.fetch("webhook_states")
            usage = await db.fetchval("notification_queue_usage")
        assert ages is not None
        self._metrics.set_queue({row["state"]: row["count"] for row in states}, ages["oldest_due_seconds"])
        self._metrics.set_events(ages["unrouted_events"], ages["oldest_unrouted_seconds"])
        self._metrics.set_webhooks(
            {row["state"]: row["count"] for row in webhooks}, sum(row["paused"] for row in webhooks)
        )
        self._metrics.notification_queue_usage.set(usage or 0.0)


def _describe(exc: BaseException) -> str:
    """A short reason for a failed check. Connection errors name hosts and sockets, never passwords."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
