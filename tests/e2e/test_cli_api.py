"""The CLI over the API (issue 12, SPEC §9) against a running daemon: every API command, its `--json` output,
its table, and its exit code and message on an API error; --url/--token and DISPATCHER_URL/DISPATCHER_TOKEN."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.support import REPO
from tests.support.api import Server, make_org, module_server
from tests.support.factories import make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = pytest.mark.db


@pytest.fixture(scope="module")
def server(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daemon for the module."""
    with module_server(pg_server, tmp_path_factory.mktemp("cli-api-daemon"), {}) as s:
        yield s


@pytest.fixture
async def sql(server: Server) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(server.dsn)
    yield conn
    await conn.close()


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`python -m dispatcher ARGS` with DISPATCHER_URL/DISPATCHER_TOKEN only as `env` gives them."""
    base = {k: v for k, v in os.environ.items() if k not in ("DISPATCHER_URL", "DISPATCHER_TOKEN")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dispatcher", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=REPO, env={**base, **(env or {})},
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class Switch:
    """500 while `down`, else 200."""

    def __init__(self) -> None:
        self.down = True

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500 if self.down else 200, text="down" if self.down else "ok")


@pytest.mark.timeout(90)
async def test_outage_walkthrough_with_the_cli(server: Server, sql: asyncpg.Connection) -> None:
    """The README's walkthrough: list the dead letters, show one with its attempts, redeliver one, fix the
    receiver, replay the window with a progress bar until all are delivered; each command's --json parses and
    errors exit 1 with the API's message."""
    switch = Switch()
    receiver = Receiver(switch)
    await receiver.start()
    try:
        org = await make_org(server.dsn, "cli")
        webhook_id, _ = await make_webhook(sql, receiver.url, organisation=org.id, events=["request.*"])
        auth = ["--url", server.url, "--token", org.admin]
        since = ((await sql.fetchval("SELECT now()")) - timedelta(seconds=1)).isoformat()
        for _ in range(3):
            await sql.fetchval("SELECT dispatcher_emit($1, 'request.create', '{}')", org.id)
        await wait_db(sql, "SELECT count(*) FROM delivery WHERE webhook_id = $1 AND state = 'failed'", 3, webhook_id)

        code, out, err = await cli("deliveries", "list", "--webhook", str(webhook_id), "--state", "failed", *auth)
        assert code == 0, err
        assert out.count("dead letter") == 3 and "ATTEMPTS" in out
        code, out, _ = await cli("deliveries", "list", "--webhook", str(webhook_id), "--json", *auth)
        listed = json.loads(out)["data"]
        assert len(listed) == 3 and all(d["dead_letter"] for d in listed)

        code, out, _ = await cli("deliveries", "show", listed[0]["id"], *auth)
        assert code == 0 and "attempts:" in out and out.count(" 500 ") >= 4, out
        code, out, _ = await cli("deliveries", "show", listed[0]["id"], "--json", *auth)
        assert len(json.loads(out)["attempt_log"]) == 4

        switch.down = False
        code, out, _ = await cli("deliveries", "redeliver", listed[0]["id"], "--json", *auth)
        assert code == 0 and json.loads(out)["kind"] == "redeliver"
        await wait_db(sql, "SELECT count(*) FROM delivery WHERE kind = 'redeliver' AND webhook_id = $1"
                      " AND state = 'delivered'", 1, webhook_id)  # fmt: skip

        code, out, err = await cli("replay", str(webhook_id), "--since", since, *auth)
        assert code == 0, (out, err)
        assert "2/2 (2 delivered, 0 failed)" in out and out.rstrip().endswith("completed"), out
        print(f"\n$ dispatcher replay {webhook_id} --since {since}\n{out}")
        assert {a.message_id for a in receiver.arrivals} == {d["event_id"] for d in listed}

        code, out, _ = await cli("replay", str(webhook_id), "--since", since, "--json", *auth)
        assert code == 0 and json.loads(out)["deliveries_created"] == 0  # nothing failed any more

        code, out, err = await cli("deliveries", "show", str(uuid.uuid4()), *auth)
        assert code == 1 and "no such delivery (HTTP 404)" in err and out == ""
        code, _, err = await cli("replay", str(webhook_id), "--since", "2020-01-01T00:00:00Z", "--until",
                                 "2020-02-01T00:00:00Z", *auth)  # fmt: skip
        assert code == 1 and "14 days" in err and "HTTP 422" in err
        code, _, err = await cli("deliveries", "list", "--webhook", str(webhook_id), "--url", server.url)
        assert code == 1 and "no API token" in err
    finally:
        await receiver.stop()


async def test_webhook_token_and_event_type_commands(
    server: Server, sql: asyncpg.Connection, receiver: Receiver
) -> None:
    """webhook show|update|rotate-secret|pause|resume|delete, token list|revoke and event-types list|create over
    the API, with DISPATCHER_URL and DISPATCHER_TOKEN from the environment; a viewer's token gets the API's 403."""
    org = await make_org(server.dsn, "cli")
    webhook_id, _ = await make_webhook(sql, receiver.url, organisation=org.id, events=["request.*"])
    env = {"DISPATCHER_URL": server.url, "DISPATCHER_TOKEN": org.admin}

    code, out, err = await cli("webhook", "show", str(webhook_id), "--json", env=env)
    assert code == 0 and json.loads(out)["id"] == webhook_id, err
    code, out, _ = await cli("webhook", "show", str(webhook_id), env=env)
    assert code == 0 and "state" in out and "paused" in out
    code, out, err = await cli("webhook", "update", str(webhook_id), "--name", "billing", "--json", env=env)
    assert code == 0 and json.loads(out)["name"] == "billing", err
    code, out, _ = await cli("webhook", "rotate-secret", str(webhook_id), "--overlap", "60", "--json", env=env)
    rotated = json.loads(out)
    assert code == 0 and rotated["secret"].startswith("whsec_")
    assert (
        await sql.fetchval("SELECT secrets->0->>'secret' FROM webhook WHERE id = $1", webhook_id) == rotated["secret"]
    )
    code, out, _ = await cli("webhook", "pause", str(webhook_id), env=env)
    assert code == 0 and "paused" in out
    assert await sql.fetchval("SELECT paused FROM webhook WHERE id = $1", webhook_id) is True
    code, out, _ = await cli("webhook", "resume", str(webhook_id), "--json", env=env)
    assert code == 0 and json.loads(out)["paused"] is False

    code, out, _ = await cli("token", "list", "--json", env=env)
    assert code == 0 and {t["role"] for t in json.loads(out)["data"]} == {"admin", "viewer", "producer"}
    code, out, _ = await cli("token", "list", env=env)
    assert code == 0 and "ROLE" in out and "viewer" in out
    code, out, _ = await cli("token", "revoke", str(org.token_id("producer")), env=env)
    assert code == 0 and "revoked" in out

    name = f"cli.{org.id.replace('-', '_')}"
    code, out, _ = await cli("event-types", "create", name, "--description", "from the CLI", env=env)
    assert code == 0 and name in out
    code, out, _ = await cli("event-types", "list", "--json", env=env)
    assert code == 0 and name in {t["name"] for t in json.loads(out)}
    code, _, err = await cli("event-types", "create", name, env=env)
    assert code == 1 and "already" in err and "HTTP 422" in err

    viewer = {**env, "DISPATCHER_TOKEN": org.viewer}
    code, _, err = await cli("webhook", "rotate-secret", str(webhook_id), env=viewer)
    assert code == 1 and "HTTP 403" in err
    code, out, _ = await cli("webhook", "delete", str(webhook_id), env=env)
    assert code == 0 and "deleted" in out
    code, _, err = await cli("webhook", "show", str(webhook_id), env=env)
    assert code == 1 and "HTTP 404" in err
