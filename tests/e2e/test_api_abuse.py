"""The API under abuse: idle and half-sent connections are closed after [api] idle_timeout while /healthz keeps
answering at once; /readyz tells its reasons only to loopback or an authenticated caller."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.support.api import add_token
from tests.support.daemon import start_daemon
from tests.support.waits import poll

pytestmark = pytest.mark.db


def non_loopback_address() -> str | None:
    """An address of this machine other than loopback (the route to a documentation address picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(url, headers=headers) as reply,
    ):
        return reply.status, await reply.json()


@pytest.mark.timeout(30)
async def test_idle_and_half_sent_connections_are_closed(dsn: str, daemon_factory: Any) -> None:
    """100 connections that send nothing and 100 that send half a request: /healthz still answers at once, and
    every one of them is closed by the daemon within 5x the 1 s idle timeout."""
    daemon = await start_daemon(daemon_factory, dsn, api={"idle_timeout": "1s"})
    host, port = daemon.api_address().removeprefix("http://").rsplit(":", 1)
    streams = []
    for n in range(200):
        reader, writer = await asyncio.open_connection(host, int(port))
        if n % 2:
            writer.write(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
            await writer.drain()
        streams.append((reader, writer))
    started = time.monotonic()
    assert await get_json(f"{daemon.api_address()}/healthz") == (200, {"status": "ok"})
    assert time.monotonic() - started < 2.0  # not queued behind the idle connections
    closed = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in streams)), timeout=5.0)
    assert all(data == b"" for data in closed)
    for _, writer in streams:
        writer.close()
    assert daemon.alive()


async def test_readyz_reasons_only_for_loopback_or_a_token(
    dsn: str, daemon_factory: Any, conn: asyncpg.Connection
) -> None:
    """From another address /readyz answers only its status; with a valid token, or from loopback, the checks."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address")
    daemon = await start_daemon(daemon_factory, dsn, api={"listen": "0.0.0.0:0"})
    port = daemon.api_address().rsplit(":", 1)[1]
    await conn.execute("INSERT INTO organisation (id, name) VALUES ('acme', 'acme')")
    _, token = await add_token(conn, "acme", "viewer")

    async def ready(url: str, headers: dict[str, str] | None = None) -> Any:
        async def check() -> Any:
            status, body = await get_json(url, headers)
            return body if status == 200 else None

        return await poll(check, f"{url} ready")

    assert await ready(f"http://{address}:{port}/readyz") == {"status": "ready"}
    assert "checks" in await ready(f"http://{address}:{port}/readyz", {"Authorization": f"Token {token}"})
    assert "checks" in await ready(f"http://127.0.0.1:{port}/readyz")
    assert await ready(f"http://{address}:{port}/readyz", {"Authorization": "Token dsp_" + "x" * 43}) == {
        "status": "ready"
    }
