"""Golden values for dispatcher.sender.classify_error: the error class and text an exception becomes.

Each case builds the real exception object aiohttp (or asyncio, ssl, the network guard) raises, so the test
also pins the order of the checks: several of these classes inherit from one another (ClientConnectorDNSError
and ClientConnectorCertificateError are ClientConnectorErrors, which are ClientOSErrors; TimeoutError is an
OSError).
"""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from dispatcher.netguard import BlockedAddress
from dispatcher.sender import classify_error

pytestmark = pytest.mark.timeout(10)

KEY = ConnectionKey("hooks.example.test", 443, True, True, None, None, None)
VERIFY_FAILED = "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1000)"
WRONG_VERSION = "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)"


def test_a_blocked_address_is_blocked_with_the_guards_message() -> None:
    """The network guard's refusal is "blocked", its text naming the address, the reason and the setting."""
    exc = BlockedAddress("127.0.0.1", "loopback", host="hooks.example.test")
    assert classify_error(exc, 15.0) == (
        "blocked",
        "127.0.0.1 (from hooks.example.test) is loopback; add it to [delivery] allow_networks to allow it"
        " (the daemon's configuration, then restart the daemon)",
    )


def test_a_blocked_address_inside_a_connector_error_is_blocked() -> None:
    """A refusal wrapped by aiohttp (as a ClientConnectorError's os_error cause) is still "blocked", not "connect"."""
    os_error = OSError("connect failed")
    os_error.__cause__ = BlockedAddress("10.0.0.1", "private", host="intranet.test")
    exc = aiohttp.ClientConnectorError(KEY, os_error)
    assert classify_error(exc, 15.0) == (
        "blocked",
        "10.0.0.1 (from intranet.test) is private; add it to [delivery] allow_networks to allow it"
        " (the daemon's configuration, then restart the daemon)",
    )


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),  # asyncio.TimeoutError is this builtin since Python 3.11
        aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
        aiohttp.ConnectionTimeoutError("Connection timeout to host https://hooks.example.test/in"),
        aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_timeouts(exc: BaseException) -> None:
    """Every timeout (total, connect, socket read) is "timeout", its text the request's timeout."""
    assert classify_error(exc, 15.0) == ("timeout", "timed out after 15 s")


@pytest.mark.parametrize(("timeout", "text"), [(2.5, "timed out after 2.5 s"), (0.25, "timed out after 0.25 s")])
def test_timeout_text_writes_the_timeout_shortest(timeout: float, text: str) -> None:
    """The timeout is written without trailing zeros."""
    assert classify_error(TimeoutError(), timeout) == ("timeout", text)


def test_dns_failure() -> None:
    """A name that does not resolve is "dns", "could not resolve host" (the resolver's words are dropped)."""
    exc = aiohttp.ClientConnectorDNSError(KEY, OSError(-2, "Name or service not known"))
    assert classify_error(exc, 15.0) == ("dns", "could not resolve host")


def test_bare_ssl_error() -> None:
    """An ssl.SSLError is "tls", with OpenSSL's text."""
    assert classify_error(ssl.SSLError(1, WRONG_VERSION), 15.0) == ("tls", f"TLS error: {WRONG_VERSION}")


def test_certificate_verification_error() -> None:
    """A failed certificate check, as ssl raises it, is "tls" with OpenSSL's text."""
    exc = ssl.SSLCertVerificationError(1, VERIFY_FAILED)
    assert classify_error(exc, 15.0) == ("tls", f"TLS error: {VERIFY_FAILED}")


def test_aiohttp_certificate_error_is_tls_not_connect() -> None:
    """aiohttp's ClientConnectorCertificateError (also a connector error) is "tls", with aiohttp's text."""
    exc = aiohttp.ClientConnectorCertificateError(KEY, ssl.SSLCertVerificationError(1, VERIFY_FAILED))
    assert classify_error(exc, 15.0) == (
        "tls",
        "TLS error: Cannot connect to host hooks.example.test:443 ssl:True "
        f"[SSLCertVerificationError: (1, '{VERIFY_FAILED}')]",
    )


def test_aiohttp_ssl_error_is_tls_not_connect() -> None:
    """aiohttp's ClientConnectorSSLError (a handshake failure) is "tls", with aiohttp's text."""
    exc = aiohttp.ClientConnectorSSLError(KEY, ssl.SSLError(1, WRONG_VERSION))
    assert classify_error(exc, 15.0) == (
        "tls",
        f"TLS error: Cannot connect to host hooks.example.test:443 ssl:default [{WRONG_VERSION}]",
    )


def test_connection_refused() -> None:
    """A refused connection is "connect", "connection refused"."""
    exc = aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connection refused"))
    assert classify_error(exc, 15.0) == ("connect", "connection refused")


def test_other_connect_failure_names_the_os_error() -> None:
    """Any other connect failure is "connect", with the operating system's words for it."""
    exc = aiohttp.ClientConnectorError(KEY, OSError(113, "No route to host"))
    assert classify_error(exc, 15.0) == ("connect", "connection failed: No route to host")


def test_connect_failure_without_strerror_shows_the_os_error() -> None:
    """An OSError without an errno text is shown as it prints."""
    exc = aiohttp.ClientConnectorError(KEY, OSError("network down"))
    assert classify_error(exc, 15.0) == ("connect", "connection failed: network down")


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_resets(exc: BaseException) -> None:
    """A receiver that hangs up (disconnect, reset, an OS error on an open connection) is "reset"."""
    assert classify_error(exc, 15.0) == ("reset", "connection reset by the receiver")


@pytest.mark.parametrize(
    "exc",
    [aiohttp.InvalidURL("http://exa mple/"), aiohttp.InvalidUrlClientError("ftp://hooks.example.test/")],
    ids=lambda exc: type(exc).__name__,
)
def test_invalid_url(exc: BaseException) -> None:
    """A URL aiohttp refuses is "invalid_url"; the URL itself is not repeated."""
    assert classify_error(exc, 15.0) == ("invalid_url", "invalid URL")


def test_other_client_error_names_its_class() -> None:
    """Any other aiohttp error is "http", its class name and text."""
    exc = aiohttp.ClientConnectionError("Connection closed")
    assert classify_error(exc, 15.0) == ("http", "ClientConnectionError: Connection closed")


def test_client_error_text_hides_url_credentials() -> None:
    """Credentials in a URL inside an aiohttp error's text are masked."""
    exc = aiohttp.ClientError("failed for https://user:pw@hooks.example.test/in")
    assert classify_error(exc, 15.0) == ("http", "ClientError: failed for https://***@hooks.example.test/in")


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (ValueError("bad https://u:p@h.test/"), "ValueError: bad https://***@h.test/"),
        (OSError(5, "Input/output error"), "OSError: [Errno 5] Input/output error"),
    ],
    ids=["ValueError", "OSError"],
)
def test_anything_else_is_internal(exc: BaseException, text: str) -> None:
    """An exception that is not a network failure is "internal", class name and masked text."""
    assert classify_error(exc, 15.0) == ("internal", text)


def test_a_response_cut_off_mid_body_is_a_reset() -> None:
    """aiohttp's error for a body the receiver stopped sending (the connection closed before Content-Length) is a
    reset; another payload error (a body that cannot be decoded) stays an http error."""
    cut = aiohttp.ClientPayloadError(
        "Response payload is not completed: <ContentLengthError: 400,"
        " message='Not enough data to satisfy content length header.'>"
    )
    assert classify_error(cut, 15.0) == ("reset", "connection reset by the receiver in the middle of its response")
    garbled = aiohttp.ClientPayloadError("Can not decode content-encoding: gzip")
    assert classify_error(garbled, 15.0) == ("http", "ClientPayloadError: Can not decode content-encoding: gzip")
