"""Health and metrics over HTTP: ``/healthz``, ``/readyz`` and ``/metrics``, served apart from the management API.

With the API on (``[api] enabled``) they share its listener, ``[api] listen``; a worker-only process serves them
alone on ``[worker] listen``.


- ``GET /healthz``: the process is up and its event loop answers (200 ``{"status": "ok"}``).
- ``GET /readyz``: 200 when the database answers, its schema is current and (when the worker runs) the LISTEN
  connection is up; else 503 naming each check that is not ready. 503 as well while the daemon drains.
- ``GET /metrics``: the Prometheus text format (:mod:`dispatcher.metrics`); the figures read from the database
  are refreshed at most every ``refresh_interval`` seconds, however often Prometheus scrapes.

They read through a small pool of their own (built by the composition root, with a statement timeout), so a
slow scrape never takes the worker's connections.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from dispatcher.api.models import Health, Readiness
from dispatcher.api.routes import Route
from dispatcher.db import LATEST_VERSION, Database
from dispatcher.errors import DispatcherError
from dispatcher.listener import Listener
from dispatcher.metrics import Metrics
from dispatcher.resources import status
from dispatcher.tokens import digest, well_formed

log = structlog.get_logger("dispatcher.ops_http")


CHECK_TIMEOUT = 3.0  # seconds for /readyz's database query
STATEMENT_TIMEOUT_MS = 5000  # a scrape's queries give up after this


CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0]


class ListenError(DispatcherError):
    """Cannot listen on the address; is another process using it?"""


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` as (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class OpsServer:
    """The health, readiness and metrics endpoints, with the database figures behind them."""

    def __init__(
        self,
        db: Database,
        metrics: Metrics,
        *,
        listener: Listener | None,
        stopping: asyncio.Event,
        refresh_interval: float = 5.0,
    ) -> None:
        self._db = db
        self._metrics = metrics
        self._listener = listener
        self._stopping = stopping
        self._refresh_interval = refresh_interval
        self._refreshed_at = -float("inf")
        self._refresh_lock = asyncio.Lock()

    def routes(self) -> tuple[Route, ...]:
        """The three public routes, for the API's route table or a listener of their own."""
        return (
            Route("GET", "/healthz", "native", "The process is up", raw=self.healthz, response=Health),
            Route("GET", "/readyz", "native", "Database, schema and listener ready; not draining", raw=self.readyz,
                  response=Readiness, errors=(503,)),
            Route("GET", "/metrics", "native", "Prometheus metrics", raw=self.metrics, content_type=CONTENT_TYPE),
        )  # fmt: skip

    # ---- routes -----------------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """The process is up."""
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """Database reachable, schema current, LISTEN connected, not draining. Each check's reason (which may
        name hosts and sockets) only for a caller on loopback or with a valid token; others get the status."""
        checks = await self.checks()
        not_ready = [name for name, result in checks.items() if result != "ok"]
        body: dict[str, Any] = {"status": "not_ready" if not_ready else "ready"}
        if await self._may_see_details(request):
            body["checks"] = checks
            if not_ready:
                body["not_ready"] = not_ready
        return web.json_response(body, status=503 if not_ready else 200)

    async def _may_see_details(self, request: web.Request) -> bool:
        try:
            if request.remote is not None and ipaddress.ip_address(request.remote).is_loopback:
                return True
        except ValueError:
            pass  # a Unix socket or an unknown peer: not loopback
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() not in ("token", "bearer") or not well_formed(token):
            return False
        try:
            return await self._db.authenticate(digest=digest(token)) is not None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False

    async def checks(self) -> dict[str, str]:
        """Each readiness check's result: "ok" or what is wrong."""
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                version = await self._db.check_schema_version(CHECK_TIMEOUT)
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
        db = self._db
        async with asyncio.timeout(STATEMENT_TIMEOUT_MS / 1000 + CHECK_TIMEOUT):
            now = await status.figures(db)
        self._metrics.set_queue({row.state: row.count for row in now.deliveries}, now.ages.oldest_due_seconds)
        self._metrics.set_events(now.ages.unrouted_events, now.ages.oldest_unrouted_seconds)
        webhooks = {str(row.state): row.count for row in now.webhooks}
        self._metrics.set_webhooks(webhooks, sum(row.paused for row in now.webhooks))
        self._metrics.notification_queue_usage.set(now.notification_queue_usage)


def _describe(exc: BaseException) -> str:
    """A short reason for a failed check. Connection errors name hosts and sockets, never passwords."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class Listening:
    """An application served on one address until closed."""

    def __init__(self, runner: web.AppRunner, address: str) -> None:
        self._runner = runner
        self.address = address

    async def close(self) -> None:
        await self._runner.cleanup()


async def serve(
    app: web.Application, listen: str, setting: str, endpoints: list[str], *, idle_timeout: float
) -> Listening:
    """Serve `app` on `listen` ("host:port"; port 0 picks one); the address bound is logged as api.listening.
    A connection idle (or sending no whole request) for `idle_timeout` seconds is closed."""
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=1.0, keepalive_timeout=idle_timeout
    )
    await runner.setup()
    host, port = split_listen(listen)
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(f"cannot listen on {setting} {listen!r}: {exc.strerror or exc}") from None
    bound = runner.addresses[0]
    address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    log.info("api.listening", address=address, setting=setting, endpoints=endpoints)
    return Listening(runner, address)
