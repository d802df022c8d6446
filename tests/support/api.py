"""The management API from outside: one database and one daemon per test module, organisations with a token per
role, and plain HTTP calls that send what ricloud-py sends (a JSON body with no Content-Type)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg

from dispatcher.tokens import new_token
from tests.support.daemon import Daemon
from tests.support.database import create_database, drop_database
from tests.support.openapi import check_reply

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code (module fixtures), in a thread with its own loop so
    that the test's event loop is left alone."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@dataclass
class Server:
    """A daemon (worker and API) over its own database; `url` has no trailing slash."""

    url: str
    dsn: str
    daemon: Daemon


@contextmanager
def module_server(pg_server: Any, workdir: Path, overrides: dict[str, dict[str, Any]]) -> Iterator[Server]:
    """A fresh migrated database and `dispatcher run` on it, for a whole test module (tests keep apart by using
    organisations of their own); both are gone afterwards."""
    name = f"m_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dsn = run_sync(create_database(pg_server, name))
    daemon = Daemon.with_test_settings(dsn, workdir, overrides)
    try:
        daemon.start()
        run_sync(daemon.wait_ready())
        yield Server(daemon.api_address(), dsn, daemon)
    finally:
        daemon.kill()
        run_sync(drop_database(pg_server, name))


# ---- organisations and tokens ----------------------------------------------------------------------------


@dataclass
class Org:
    """An organisation of its own for one test, with one token per role: {role: (token id, token)}."""

    id: str
    tokens: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def admin(self) -> str:
        return self.tokens["admin"][1]

    @property
    def viewer(self) -> str:
        return self.tokens["viewer"][1]

    @property
    def producer(self) -> str:
        return self.tokens["producer"][1]

    def token_id(self, role: str) -> int:
        return self.tokens[role][0]


async def add_token(conn: asyncpg.Connection, organisation: str, role: str, name: str = "") -> tuple[int, str]:
    """A new token of `organisation` (stored as its digest, as the product does): (id, token)."""
    token, digest = new_token()
    token_id = await conn.fetchval(
        "INSERT INTO token (organisation, role, digest, name) VALUES ($1, $2, $3, $4) RETURNING id",
        organisation,
        role,
        digest,
        name or f"{role} of {organisation}",
    )
    return token_id, token


async def make_org(dsn: str, prefix: str = "org") -> Org:
    """A new organisation named `<prefix>-<random>` with an admin, a viewer and a producer token."""
    org = Org(f"{prefix}-{uuid.uuid4().hex[:10]}")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO organisation (id, name) VALUES ($1, $1)", org.id)
        for role in ("admin", "viewer", "producer"):
            org.tokens[role] = await add_token(conn, org.id, role)
    finally:
        await conn.close()
    return org


# ---- HTTP --------------------------------------------------------------------------------------------------

_MISSING: Any = object()


@dataclass
class Reply:
    """An HTTP answer: status, headers, the raw text and the JSON body (None when it is not JSON)."""

    status: int
    headers: dict[str, str]
    text: str
    body: Any

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.text[:500]!r})"


async def call(
    base: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    json_body: Any = _MISSING,
    data: bytes | None = None,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
    scheme: str = "Token",
    params: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One request. `json_body` is serialised and sent, like ricloud-py does, with no Content-Type (unless
    `content_type` is given); `data` is sent as is. `token` goes in `Authorization: <scheme> <token>`."""
    sent: dict[str, str] = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"{scheme} {token}"
    if json_body is not _MISSING:
        data = json.dumps(json_body).encode()
    if content_type is not None:
        sent["Content-Type"] = content_type
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.request(
            method,
            base + path,
            data=data,
            headers=sent,
            params=params,
            # No Content-Type unless asked for: aiohttp would otherwise add application/octet-stream.
            skip_auto_headers=() if content_type else ("Content-Type",),
        ) as response,
    ):
        text = await response.text()
        try:
            body = json.loads(text) if text else None
        except ValueError:
            body = None
        if text:
            check_reply(method, path, response.status, body, response.headers.get("Content-Type", ""))
        return Reply(response.status, dict(response.headers), text, body)


def assert_ricloud_error(reply: Reply, status: int, field: str | None = None) -> None:
    """ricloud's error shape: {"error": "<code>", "message": "...", "params": {...}}, naming `field` if given."""
    assert reply.status == status, reply
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply.headers
    body = reply.body
    assert isinstance(body, dict), reply
    assert isinstance(body.get("error"), str) and body["error"], reply
    assert isinstance(body.get("message"), str) and body["message"], reply
    assert isinstance(body.get("params"), dict), reply
    if field is not None:
        assert field in body["params"], reply


def assert_native_error(reply: Reply, status: int, field: str | None = None) -> None:
    """The native shape: {"error": {"code", "message", "field"}}, naming `field` if given."""
    assert reply.status == status, reply
    assert reply.headers.get("Content-Type", "").startswith("application/json"), reply.headers
    body = reply.body
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), reply
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], reply
    assert isinstance(error.get("message"), str) and error["message"], reply
    assert "field" in error, reply
    if field is not None:
        assert error["field"] == field, reply


class ServerClient:
    """Calls to a module's daemon (`server`), organisations of its own, and a look at its database."""

    org_prefix = "org"

    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = server.url

    async def __call__(self, method: str, path: str, **kwargs: Any) -> Reply:
        return await call(self.url, method, path, **kwargs)

    async def org(self, prefix: str | None = None) -> Org:
        return await make_org(self.server.dsn, prefix or self.org_prefix)

    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.server.dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()
