"""Unit tests for the SSRF guard: address classification, literal parsing, URL validation, the resolver."""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from dispatcher import netguard
from dispatcher.netguard import (
    BlockedAddress,
    GuardedConnector,
    GuardedResolver,
    NetworkGuard,
    guarded_connector,
    is_blocked,
    parse_ip_literal,
)
from tests.support.network import MappingResolver

pytestmark = pytest.mark.timeout(10)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Shorthand for ipaddress.ip_address."""
    return ipaddress.ip_address(text)


# (address, a word the refusal must name): one or more rows for every category the guard refuses.
BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("2001:2::1", "benchmarking"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.1", "documentation"),
    ("2001:db8::1", "documentation"),
    ("192.0.0.8", "IETF"),
    ("169.254.169.254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("fd00:ec2::254", "metadata"),
    # IPv4-mapped: judged by the embedded IPv4 address.
    ("::ffff:127.0.0.1", "IPv4-mapped 127.0.0.1, which is loopback"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:10.0.0.1", "private"),
    # 6to4 (2002::/16) carrying a blocked IPv4 address.
    ("2002:7f00:1::1", "6to4 for 127.0.0.1, which is loopback"),
    ("2002:a9fe:a9fe::", "6to4 for 169.254.169.254"),
    ("2002:c0a8:101::1", "6to4 for 192.168.1.1, which is private"),
    # NAT64 well-known prefix carrying a blocked IPv4 address; the local-use prefix is refused outright.
    ("64:ff9b::7f00:1", "NAT64 for 127.0.0.1, which is loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 for 169.254.169.254"),
    ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("64:ff9b:1::808:808", "local-use NAT64"),
    # Teredo and the deprecated IPv4-compatible / IPv4-translated forms are refused whatever they carry.
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("::7f00:1", "IPv4-compatible"),
    ("::808:808", "IPv4-compatible"),
    ("::ffff:0:808:808", "IPv4-translated"),
    ("100::1", "discard"),
    ("fec0::1", "site-local"),
    ("5f00::1", "SRv6"),
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",  # IPv4-mapped public address
    "2002:808:808::1",  # 6to4 for a public address
    "64:ff9b::808:808",  # NAT64 for a public address
    # Just outside the blocked ranges: a deny table with a wrong prefix length fails here.
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "169.255.0.1",
    "11.0.0.1",
]


@pytest.mark.parametrize(("address", "reason"), BLOCKED)
def test_check_ip_refuses_every_blocked_category(address: str, reason: str) -> None:
    """Pins the deny list: each category, including embedded-IPv4 forms, is refused with its reason."""
    with pytest.raises(BlockedAddress) as caught:
        NetworkGuard().check_ip(ip(address))
    assert caught.value.address == str(ip(address))
    assert reason in str(caught.value)


@pytest.mark.parametrize("address", ALLOWED)
def test_check_ip_allows_public_addresses(address: str) -> None:
    """Pins that public addresses (also when carried in mapped, 6to4 or NAT64 form) are not refused."""
    NetworkGuard().check_ip(ip(address))


@pytest.mark.parametrize("address", ["10.0.0.1", "fc00::1", "127.0.0.1", "::1"])
def test_non_global_addresses_are_refused_even_without_a_deny_entry(
    monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    """Pins the fallback behind the deny tables: anything not globally reachable is refused all the same."""
    monkeypatch.setattr(netguard, "_V4_DENY", ())
    monkeypatch.setattr(netguard, "_V6_DENY", ())
    with pytest.raises(BlockedAddress, match="not globally reachable"):
        NetworkGuard().check_ip(ip(address))


def test_blocked_message_says_what_to_do() -> None:
    """Pins the user-facing message: it names the address, the reason and the setting that opens it."""
    with pytest.raises(BlockedAddress) as caught:
        NetworkGuard().check_ip(ip("127.0.0.1"))
    assert str(caught.value) == (
        "127.0.0.1 is loopback; add it to [delivery] allow_networks to allow it"
        " (the daemon's configuration, then restart the daemon)"
    )
    assert caught.value.reason == "loopback"


def test_blocked_address_default_message_is_its_docstring() -> None:
    """Pins the error-class convention: raised bare, the message is the class docstring."""
    assert str(BlockedAddress()) == "The destination address is not allowed."


@pytest.mark.parametrize(
    ("allow", "opened", "still_blocked"),
    [
        (
            ["127.0.0.0/8"],
            ["127.0.0.1", "127.255.255.255", "::ffff:127.0.0.1"],
            ["10.0.0.1", "::1", "169.254.169.254", "2002:7f00:1::1", "64:ff9b::7f00:1"],
        ),
        (["127.0.0.1/32"], ["127.0.0.1"], ["127.0.0.2", "::1"]),
        (["::1/128"], ["::1"], ["127.0.0.1", "::2"]),
        (["10.0.0.0/8", "fd00::/8"], ["10.1.2.3", "fd00::5"], ["192.168.0.1", "fc00::1"]),
        (["169.254.169.254/32"], ["169.254.169.254"], ["169.254.169.253", "fd00:ec2::254"]),
    ],
)
def test_allow_networks_open_exactly_their_cidrs(allow: list[str], opened: list[str], still_blocked: list[str]) -> None:
    """Pins that an allow_networks entry opens its own CIDR and nothing next to it or in the other family."""
    guard = NetworkGuard(allow)
    for address in opened:
        guard.check_ip(ip(address))
    for address in still_blocked:
        with pytest.raises(BlockedAddress):
            guard.check_ip(ip(address))


@pytest.mark.parametrize("cidr", ["nonsense", "10.0.0.0/33", "10.0.0.1/8", "", "::1/129"])
def test_invalid_allow_network_is_a_value_error_naming_it(cidr: str) -> None:
    """Pins config validation: a bad CIDR (or one with host bits set) is refused; the message quotes it."""
    with pytest.raises(ValueError, match="allow_networks") as caught:
        NetworkGuard(["127.0.0.0/8", cidr])
    assert repr(cidr) in str(caught.value)


def test_allow_networks_must_not_be_a_bare_string() -> None:
    """Pins that a single string is refused instead of being read as a sequence of one-character CIDRs."""
    with pytest.raises(TypeError):
        NetworkGuard("127.0.0.0/8")


# (host as it appears in a URL, the address it denotes): every spelling inet_aton / getaddrinfo accepts.
LITERALS = [
    ("127.0.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0X7F.0X0.0X0.0X1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("169.16689662", "169.254.169.254"),
    ("10.0.0.1.", "10.0.0.1"),
    ("8.8.8.8", "8.8.8.8"),
    ("[::1]", "::1"),
    ("::1", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("::ffff:7f00:1", "::ffff:7f00:1"),
    ("[fe80::1%25eth0]", "fe80::1"),
]


@pytest.mark.parametrize(("host", "expected"), LITERALS)
def test_parse_ip_literal_reads_every_numeric_form(host: str, expected: str) -> None:
    """Pins the inet_aton-style parser: decimal, octal, hex and short IPv4 forms and IPv6 all parse."""
    parsed = parse_ip_literal(host)
    assert parsed is not None
    assert parsed.packed == ip(expected).packed


@pytest.mark.parametrize(
    "host",
    [
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "127.1",
        "127.0.1",
        "0xa9.0xfe.0xa9.0xfe",
        "1.2.3.4",
        "255.255.255.255",
        "4294967295",
        "0x0",
        "00",
        "1.2.65535",
        "1.16777215",
    ],
)
def test_parse_ip_literal_agrees_with_the_system_inet_aton(host: str) -> None:
    """Pins that the parser reads each form exactly as the C library does (what getaddrinfo connects to)."""
    parsed = parse_ip_literal(host)
    assert parsed is not None
    assert parsed.packed == socket.inet_aton(host)


@pytest.mark.parametrize(
    "host",
    ["256.1.1.1", "1.2.3.4.5", "08.1.1.1", "1..2", "4294967296", "1.2.65536", "0x", "1.0x1000000", "[zz::1]"],
)
def test_parse_ip_literal_rejects_malformed_numeric_hosts(host: str) -> None:
    """Pins that a host that looks like an address but is not one is an error, not a pass as a hostname."""
    with pytest.raises(ValueError):
        parse_ip_literal(host)


@pytest.mark.parametrize(
    "host", ["example.com", "localhost", "evil.test", "1.2.3.example", "0xdeadbeef.com", "deadbeef", "a-1"]
)
def test_parse_ip_literal_returns_none_for_hostnames(host: str) -> None:
    """Pins that ordinary hostnames (even with numeric-looking labels before the last) are not literals."""
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::1]:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "https://0251.0376.0251.0376/",
        "http://[fd00:ec2::254]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:7f00:1::1]/",
        "http://[fe80::1%25eth0]/",
        "http://user:secret@10.0.0.1:8443/x?y=1",
        "HTTP://127.0.0.1./",
        "http://\uff11\uff12\uff17.0.0.1/",  # full-width digits: IDNA maps them to 127.0.0.1
    ],
)
def test_check_url_refuses_blocked_literals_in_any_form(url: str) -> None:
    """Pins create-time validation: a URL whose host is a blocked address, however spelt, is refused."""
    with pytest.raises(BlockedAddress):
        NetworkGuard().check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://8.8.8.8/",
        "https://[2606:4700::1111]:8443/x",
        "http://localhost:8080/",  # a hostname: not resolved at create time, checked at connect time
        "http://internal.corp/",
    ],
)
def test_check_url_accepts_public_literals_and_hostnames(url: str) -> None:
    """Pins that public literals pass and that hostnames are not resolved (so not judged) at create time."""
    NetworkGuard().check_url(url)


def test_check_url_honours_allow_networks() -> None:
    """Pins that an allowed network also opens the legacy spellings of its addresses at create time."""
    guard = NetworkGuard(["127.0.0.0/8"])
    guard.check_url("http://2130706433:8080/")
    guard.check_url("http://[::ffff:127.0.0.1]/")
    with pytest.raises(BlockedAddress):
        guard.check_url("http://[::1]/")


def test_check_url_names_the_spelling_it_refused() -> None:
    """Pins that the message shows both the canonical address and the host as the user wrote it."""
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1 \(from 2130706433\) is loopback"):
        NetworkGuard().check_url("http://2130706433/")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://8.8.8.8/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://example.com/",
        "example.com/hook",
        "http:///path-only",
        "https://",
        "http://1.2.3.256/",
        "http://[zz::1]/",
    ],
)
def test_check_url_rejects_bad_scheme_missing_host_and_malformed_hosts(url: str) -> None:
    """Pins that only http/https URLs with a well-formed host are accepted (ValueError otherwise)."""
    with pytest.raises(ValueError):
        NetworkGuard().check_url(url)


def test_check_url_value_error_is_not_a_blocked_address() -> None:
    """Pins that a bad scheme is a plain validation error, distinguishable from a blocked address."""
    with pytest.raises(ValueError, match="ftp") as caught:
        NetworkGuard().check_url("ftp://8.8.8.8/")
    assert not isinstance(caught.value, BlockedAddress)


async def test_resolver_refuses_a_private_answer() -> None:
    """Pins that a name resolving to a private address is refused, naming both name and address."""
    resolver = GuardedResolver(NetworkGuard(), MappingResolver({"evil.test": ["10.0.0.5"]}))
    with pytest.raises(BlockedAddress) as caught:
        await resolver.resolve("evil.test", 443)
    assert caught.value.address == "10.0.0.5"
    assert caught.value.host == "evil.test"
    assert "10.0.0.5 (from evil.test) is private" in str(caught.value)


@pytest.mark.parametrize(
    "answers", [["93.184.216.34", "10.0.0.5"], ["10.0.0.5", "93.184.216.34"], ["2606:4700::1111", "::1"]]
)
async def test_resolver_refuses_a_name_with_any_blocked_answer(answers: list[str]) -> None:
    """Pins that a mixed public/private answer refuses the whole name instead of keeping the public one."""
    resolver = GuardedResolver(NetworkGuard(), MappingResolver({"mixed.test": answers}))
    with pytest.raises(BlockedAddress):
        await resolver.resolve("mixed.test", 443)


async def test_resolver_returns_exactly_the_checked_answers() -> None:
    """Pins that a public answer passes through unchanged, so the connector dials only checked addresses."""
    inner = MappingResolver({"public.test": ["93.184.216.34", "2606:4700::1111"]})
    expected = await inner.resolve("public.test", 443)
    got = await GuardedResolver(NetworkGuard(), inner).resolve("public.test", 443)
    assert got == expected


async def test_resolver_allows_an_allowed_private_answer() -> None:
    """Pins that allow_networks applies to resolved addresses too (how tests reach a local receiver)."""
    resolver = GuardedResolver(NetworkGuard(["10.0.0.0/8"]), MappingResolver({"lab.test": ["10.0.0.5"]}))
    assert [r["host"] for r in await resolver.resolve("lab.test", 80)] == ["10.0.0.5"]


async def test_resolver_refuses_mapped_metadata_answers_and_non_addresses() -> None:
    """Pins that answers in IPv4-mapped form are unwrapped, and an answer that is no IP is refused."""
    inner = MappingResolver({"meta.test": ["::ffff:169.254.169.254"], "odd.test": ["not-an-ip"]})
    resolver = GuardedResolver(NetworkGuard(), inner)
    with pytest.raises(BlockedAddress, match="metadata"):
        await resolver.resolve("meta.test", 80)
    with pytest.raises(BlockedAddress, match="not an IP address"):
        await resolver.resolve("odd.test", 80)


async def test_resolver_passes_lookup_errors_through_and_closes_inner() -> None:
    """Pins that an unknown name stays an ordinary OSError (a DNS failure, not "blocked") and close()."""
    inner = MappingResolver({})
    resolver = GuardedResolver(NetworkGuard(), inner)
    with pytest.raises(OSError) as caught:
        await resolver.resolve("nowhere.test", 80)
    assert is_blocked(caught.value) is None
    await resolver.close()
    assert inner.closed


def test_is_blocked_finds_the_cause_through_wrapping() -> None:
    """Pins is_blocked: found directly, through __cause__/__context__ and through ClientConnectorError."""
    blocked = BlockedAddress("10.0.0.5", "private")
    assert is_blocked(blocked) is blocked

    try:
        try:
            raise blocked
        except BlockedAddress as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert is_blocked(outer) is blocked

    os_error = OSError("connect failed")
    os_error.__cause__ = blocked
    key = ConnectionKey("evil.test", 80, False, True, None, None, None)
    assert is_blocked(aiohttp.ClientConnectorError(key, os_error)) is blocked


def test_is_blocked_returns_none_for_other_failures_and_survives_cycles() -> None:
    """Pins that other errors are not classified as blocked, and that a cyclic chain does not hang."""
    first, second = ValueError("a"), OSError("b")
    first.__context__ = second
    second.__context__ = first
    assert is_blocked(first) is None
    key = ConnectionKey("example.com", 80, False, True, None, None, None)
    assert is_blocked(aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))) is None


async def test_guarded_connector_uses_the_guarded_resolver() -> None:
    """Pins the factory: a GuardedConnector with the given limit, whose resolver wraps resolver_inner."""
    inner = MappingResolver({})
    connector = guarded_connector(NetworkGuard(), resolver_inner=inner, limit=7)
    try:
        assert isinstance(connector, GuardedConnector)
        assert connector.limit == 7
        assert isinstance(connector._resolver, GuardedResolver)
    finally:
        await connector.close()
    assert inner.closed


async def test_guarded_connector_refuses_a_replacement_resolver() -> None:
    """Pins that the guard cannot be bypassed by handing the connector an unguarded resolver."""
    with pytest.raises(TypeError):
        GuardedConnector(NetworkGuard(), resolver=aiohttp.ThreadedResolver())
