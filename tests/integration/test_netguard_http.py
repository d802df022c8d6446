"""The SSRF guard against a real aiohttp receiver on loopback: what is refused, what gets through.

The receiver listens on 127.0.0.1, which the default guard refuses, so every "blocked" test also checks
that the receiver saw nothing, and every "allowed" test that it saw the request.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from dispatcher.netguard import BlockedAddress, GuardedResolver, NetworkGuard, guarded_connector, is_blocked
from tests.support.network import MappingResolver

pytestmark = pytest.mark.timeout(15)

TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)


@dataclass
class Receiver:
    """A local webhook receiver: its port and the bodies it has received."""

    port: int
    bodies: list[bytes] = field(default_factory=list)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real aiohttp.web server on 127.0.0.1 (random port) recording every POST body."""
    state = Receiver(port=0)

    async def hook(request: web.Request) -> web.Response:
        state.bodies.append(await request.read())
        return web.Response(status=204)

    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(request.query["to"])

    app = web.Application()
    app.router.add_post("/", hook)
    app.router.add_post("/redirect", bounce)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


async def post(url: str, guard: NetworkGuard, resolver: AbstractResolver | None = None) -> int:
    """POST through a guarded session the way the sender does (no env proxy); return the status."""
    connector = guarded_connector(guard, resolver_inner=resolver)
    async with (
        aiohttp.ClientSession(connector=connector, trust_env=False, timeout=TIMEOUT) as session,
        session.post(url, data=b'{"hello":"world"}', allow_redirects=False) as response,
    ):
        return response.status


async def post_blocked(url: str, guard: NetworkGuard, resolver: AbstractResolver | None = None) -> BlockedAddress:
    """POST and expect the guard to refuse it; return the BlockedAddress is_blocked finds."""
    with pytest.raises(Exception) as caught:
        await post(url, guard, resolver)
    blocked = is_blocked(caught.value)
    assert blocked is not None, f"expected a blocked address, got {caught.value!r}"
    return blocked


async def test_loopback_literal_is_blocked_by_default(receiver: Receiver) -> None:
    """Pins that http://127.0.0.1:PORT/ never connects, and that session.post() raises BlockedAddress itself.

    aiohttp skips the resolver for IP literals, so this fails unless the connector checks literals.
    """
    with pytest.raises(BlockedAddress) as caught:
        await post(f"http://127.0.0.1:{receiver.port}/", NetworkGuard())
    assert is_blocked(caught.value) is caught.value
    assert "127.0.0.1 is loopback" in str(caught.value)
    assert receiver.bodies == []


async def test_localhost_hostname_is_blocked_by_default(receiver: Receiver) -> None:
    """Pins the resolver path: localhost resolves (system resolver) to loopback and is refused."""
    blocked = await post_blocked(f"http://localhost:{receiver.port}/", NetworkGuard())
    assert blocked.host == "localhost"
    assert "loopback" in str(blocked)
    assert receiver.bodies == []


@pytest.mark.parametrize("host", ["2130706433", "0177.0.0.1", "0x7f.1", "0x7f000001", "127.1", "[::ffff:127.0.0.1]"])
async def test_numeric_spellings_of_loopback_are_blocked_by_default(receiver: Receiver, host: str) -> None:
    """Pins that decimal, octal, hex, short and IPv4-mapped forms of 127.0.0.1 never reach the receiver."""
    blocked = await post_blocked(f"http://{host}:{receiver.port}/", NetworkGuard())
    assert "loopback" in str(blocked)
    assert receiver.bodies == []


async def test_allowing_loopback_delivers(receiver: Receiver) -> None:
    """Pins that allow_networks ["127.0.0.0/8"] opens loopback: the POST succeeds and the receiver has it."""
    status = await post(f"http://127.0.0.1:{receiver.port}/", NetworkGuard(["127.0.0.0/8"]))
    assert status == 204
    assert receiver.bodies == [b'{"hello":"world"}']


async def test_allowing_another_loopback_address_does_not_open_this_one(receiver: Receiver) -> None:
    """Pins that an allowed /32 opens only itself: allowing 127.0.0.2 still refuses 127.0.0.1."""
    await post_blocked(f"http://127.0.0.1:{receiver.port}/", NetworkGuard(["127.0.0.2/32"]))
    assert receiver.bodies == []


async def test_test_resolver_name_reaches_receiver_when_allowed(receiver: Receiver) -> None:
    """Pins that a name resolved by a custom inner resolver is dialled at the address it resolved to."""
    resolver = MappingResolver({"receiver.test": ["127.0.0.1"]})
    status = await post(f"http://receiver.test:{receiver.port}/", NetworkGuard(["127.0.0.0/8"]), resolver)
    assert status == 204
    assert receiver.bodies == [b'{"hello":"world"}']


async def test_test_resolver_name_is_blocked_by_default(receiver: Receiver) -> None:
    """Pins that the same name is refused without the allowance, and the error names the hostname."""
    resolver = MappingResolver({"receiver.test": ["127.0.0.1"]})
    blocked = await post_blocked(f"http://receiver.test:{receiver.port}/", NetworkGuard(), resolver)
    assert "127.0.0.1 (from receiver.test) is loopback" in str(blocked)
    assert receiver.bodies == []


async def test_a_name_with_one_blocked_answer_is_refused_whole(receiver: Receiver) -> None:
    """Pins that a mixed answer is refused rather than narrowed, even though one address would work."""
    resolver = MappingResolver({"mixed.test": ["127.0.0.1", "10.0.0.5"]})
    blocked = await post_blocked(f"http://mixed.test:{receiver.port}/", NetworkGuard(["127.0.0.0/8"]), resolver)
    assert blocked.address == "10.0.0.5"
    assert receiver.bodies == []


async def test_redirect_hops_are_checked_at_connect_time(receiver: Receiver) -> None:
    """Pins that a followed redirect to a blocked address is refused when its connection is made.

    The sender never follows redirects; this guards against that changing, since each hop goes through
    the same connector.
    """
    guard = NetworkGuard(["127.0.0.1/32"])
    target = "http://127.0.0.2:9/"
    url = f"http://127.0.0.1:{receiver.port}/redirect?to={target}"
    connector = guarded_connector(guard)
    async with aiohttp.ClientSession(connector=connector, trust_env=False, timeout=TIMEOUT) as session:
        with pytest.raises(BlockedAddress, match=r"127\.0\.0\.2"):
            await session.post(url, data=b"{}", allow_redirects=True)
    assert receiver.bodies == []


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1"])
async def test_system_resolver_maps_numeric_names_and_the_resolver_check_catches_them(host: str) -> None:
    """Pins that getaddrinfo turns numeric "names" into 127.0.0.1 and GuardedResolver refuses the result.

    The allowed case proves the system resolver really maps the name, so the refusal is the guard's doing.
    """
    allowed = GuardedResolver(NetworkGuard(["127.0.0.0/8"]), aiohttp.ThreadedResolver())
    answers = await allowed.resolve(host, 80, socket.AF_INET)
    assert [a["host"] for a in answers] == ["127.0.0.1"]
    with pytest.raises(BlockedAddress, match="loopback"):
        await GuardedResolver(NetworkGuard(), aiohttp.ThreadedResolver()).resolve(host, 80, socket.AF_INET)
