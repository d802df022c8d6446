"""The HTTP call: one POST, an Outcome back, never an exception (other than cancellation)."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from dispatcher import __version__
from dispatcher.config import DeliveryConfig
from dispatcher.inert import excerpt, inert
from dispatcher.netguard import GuardedConnector, NetworkGuard, guarded_connector, is_blocked
from dispatcher.policy import Outcome, Verdict, classify_status, parse_retry_after

USER_AGENT = f"dispatcher/{__version__}"

# Stored per attempt and shown escaped; the read itself is capped by [delivery] max_response_bytes.
RESPONSE_EXCERPT_BYTES = 4096
# Of a reason phrase, and of an exception's text, kept in the attempt's error and the webhook's last_error.
MAX_REASON = 200
MAX_ERROR = 500

# Everything between "://" and the last "@" before the path: user, password, and any "@" inside them.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s]*@")


def mask_url(url: str) -> str:
    """The URL with any user:password@ replaced, for logs and errors."""
    return _URL_CREDENTIALS.sub("***@", url)


@dataclass(frozen=True, slots=True)
class Request:
    """A signed request ready to go."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    timeout: float


class Sender:
    """An aiohttp session shared by every delivery: keep-alive pools, no env proxies, no redirects."""

    def __init__(self, config: DeliveryConfig, guard: NetworkGuard, concurrency: int) -> None:
        self._config = config
        self._guard = guard
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._connector: GuardedConnector
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}  # one per distinct timeout (tests, deliveries)

    async def start(self) -> None:
        """Open the session (inside the running loop)."""
        self._connector = guarded_connector(self._guard, limit=self._concurrency)
        self._session = aiohttp.ClientSession(
            connector=self._connector,
            trust_env=False,
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            skip_auto_headers=("Accept-Encoding",),
        )

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, request: Request) -> Outcome:
        """POST the request and classify what happened."""
        assert self._session is not None, "Sender.start() first"
        started = datetime.now(UTC)
        timeout = self._timeouts.get(request.timeout)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=request.timeout, connect=self._config.connect_timeout)
            self._timeouts[request.timeout] = timeout
        try:
            if self._config.proxy is not None:
                await self._connector.check_destination(request.url)
            async with self._session.post(
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=timeout,
                allow_redirects=False,
                proxy=self._config.proxy,
            ) as response:
                body = await _read_capped(response, self._config.max_response_bytes)
                finished = datetime.now(UTC)
                verdict = classify_status(response.status)
                reason = inert(response.reason or "", MAX_REASON)
                error = None if verdict is Verdict.DELIVERED else f"{response.status} {reason}".strip()
                return Outcome(
                    verdict=verdict,
                    status=response.status,
                    error_class=None if verdict is Verdict.DELIVERED else "http_status",
                    error=error,
                    retry_after=parse_retry_after(response.headers.get("Retry-After"), finished),
                    response=excerpt(body, RESPONSE_EXCERPT_BYTES),
                    started_at=started,
                    finished_at=finished,
                )
        except Exception as exc:  # every failure becomes an outcome; cancellation is not an Exception
            error_class, error = classify_error(exc, request.timeout)
            return Outcome(
                verdict=Verdict.RETRY,
                status=None,
                error_class=error_class,
                error=error,
                retry_after=None,
                response="",
                started_at=started,
                finished_at=datetime.now(UTC),
            )


async def _read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """At most `limit` bytes of the body; the rest is never read (the connection is then not reused)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def classify_error(exc: BaseException, timeout: float) -> tuple[str, str]:
    """An error class and a short human text (4me's last_error style) for a failed request."""
    blocked = is_blocked(exc)
    if blocked is not None:
        return "blocked", str(blocked)
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout", f"timed out after {timeout:g} s"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns", "could not resolve host"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls", inert(f"TLS error: {exc}", MAX_ERROR)
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "connect", "connection refused"
        return "connect", f"connection failed: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionResetError):
        return "reset", "connection reset by the receiver"
    if isinstance(exc, aiohttp.ClientPayloadError) and "not completed" in str(exc):
        return "reset", "connection reset by the receiver in the middle of its response"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid_url", "invalid URL"
    if isinstance(exc, aiohttp.ClientError):
        return "http", inert(mask_url(f"{type(exc).__name__}: {exc}"), MAX_ERROR)
    return "internal", inert(mask_url(f"{type(exc).__name__}: {exc}"), MAX_ERROR)
