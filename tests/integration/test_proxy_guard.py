"""With [delivery] proxy set, the destination is still checked by the SSRF guard before the request goes to the
proxy (the connection itself only reaches, and so checks, the proxy). A real aiohttp server on 127.0.0.1 plays
the proxy; it is allowed (127.0.0.1/32) while other loopback addresses are not."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from dispatcher.config import DeliveryConfig
from dispatcher.netguard import NetworkGuard
from dispatcher.sender import Request, Sender

pytestmark = pytest.mark.timeout(15)


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[str, list[str]]]:
    """A forward proxy stand-in: answers 200 to every request and records the absolute URL it was asked for."""
    seen: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        return web.Response(text="proxied")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def send(proxy_url: str, url: str) -> tuple[int | None, str | None, str | None]:
    config = DeliveryConfig(proxy=proxy_url, allow_networks=("127.0.0.1/32",), timeout=5.0, connect_timeout=2.0)
    sender = Sender(config, NetworkGuard(config.allow_networks), concurrency=4)
    await sender.start()
    try:
        outcome = await sender.send(Request(url=url, body=b"{}", headers={}, timeout=5.0))
    finally:
        await sender.close()
    return outcome.status, outcome.error_class, outcome.error


async def test_a_blocked_destination_never_reaches_the_proxy(proxy: tuple[str, list[str]]) -> None:
    """127.0.0.2 and 169.254.169.254 (not allowed) are refused as `blocked` with the proxy never asked; an allowed
    destination goes through the proxy."""
    proxy_url, seen = proxy
    for url in ("http://127.0.0.2:8080/hook", "http://169.254.169.254/latest/meta-data/", "http://[::1]:80/x"):
        status, error_class, error = await send(proxy_url, url)
        assert (status, error_class) == (None, "blocked"), (url, error)
    assert seen == []
    status, error_class, _ = await send(proxy_url, "http://127.0.0.1:9/hook")
    assert (status, error_class) == (200, None)
    assert len(seen) == 1 and seen[0].endswith("/hook")
