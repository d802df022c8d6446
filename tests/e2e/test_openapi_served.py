"""The daemon serves /openapi.json as generated from its route table, and a worker-only process still answers
/healthz, /readyz and /metrics on [worker] listen (with no management route)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from dispatcher.api import ROUTES
from tests.support.daemon import start_daemon
from tests.support.openapi import the_document
from tests.support.waits import poll

pytestmark = pytest.mark.db


async def fetch(url: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, session.get(url) as reply:
        text = await reply.text()
        body = await reply.json() if reply.content_type == "application/json" else None
        return reply.status, text, body


async def test_openapi_json_is_served_without_a_token(dsn: str, daemon_factory: Any) -> None:
    """GET /openapi.json answers the generated document (every management and health route), no token needed."""
    daemon = await start_daemon(daemon_factory, dsn)
    status, _, served = await fetch(f"{daemon.api_address()}/openapi.json")
    assert status == 200
    assert served == the_document()
    for route in ROUTES:
        assert route.method.lower() in served["paths"][route.path], route


async def test_worker_only_process_serves_health_and_metrics(dsn: str, daemon_factory: Any) -> None:
    """With [api] enabled = false the process serves /healthz, /readyz (listener included) and /metrics on
    [worker] listen, and no management route (a 404 there, not an answer from the API)."""
    daemon = await start_daemon(daemon_factory, dsn, api={"enabled": False})
    listening = await daemon.wait_line("api.listening")
    assert listening["setting"] == "[worker] listen"
    base = f"http://{listening['address']}"

    assert (await fetch(f"{base}/healthz"))[::2] == (200, {"status": "ok"})

    async def ready() -> Any:
        status, _, body = await fetch(f"{base}/readyz")
        return status == 200 and body

    body = await poll(ready, "readyz 200 on the worker-only process")
    assert body["checks"] == {"database": "ok", "schema": "ok", "listener": "ok", "process": "ok"}
    status, text, _ = await fetch(f"{base}/metrics")
    assert status == 200 and "dispatcher_attempts_total" in text and "dispatcher_database_up 1.0" in text
    status, _, body = await fetch(f"{base}/configs/webhook")
    assert status == 404 and body["error"]["code"] == "not_found"
