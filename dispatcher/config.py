"""Settings: one commented TOML file plus environment overrides, validated once into frozen dataclasses.

``load_config`` reads ``dispatcher.toml`` (or the file given), applies ``DISPATCHER_<SECTION>__<KEY>``
overrides from the environment, checks every value (known section and key, right type, in range, durations
parsed) and returns a :class:`Config`. Every mistake is a :class:`ConfigError` naming the file, the line,
the key and the reason. Nothing else in the package reads the file or the environment for settings.

Choices made where the contract is silent:

* Durations are floats of seconds. In TOML they are numbers of seconds or strings such as ``"50ms"``,
  ``"5s"``, ``"5m"``, ``"2h"``, ``"3d"`` or ``"1h30m"``.
* An empty string for an optional setting (``dsn``, ``proxy``, ``host``, ``username``, ``password``,
  ``encryption_key``) means "not set", so an environment file can blank a value out.
* Only ``DISPATCHER_*`` variables containing ``__`` are configuration overrides; others (such as a CLI's
  ``DISPATCHER_URL`` or ``DISPATCHER_TOKEN``) are left alone.
* An override of a string setting whose text happens to be valid TOML of another type (a numeric password,
  ``true``) keeps the raw text, so values never need quoting for string keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher import secretbox

__all__ = [
    "ApiConfig",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DeliveryConfig",
    "EventsConfig",
    "HealthConfig",
    "LogConfig",
    "MailConfig",
    "MetricsConfig",
    "RetentionConfig",
    "RetryConfig",
    "SecretsConfig",
    "WorkerConfig",
    "effective_settings",
    "format_duration",
    "load_config",
    "mask_url",
    "parse_duration",
]

DEFAULT_PATH = "dispatcher.toml"
"""The file ``load_config`` reads when no path is given (relative to the working directory), if present."""

ENV_PREFIX = "DISPATCHER_"
"""Environment overrides are named ``DISPATCHER_<SECTION>__<KEY>``."""

MASK = "***"
"""What ``effective_settings`` shows in place of a secret."""


class ConfigError(Exception):
    """The configuration is invalid.

    ``str()`` reads ``<file>:<line>: [section] key: reason``; the line is left out when unknown (always for
    environment overrides, whose file is ``<env DISPATCHER_SECTION__KEY>``), and the section and key when
    the mistake is not about one key (a TOML syntax error, an unreadable file).
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        self.section = section
        self.key = key
        super().__init__(self._render())

    def _render(self) -> str:
        parts: list[str] = []
        if self.file is not None:
            parts.append(f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: ")
        if self.section is not None and self.key is not None:
            parts.append(f"[{self.section}] {self.key}: ")
        elif self.section is not None:
            parts.append(f"[{self.section}]: ")
        elif self.key is not None:
            parts.append(f"{self.key}: ")
        parts.append(self.reason)
        return "".join(parts)

    def __str__(self) -> str:
        return self._render()


# --------------------------------------------------------------------------------------------------------
# The settings


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """``[database]``: where the queue lives. No DSN means the embedded PostgreSQL in ``data_dir``."""

    dsn: str | None = None
    data_dir: str = "dispatcher-data"
    pool_size: int = 10
    auto_migrate: bool = True


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """``[api]``: the management HTTP API."""

    enabled: bool = True
    listen: str = "127.0.0.1:8080"
    public_url: str = "http://127.0.0.1:8080"
    max_body_bytes: int = 1048576
    idle_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """``[worker]``: claiming and sending deliveries. Durations are in seconds."""

    enabled: bool = True
    listen: str = "127.0.0.1:8081"
    concurrency: int = 100
    per_webhook_concurrency: int = 10
    batch_size: int = 100
    poll_interval: float = 1.0
    lease_margin: float = 10.0
    shutdown_grace: float = 20.0
    processes: int = 1  # worker processes one `dispatcher run` starts and supervises ("auto": one per core)
    event_loop: str = "asyncio"  # or "uvloop" (installed with the `uvloop` extra)


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """``[delivery]``: one HTTP POST to a receiver. Durations are in seconds."""

    connect_timeout: float = 5.0
    timeout: float = 15.0
    max_response_bytes: int = 65536
    allow_networks: tuple[str, ...] = ()
    require_https: bool = False
    proxy: str | None = None


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """``[retry]``: delays (seconds) before the 2nd, 3rd, ... attempt, each varied by +/- ``jitter``."""

    schedule: tuple[float, ...] = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """``[health]``: when a failing webhook turns invalid, how it is probed, how long deliveries are held."""

    disable_after_failures: int = 20
    min_failing_period: float = 3600.0
    probe_interval: float = 300.0
    max_hold: float = 259200.0


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """``[events]``: the event catalogue and payload limits."""

    types: tuple[str, ...] = ()
    max_payload_bytes: int = 262144
    notify: bool = True


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    """``[retention]``: how long (seconds) delivered work and dead letters are kept."""

    delivered: float = 604800.0
    failed: float = 2592000.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``: ``format`` is auto, json or console; ``level`` is debug, info, warning or error."""

    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: Prometheus exposition."""

    per_webhook: bool = False


@dataclass(frozen=True, slots=True)
class MailConfig:
    """``[mail]``: SMTP for failure notices; no host, no mail. The TOML key ``from`` is ``from_`` here."""

    host: str | None = None
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    from_: str = "dispatcher@localhost"


@dataclass(frozen=True, slots=True)
class SecretsConfig:
    """``[secrets]``: the key webhook secrets and policy keys are encrypted with at rest (none: stored in clear),
    and older keys still read until ``dispatcher secrets rotate`` has re-encrypted everything."""

    encryption_key: str | None = None
    old_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    """All settings, validated. ``source`` is the file they were loaded from, or None for defaults only."""

    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    secrets: SecretsConfig = field(default_factory=SecretsConfig)
    source: str | None = None


# --------------------------------------------------------------------------------------------------------
# Durations

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(rf"({_NUMBER})\s*(ms|s|m|h|d)")
_DURATION_FULL = re.compile(rf"(?:{_NUMBER}\s*(?:ms|s|m|h|d)\s*)+")
_BARE_NUMBER = re.compile(_NUMBER)
_UNKNOWN_UNIT = re.compile(rf"{_NUMBER}\s*([A-Za-zµ]+)")
_DURATION_HINT = 'use a number of seconds or a string such as "50ms", "5s", "5m", "2h", "3d" or "1h30m"'


def parse_duration(value: object) -> float:
    """Return ``value`` as seconds: a number of seconds, or a string like ``"50ms"``, ``"5m"``, ``"1h30m"``.

    Units are ms, s, m, h and d (lower case). Booleans, negative, infinite and malformed values raise
    ValueError with the reason.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a duration, got {_describe(value)}; {_DURATION_HINT}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"duration {value!r} is negative; durations must be zero or more")
        if _BARE_NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION_FULL.fullmatch(text):
            seconds = 0.0
            for number, unit in _DURATION_PART.findall(text):
                # Divide for milliseconds: 50 / 1000 is exactly 0.05, 50 * 0.001 is not.
                seconds += float(number) / 1000 if unit == "ms" else float(number) * _UNITS[unit]
        else:
            unknown = _UNKNOWN_UNIT.fullmatch(text)
            if unknown:
                raise ValueError(
                    f"invalid duration {value!r}: unknown unit {unknown.group(1)!r} (units: ms, s, m, h, d)"
                )
            raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"duration {value!r} is not a finite number")
    if seconds < 0:
        raise ValueError(f"duration {value!r} is negative; durations must be zero or more")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds in the largest whole unit (``"5s"``, ``"30m"``, ``"3d"``, ``"50ms"``), else ``"1.5s"``.

    The result always parses back to the same value with :func:`parse_duration`.
    """
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNITS[unit]
        if count >= 1 and count == int(count):
            candidate = f"{int(count)}{unit}"
            if parse_duration(candidate) == seconds:
                return candidate
    millis = round(seconds * 1000)
    if seconds < 1 and millis >= 1 and parse_duration(f"{millis}ms") == seconds:
        return f"{millis}ms"
    return f"{seconds!r}s"


# --------------------------------------------------------------------------------------------------------
# Masking


_URL_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>.*)$", re.DOTALL)
_QUERY_PASSWORD = re.compile(r"([?&](?:password|pass|sslpassword)=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return ``url`` with the password of its user info (and any ``password=`` parameter) shown as ``***``.

    ``postgresql://user:pw@host/db`` becomes ``postgresql://user:***@host/db``. A password containing ``@``,
    ``/``, ``?`` or ``#`` is masked whole. URLs without a password are returned unchanged.
    """
    masked = _QUERY_PASSWORD.sub(rf"\g<1>{MASK}", url)
    match = _URL_USERINFO.match(masked)
    if match is None:
        return masked
    scheme, rest = match.group("scheme"), match.group("rest")
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at < 0:
        at = rest.rfind("@")  # a password holding "?" or "#": mask too much rather than too little
    if at < 0:
        return masked
    userinfo = rest[:at]
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return masked
    return f"{scheme}{user}:{MASK}{rest[at:]}"


# --------------------------------------------------------------------------------------------------------
# Value checks: each takes a raw TOML value and returns the typed value or raises ValueError(reason).

Convert = Callable[[object], object]


def _describe(value: object) -> str:
    """Name the TOML type of ``value`` for an error message."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time" if hasattr(value, "isoformat") else f"a {type(value).__name__}"


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_describe(value)}")
    return value


def _integer(minimum: int, maximum: int | None = None) -> Convert:
    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_describe(value)}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum} (got {value})")
        if maximum is not None and value > maximum:
            raise ValueError(f"must be at most {maximum} (got {value})")
        return value

    return convert


def _processes(value: object) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return os.cpu_count() or 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'expected a whole number or "auto", got {_describe(value)}')
    if value < 1:
        raise ValueError(f"must be at least 1 (got {value})")
    return value


def _event_loop(value: object) -> str:
    loop = _choice("asyncio", "uvloop")(value)
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ValueError("uvloop is not installed (pip install 'dispatcher[uvloop]')")
    return str(loop)


def _fraction(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {_describe(value)}")
    number = float(value)
    if not 0 <= number < 1:
        raise ValueError(f"must be at least 0 and less than 1 (got {value})")
    return number


def _duration(minimum: float = 0.0, *, exclusive: bool = False) -> Convert:
    def convert(value: object) -> float:
        seconds = parse_duration(value)
        if exclusive and seconds <= minimum:
            raise ValueError(f"must be more than {format_duration(minimum)} (got {format_duration(seconds)})")
        if seconds < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)} (got {format_duration(seconds)})")
        return seconds

    return convert


def _durations(value: object) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected an array of durations, got {_describe(value)}")
    result: list[float] = []
    for index, item in enumerate(value):
        try:
            result.append(parse_duration(item))
        except ValueError as exc:
            raise ValueError(f"item {index + 1}: {exc}") from None
    return tuple(result)


def _text(*, pattern: re.Pattern[str] | None = None, hint: str = "", secret: bool = False) -> Convert:
    """A non-empty string, optionally matching ``pattern`` (``hint`` says what was expected)."""

    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_describe(value)}")
        if not value.strip():
            raise ValueError("must not be empty")
        if pattern is not None and not pattern.fullmatch(value):
            shown = "" if secret else f" (got {value!r})"
            raise ValueError(f"{hint}{shown}")
        return value

    return convert


def _optional(convert: Convert) -> Convert:
    """``convert``, but an empty string means "not set" (None)."""

    def optional(value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return convert(value)

    return optional


def _choice(*allowed: str) -> Convert:
    def convert(value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_describe(value)}")
        if value.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)} (got {value!r})")
        return value.lower()

    return convert


_LISTEN = re.compile(r"(?:\[[^\]\s]+\]|[^:\[\]/\s]+):(?P<port>\d{1,5})")
_HTTP_URL = re.compile(r"https?://[^/\s?#@]+(?:[/?#]\S*)?", re.IGNORECASE)
_PROXY_URL = re.compile(r"https?://\S+", re.IGNORECASE)
_PG_DSN = re.compile(r"postgres(?:ql)?://\S*", re.IGNORECASE)
_EVENT_TYPE = re.compile(r"[^\s*]+")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


def _listen(value: object) -> str:
    text = _text(pattern=_LISTEN, hint='expected "host:port", e.g. "127.0.0.1:8080" or "[::1]:8080"')(value)
    assert isinstance(text, str)
    match = _LISTEN.fullmatch(text)
    assert match is not None
    if int(match.group("port")) > 65535:
        raise ValueError(f"port must be at most 65535 (got {text!r})")
    return text


def _networks(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected an array of CIDR strings, got {_describe(value)}")
    result: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"item {index + 1}: expected a CIDR string, got {_describe(item)}")
        try:
            network = ipaddress.ip_network(item.strip())
        except ValueError:
            try:
                widened = ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                reason = f'{item!r} is not a network such as "127.0.0.0/8"'
                raise ValueError(f"item {index + 1}: {reason}") from None
            reason = f"{item!r} has host bits set; did you mean {str(widened)!r}?"
            raise ValueError(f"item {index + 1}: {reason}") from None
        result.append(str(network))
    return tuple(result)


def _event_types(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected an array of strings, got {_describe(value)}")
    result: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"item {index + 1}: expected a string, got {_describe(item)}")
        if not _EVENT_TYPE.fullmatch(item):
            raise ValueError(f"item {index + 1}: {item!r} is not an event type (no spaces or wildcards)")
        if item in result:
            raise ValueError(f"item {index + 1}: {item!r} is listed twice")
        result.append(item)
    return tuple(result)


# --------------------------------------------------------------------------------------------------------
# The schema: TOML key -> dataclass attribute, check, and how `config show` renders it.


def _show_plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _show_duration(value: object) -> object:
    assert isinstance(value, float | int)
    return format_duration(value)


def _show_durations(value: object) -> object:
    assert isinstance(value, tuple)
    return [format_duration(item) for item in value]


def _encryption_key(value: object) -> str:
    """A key for secrets at rest: the base64 of 32 bytes (never echoed back: it is a secret)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_describe(value)}")
    secretbox.parse_key(value)
    return value.strip()


def _old_keys(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected an array of base64 keys, got {_describe(value)}")
    result: list[str] = []
    for index, item in enumerate(value):
        try:
            result.append(_encryption_key(item))
        except ValueError as exc:
            raise ValueError(f"item {index + 1}: {exc}") from None
    return tuple(result)


def _show_secrets(value: object) -> object:
    assert isinstance(value, tuple)
    return [MASK for _ in value]


def _show_secret(value: object) -> object:
    return None if value is None else MASK


def _show_url(value: object) -> object:
    return None if value is None else mask_url(str(value))


@dataclass(frozen=True, slots=True)
class _Key:
    """One setting: its dataclass attribute, its check, and how ``effective_settings`` shows it.

    ``text`` marks string settings: an environment override that parses as TOML of another type (a numeric
    password, ``true``) keeps its raw text instead.
    """

    attr: str
    convert: Convert
    show: Callable[[object], object] = _show_plain
    text: bool = False


def _key(attr: str, convert: Convert, show: Callable[[object], object] = _show_plain) -> _Key:
    return _Key(attr, convert, show)


def _text_key(attr: str, convert: Convert, show: Callable[[object], object] = _show_plain) -> _Key:
    return _Key(attr, convert, show, text=True)


def _duration_key(attr: str, minimum: float = 0.0, *, exclusive: bool = False) -> _Key:
    return _Key(attr, _duration(minimum, exclusive=exclusive), _show_duration)


_SECTIONS: dict[str, tuple[type[Any], dict[str, _Key]]] = {
    "database": (
        DatabaseConfig,
        {
            "dsn": _text_key(
                "dsn",
                _optional(
                    _text(
                        pattern=_PG_DSN,
                        hint='expected a URL such as "postgresql://user:password@host:5432/dbname"',
                        secret=True,
                    )
                ),
                _show_url,
            ),
            "data_dir": _text_key("data_dir", _text()),
            "pool_size": _key("pool_size", _integer(1)),
            "auto_migrate": _key("auto_migrate", _boolean),
        },
    ),
    "api": (
        ApiConfig,
        {
            "enabled": _key("enabled", _boolean),
            "listen": _text_key("listen", _listen),
            "public_url": _text_key(
                "public_url",
                _text(pattern=_HTTP_URL, hint='expected an http(s) URL, e.g. "https://hooks.example"'),
            ),
            "max_body_bytes": _key("max_body_bytes", _integer(1)),
            "idle_timeout": _duration_key("idle_timeout", exclusive=True),
        },
    ),
    "worker": (
        WorkerConfig,
        {
            "enabled": _key("enabled", _boolean),
            "listen": _text_key("listen", _listen),
            "concurrency": _key("concurrency", _integer(1)),
            "per_webhook_concurrency": _key("per_webhook_concurrency", _integer(1)),
            "batch_size": _key("batch_size", _integer(1)),
            "poll_interval": _duration_key("poll_interval", 0.05),
            "lease_margin": _duration_key("lease_margin"),
            "shutdown_grace": _duration_key("shutdown_grace"),
            "processes": _key("processes", _processes),
            "event_loop": _text_key("event_loop", _event_loop),
        },
    ),
    "delivery": (
        DeliveryConfig,
        {
            "connect_timeout": _duration_key("connect_timeout", exclusive=True),
            "timeout": _duration_key("timeout", exclusive=True),
            "max_response_bytes": _key("max_response_bytes", _integer(0)),
            "allow_networks": _key("allow_networks", _networks),
            "require_https": _key("require_https", _boolean),
            "proxy": _text_key(
                "proxy",
                _optional(_text(pattern=_PROXY_URL, hint='expected a URL such as "http://proxy:3128"', secret=True)),
                _show_url,
            ),
        },
    ),
    "retry": (
        RetryConfig,
        {
            "schedule": _Key("schedule", _durations, _show_durations),
            "jitter": _key("jitter", _fraction),
        },
    ),
    "health": (
        HealthConfig,
        {
            "disable_after_failures": _key("disable_after_failures", _integer(1)),
            "min_failing_period": _duration_key("min_failing_period"),
            "probe_interval": _duration_key("probe_interval", exclusive=True),
            "max_hold": _duration_key("max_hold", exclusive=True),
        },
    ),
    "events": (
        EventsConfig,
        {
            "types": _key("types", _event_types),
            "max_payload_bytes": _key("max_payload_bytes", _integer(1)),
            "notify": _key("notify", _boolean),
        },
    ),
    "retention": (
        RetentionConfig,
        {
            "delivered": _duration_key("delivered"),
            "failed": _duration_key("failed"),
        },
    ),
    "log": (
        LogConfig,
        {
            "format": _text_key("format", _choice("auto", "json", "console")),
            "level": _text_key("level", _choice("debug", "info", "warning", "error")),
        },
    ),
    "metrics": (
        MetricsConfig,
        {
            "per_webhook": _key("per_webhook", _boolean),
        },
    ),
    "mail": (
        MailConfig,
        {
            "host": _text_key("host", _optional(_text())),
            "port": _key("port", _integer(1, 65535)),
            "starttls": _key("starttls", _boolean),
            "username": _text_key("username", _optional(_text())),
            "password": _text_key("password", _optional(_text(secret=True)), _show_secret),
            "from": _text_key("from_", _text(pattern=_EMAIL, hint="expected an e-mail address")),
        },
    ),
    "secrets": (
        SecretsConfig,
        {
            "encryption_key": _text_key("encryption_key", _optional(_encryption_key), _show_secret),
            "old_keys": _Key("old_keys", _old_keys, _show_secrets),
        },
    ),
}


# --------------------------------------------------------------------------------------------------------
# Finding lines: tomllib reports none for keys, so scan the text once for headers and keys.

_BARE_OR_QUOTED = r'(?:[A-Za-z0-9_-]+|"[^"\n]*"|\'[^\'\n]*\')'
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_HEADER_LINE = re.compile(rf"\s*\[\[?\s*(?P<path>{_DOTTED})\s*\]\]?\s*(?:#.*)?")
_KEY_LINE = re.compile(rf"\s*(?P<path>{_DOTTED})\s*=")
_PATH_PART = re.compile(_BARE_OR_QUOTED)


def _split_path(path: str) -> list[str]:
    return [part.strip("\"'") for part in _PATH_PART.findall(path)]


class _LineIndex:
    """Where each ``[section]`` header and each section key first appears in a TOML text (1-based lines)."""

    __slots__ = ("_keys", "_sections")

    def __init__(self, text: str) -> None:
        self._sections: dict[str, int] = {}
        self._keys: dict[tuple[str, str], int] = {}
        table: list[str] = []
        in_multiline = False
        for number, line in enumerate(text.splitlines(), start=1):
            was_multiline = in_multiline
            if (line.count('"""') + line.count("'''")) % 2:
                in_multiline = not in_multiline
            if was_multiline:
                continue
            header = _HEADER_LINE.fullmatch(line)
            if header:
                table = _split_path(header.group("path"))
                self._record(table, number)
                continue
            key = _KEY_LINE.match(line)
            if key:
                self._record(table + _split_path(key.group("path")), number)

    def _record(self, path: list[str], number: int) -> None:
        if path:
            self._sections.setdefault(path[0], number)
        if len(path) >= 2:
            self._keys.setdefault((path[0], path[1]), number)

    def line(self, section: str, key: str | None = None) -> int | None:
        """The line of ``key`` in ``[section]``; else of the section; else None."""
        if key is not None and (section, key) in self._keys:
            return self._keys[(section, key)]
        return self._sections.get(section)


# --------------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True, slots=True)
class _Raw:
    """A value as written, with where it came from, waiting to be checked."""

    value: object
    file: str
    line: int | None
    raw_text: str | None = None  # environment overrides: the variable's text as given


def _unknown(kind: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"unknown {kind} {name!r}; did you mean {close[0]!r}?"
    return f"unknown {kind} {name!r}; known {kind}s: {', '.join(known)}"


def _read_file(path: str) -> tuple[str, dict[str, Any]]:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the configuration file: {exc.strerror or exc}", file=path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError("the file is not valid UTF-8", file=path, line=line) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if match:
            line = int(match.group(1))
            reason = f"{message[: match.start()]} (column {match.group(2)})"
        else:
            end = re.search(r"\s*\(at end of document\)$", message)
            line = len(text.splitlines()) or 1
            reason = f"{message[: end.start()]} (at end of file)" if end else message
        raise ConfigError(f"invalid TOML: {reason}", file=path, line=line) from None
    return text, document


def _collect_file(path: str, raw: dict[str, dict[str, _Raw]]) -> None:
    text, document = _read_file(path)
    index = _LineIndex(text)
    for section, table in document.items():
        if section not in _SECTIONS:
            reason = _unknown("section", section, list(_SECTIONS))
            raise ConfigError(reason, file=path, line=index.line(section), section=section)
        if not isinstance(table, dict):
            raise ConfigError(
                f"expected a [{section}] table, got {_describe(table)}",
                file=path,
                line=index.line(section),
                section=section,
            )
        keys = _SECTIONS[section][1]
        for key, value in table.items():
            line = index.line(section, key)
            if key not in keys:
                raise ConfigError(_unknown("key", key, list(keys)), file=path, line=line, section=section, key=key)
            raw.setdefault(section, {})[key] = _Raw(value, path, line)


def _parse_env_value(text: str) -> object:
    """The value of ``x = <text>`` as TOML, or the text itself if that is not one TOML value."""
    try:
        document = tomllib.loads(f"x = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return document["x"] if set(document) == {"x"} else text


def _collect_env(environ: Mapping[str, str], raw: dict[str, dict[str, _Raw]]) -> None:
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            continue
        origin = f"<env {name}>"
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SECTIONS:
            raise ConfigError(_unknown("section", section, list(_SECTIONS)), file=origin, section=section)
        keys = _SECTIONS[section][1]
        if key not in keys:
            raise ConfigError(_unknown("key", key, list(keys)), file=origin, section=section, key=key)
        text = environ[name]
        raw.setdefault(section, {})[key] = _Raw(_parse_env_value(text), origin, None, raw_text=text)


def _build(raw: dict[str, dict[str, _Raw]], source: str | None) -> Config:
    sections: dict[str, Any] = {}
    for section, (cls, keys) in _SECTIONS.items():
        values: dict[str, Any] = {}
        for key, given in raw.get(section, {}).items():
            spec = keys[key]
            value = given.value
            if spec.text and given.raw_text is not None and not isinstance(value, str):
                value = given.raw_text
            try:
                values[spec.attr] = spec.convert(value)
            except ValueError as exc:
                reason = str(exc)
                raise ConfigError(reason, file=given.file, line=given.line, section=section, key=key) from None
        sections[section] = cls(**values)
    return Config(**sections, source=source)


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load, override and check the settings; raise :class:`ConfigError` on the first mistake.

    ``path`` None reads ``./dispatcher.toml`` if it exists, else starts from the defaults. ``environ`` None
    uses ``os.environ``; each ``DISPATCHER_<SECTION>__<KEY>`` in it overrides that key, its value read as a
    TOML value (``'"200ms"'``, ``'["127.0.0.0/8"]'``, ``true``) or, failing that, as the raw string.
    """
    source: str | None = os.fspath(path) if path is not None else None
    if path is None and os.path.isfile(DEFAULT_PATH):
        source = DEFAULT_PATH
    raw: dict[str, dict[str, _Raw]] = {}
    if source is not None:
        _collect_file(source, raw)
    _collect_env(os.environ if environ is None else environ, raw)
    return _build(raw, source)


def effective_settings(config: Config) -> dict[str, dict[str, object]]:
    """Every section and key (TOML names) with its effective value, ready to print as TOML or JSON.

    Durations are rendered like ``"5s"`` or ``"1h"``, tuples as lists, unset values as None. Secrets are
    masked: the password in ``database.dsn`` and ``delivery.proxy``, ``mail.password`` and
    ``secrets.encryption_key`` show as ``***`` when set, and each of ``secrets.old_keys`` as ``***``.
    """
    settings: dict[str, dict[str, object]] = {}
    for section, (_cls, keys) in _SECTIONS.items():
        values = getattr(config, section)
        settings[section] = {key: spec.show(getattr(values, spec.attr)) for key, spec in keys.items()}
    return settings


def _schema_matches_dataclasses() -> bool:
    """True when the schema names every dataclass field exactly once (checked by the unit tests)."""
    sections = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
    if sections != list(_SECTIONS):
        return False
    return all(
        sorted(f.name for f in dataclasses.fields(cls)) == sorted(spec.attr for spec in keys.values())
        for cls, keys in _SECTIONS.values()
    )
