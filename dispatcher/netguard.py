"""SSRF guard: refuse deliveries to loopback, private, link-local, metadata and other non-public addresses.

Enforcement happens at connect time, in two places, because aiohttp has two paths to an address:

* hostnames go through the connector's resolver; `GuardedResolver` checks **every** address the inner
  resolver returns and refuses the whole name if any one is blocked. The addresses it returns are exactly
  the ones it checked, and aiohttp connects only to those (and caches only those), so a name that changes
  its answer between check and connect (DNS rebinding) cannot slip through;
* IP literals (``http://127.0.0.1/``, ``http://[::1]/``) never reach the resolver in aiohttp, so
  `GuardedConnector` checks them itself before handing the host to aiohttp.

Legacy numeric IPv4 forms (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) are parsed the way
``inet_aton`` does and checked like any literal, so a blocked one fails as `BlockedAddress`. Behind that,
aiohttp >= 3.14.1 refuses the dotless-digit and short forms outright (``InvalidUrlClientError``, also when
the guard would allow them), and hands the hex ones to the resolver, where ``getaddrinfo`` maps them to
an address that `GuardedResolver` checks.

`NetworkGuard.check_url` repeats the literal check when a webhook URL is created or updated, so users hear
about a blocked address at once; it does not resolve names, and it is a courtesy, not the enforcement.

What a caller of ``session.post()`` sees for a blocked destination: `BlockedAddress` itself, raised
unwrapped out of ``session.post()`` (it is not an ``OSError``, so aiohttp neither wraps it in
``ClientConnectorError`` nor tries the next address). `is_blocked` also looks through ``__cause__``,
``__context__`` and ``ClientConnectorError.os_error``, so a sender can classify the outcome as "blocked"
whatever wrapping a future aiohttp adds.

With a proxy, the connector connects to (and so checks) the proxy's address, not the destination's; so the
sender first calls `GuardedConnector.check_destination`, which checks the destination as a direct request
would be (an IP literal as such, a name by resolving it through `GuardedResolver`), and only then hands the
request to the proxy. The proxy resolves the name again itself: a name that changes its answer in between (DNS
rebinding) is stopped only by the proxy's own filtering.
"""

from __future__ import annotations

import ipaddress
import socket
import string
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.tracing import Trace

__all__ = [
    "BlockedAddress",
    "GuardedConnector",
    "GuardedResolver",
    "NetworkGuard",
    "guarded_connector",
    "is_blocked",
    "parse_ip_literal",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_ALLOWED_SCHEMES: Final = frozenset({"http", "https"})


class BlockedAddress(Exception):
    """The destination address is not allowed."""

    def __init__(self, address: str = "", reason: str = "", *, host: str | None = None) -> None:
        self.address = address
        self.reason = reason
        self.host = host
        if address:
            where = f"{address} (from {host})" if host and host != address else address
            message = (
                f"{where} is {reason}; add it to [delivery] allow_networks to allow it"
                " (the daemon's configuration, then restart the daemon)"
            )
        else:
            message = self.__class__.__doc__ or ""
        super().__init__(message)


# The deny tables, most specific first: the first match names the reason. Anything not listed here but
# not globally reachable (by the ipaddress module's IANA tables) is refused as well, at the end.
_V4_DENY: Final[tuple[tuple[ipaddress.IPv4Network, str], ...]] = tuple(
    (ipaddress.IPv4Network(cidr), reason)
    for cidr, reason in (
        ("169.254.169.254/32", "a cloud metadata address"),
        ("100.100.100.200/32", "a cloud metadata address"),
        ("0.0.0.0/8", "unspecified (0.0.0.0/8, 'this network')"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "shared address space (CGNAT, 100.64.0.0/10)"),
        ("169.254.0.0/16", "link-local"),
        ("192.0.0.0/24", "reserved for IETF protocol assignments"),
        ("192.0.2.0/24", "reserved for documentation"),
        ("198.51.100.0/24", "reserved for documentation"),
        ("203.0.113.0/24", "reserved for documentation"),
        ("192.88.99.0/24", "a 6to4 relay anycast address"),
        ("198.18.0.0/15", "reserved for benchmarking"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)

_V6_DENY: Final[tuple[tuple[ipaddress.IPv6Network, str], ...]] = tuple(
    (ipaddress.IPv6Network(cidr), reason)
    for cidr, reason in (
        ("fd00:ec2::254/128", "a cloud metadata address"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("64:ff9b:1::/48", "local-use NAT64 (64:ff9b:1::/48)"),
        ("2001::/32", "Teredo (2001::/32)"),
        ("2001:2::/48", "reserved for benchmarking"),
        ("2001:10::/28", "ORCHID (deprecated)"),
        ("2001:db8::/32", "reserved for documentation"),
        ("3fff::/20", "reserved for documentation"),
        ("100::/64", "discard-only"),
        ("5f00::/16", "reserved for SRv6 segment identifiers"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
        ("::ffff:0:0:0/96", "IPv4-translated (::ffff:0:a.b.c.d)"),
        # After the IPv4-mapped check, so ::ffff:a.b.c.d is judged by its embedded address instead.
        ("::/96", "IPv4-compatible (deprecated ::a.b.c.d)"),
    )
)

_IPV4_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    """Why an IPv4 address is refused, or None when it is public."""
    for network, reason in _V4_DENY:
        if ip in network:
            return reason
    if not ip.is_global:
        return "not globally reachable"
    return None


def _embedded(kind: str, v4: ipaddress.IPv4Address) -> str | None:
    """The reason for an IPv6 address that carries *v4*: blocked exactly when *v4* is."""
    reason = _v4_reason(v4)
    return None if reason is None else f"{kind} {v4}, which is {reason}"


def _v6_reason(ip: ipaddress.IPv6Address) -> str | None:
    """Why an IPv6 address is refused, or None when it is public.

    Addresses that carry an IPv4 address (IPv4-mapped, 6to4, well-known NAT64) are judged by the IPv4
    address they carry: the packet ends up there, or at a relay that forwards it there.
    """
    if ip in _IPV4_MAPPED:
        assert ip.ipv4_mapped is not None
        return _embedded("IPv4-mapped", ip.ipv4_mapped)
    if ip.sixtofour is not None:
        return _embedded("6to4 for", ip.sixtofour)
    if ip in _NAT64:
        return _embedded("NAT64 for", ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF))
    for network, reason in _V6_DENY:
        if ip in network:
            return reason
    if not ip.is_global:
        return "not globally reachable"
    return None


def _parse_network(cidr: str) -> IPNetwork:
    """Parse one `allow_networks` entry; ValueError names the entry."""
    try:
        return ipaddress.ip_network(cidr.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"[delivery] allow_networks: {cidr!r} is not a valid CIDR network ({exc})") from exc


class NetworkGuard:
    """Decides whether an address may be connected to.

    An address is allowed when it lies inside one of *allow_networks* (CIDR strings such as
    ``"127.0.0.0/8"`` or ``"::1/128"``), or when it is public. Each entry opens exactly its own network:
    allowing ``127.0.0.0/8`` opens neither ``10.0.0.1`` nor ``::1``. An IPv4-mapped address
    (``::ffff:127.0.0.1``) is the IPv4 address on the wire, so it is allowed when either form is listed.
    """

    def __init__(self, allow_networks: Sequence[str] = ()) -> None:
        if isinstance(allow_networks, str):
            raise TypeError("allow_networks must be a sequence of CIDR strings, not one string")
        self.allow_networks: tuple[IPNetwork, ...] = tuple(_parse_network(c) for c in allow_networks)

    def _allowed(self, ip: IPAddress) -> bool:
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        # ``in`` between different IP versions is simply False, which is what "exactly its CIDR" needs.
        return any(c in network for c in candidates for network in self.allow_networks)

    def check_ip(self, ip: IPAddress) -> None:
        """Raise `BlockedAddress` unless *ip* is public or inside an allowed network."""
        if self._allowed(ip):
            return
        reason = _v4_reason(ip) if isinstance(ip, ipaddress.IPv4Address) else _v6_reason(ip)
        if reason is not None:
            raise BlockedAddress(str(ip), reason)

    def check_url(self, url: str) -> None:
        """Validate a webhook URL at create/update time.

        The scheme must be ``http`` or ``https`` and a host is required (ValueError otherwise). A host that
        is an IP literal in any form (dotted, bracketed IPv6, decimal, octal, hex, short) is parsed and
        checked, raising `BlockedAddress`; hostnames are not resolved here (that happens at connect time).
        """
        try:
            parsed = yarl.URL(url)
        except (ValueError, TypeError) as exc:
            raise ValueError("the URL is not valid") from exc  # no echo: it may hold credentials
        if parsed.scheme not in _ALLOWED_SCHEMES:
            raise ValueError(f"URL scheme must be http or https, not {parsed.scheme or 'missing'!r}")
        host = parsed.raw_host
        if not host:
            raise ValueError("the URL has no host")
        ip = parse_ip_literal(host)
        if ip is not None:
            try:
                self.check_ip(ip)
            except BlockedAddress as exc:
                raise BlockedAddress(exc.address, exc.reason, host=host) from None


_DEC: Final = frozenset(string.digits)
_OCT: Final = frozenset(string.octdigits)
_HEX: Final = frozenset(string.hexdigits)


def _ipv4_part(part: str) -> int | None:
    """One ``inet_aton`` number: ``0x`` hex, leading-zero octal, else decimal; None if it is none."""
    if part[:2].lower() == "0x":
        digits, base, allowed = part[2:], 16, _HEX
    elif len(part) > 1 and part[0] == "0":
        digits, base, allowed = part[1:], 8, _OCT
    else:
        digits, base, allowed = part, 10, _DEC
    if not digits or not set(digits) <= allowed:
        return None
    return int(digits, base)


def _ends_in_number(labels: list[str]) -> bool:
    """The WHATWG URL test: does the last label look numeric, making the host an attempted IPv4?"""
    last = labels[-1]
    if set(last) <= _DEC:
        return True
    return last[:2].lower() == "0x" and set(last[2:]) <= _HEX


def parse_ip_literal(host: str) -> IPAddress | None:
    """Parse *host* as an IP address the way the system resolver would, or return None for a hostname.

    Accepts IPv6 (with or without brackets, with a zone id) and every IPv4 form ``inet_aton`` accepts:
    1 to 4 dot-separated numbers, each decimal, octal (leading ``0``) or hex (``0x``), the last one filling
    the remaining bytes (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``). One trailing dot is allowed.

    A host that looks like an address but is not a valid one (``1.2.3.256``, ``08.1``, ``[zz::1]``) raises
    ValueError rather than passing as a hostname.
    """
    candidate = host.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    if ":" in candidate:
        try:
            return ipaddress.IPv6Address(candidate.replace("%25", "%", 1))
        except ValueError as exc:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from exc
    if candidate.endswith("."):
        candidate = candidate[:-1]
    labels = candidate.split(".")
    if not candidate or not _ends_in_number(labels):
        return None
    invalid = ValueError(f"{host!r} looks like an IPv4 address but is not a valid one")
    if len(labels) > 4:
        raise invalid
    numbers = [_ipv4_part(label) for label in labels]
    value = 0
    for number in numbers[:-1]:
        if number is None or number > 0xFF:
            raise invalid
        value = value << 8 | number
    last = numbers[-1]
    last_bits = 8 * (5 - len(numbers))
    if last is None or last >= 1 << last_bits:
        raise invalid
    return ipaddress.IPv4Address(value << last_bits | last)


class GuardedResolver(AbstractResolver):
    """A resolver that refuses a name if any address it resolves to is blocked.

    It resolves through *inner* (default `aiohttp.ThreadedResolver`, i.e. ``getaddrinfo``), checks every
    returned address with the guard, and returns exactly the checked results, so the connector dials only
    an address that was checked. A name with one public and one private address is refused as a whole
    rather than quietly narrowed to the public one. An answer that is not an IP address is refused too.
    """

    def __init__(self, guard: NetworkGuard, inner: AbstractResolver | None = None) -> None:
        self._guard = guard
        self._inner: AbstractResolver = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve *host* via the inner resolver; raise `BlockedAddress` if any address is blocked."""
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = result["host"]
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                raise BlockedAddress(repr(address), "not an IP address", host=host) from None
            try:
                self._guard.check_ip(ip)
            except BlockedAddress as exc:
                raise BlockedAddress(exc.address, exc.reason, host=host) from None
        return results

    async def close(self) -> None:
        """Close the inner resolver."""
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A `aiohttp.TCPConnector` that resolves through `GuardedResolver` and checks IP-literal hosts.

    aiohttp's ``_resolve_host`` returns an IP-literal host as is, without asking the resolver; this
    subclass checks such a host (in any numeric form `parse_ip_literal` knows) before delegating.
    Other keyword arguments go to `aiohttp.TCPConnector`, except ``resolver``, which would bypass the guard.
    Closing the connector closes its resolver and so *resolver_inner*.
    """

    def __init__(
        self,
        guard: NetworkGuard,
        *,
        resolver_inner: AbstractResolver | None = None,
        **kwargs: Any,
    ) -> None:
        if "resolver" in kwargs:
            raise TypeError("GuardedConnector builds its own resolver; pass resolver_inner instead")
        super().__init__(resolver=GuardedResolver(guard, resolver_inner), **kwargs)
        self._resolver_owner = True  # built here, so closed here (with resolver_inner) on close()
        self._guard = guard

    async def _resolve_host(self, host: str, port: int, traces: Sequence[Trace] | None = None) -> list[ResolveResult]:
        try:
            literal = parse_ip_literal(host)
        except ValueError:
            literal = None  # not an address: aiohttp refuses it or the guarded resolver checks the answer
        if literal is not None:
            try:
                self._guard.check_ip(literal)
            except BlockedAddress as exc:
                raise BlockedAddress(exc.address, exc.reason, host=host) from None
        return await super()._resolve_host(host, port, traces=traces)

    async def check_destination(self, url: str) -> None:
        """Raise `BlockedAddress` when a direct request to `url` would be refused (for requests sent through a
        proxy, whose connection checks only the proxy's address)."""
        parsed = yarl.URL(url)
        host = parsed.raw_host or ""
        await self._resolve_host(host, parsed.port or 0)


def guarded_connector(
    guard: NetworkGuard,
    *,
    resolver_inner: AbstractResolver | None = None,
    limit: int = 100,
) -> GuardedConnector:
    """Build the delivery connector: a `GuardedConnector` with at most *limit* connections."""
    return GuardedConnector(guard, resolver_inner=resolver_inner, limit=limit)


def is_blocked(exc: BaseException) -> BlockedAddress | None:
    """Find the `BlockedAddress` behind a failed request, or None if the failure was something else.

    Looks at *exc* itself, its ``__cause__`` and ``__context__`` chain, and aiohttp's
    ``ClientConnectorError.os_error``.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BlockedAddress):
            return current
        linked = [current.__cause__, current.__context__]
        if isinstance(current, aiohttp.ClientConnectorError):
            linked.append(current.os_error)
        pending.extend(e for e in linked if e is not None)
    return None
