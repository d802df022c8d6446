"""What the console stands on, without a browser: the figure routes (/status, /webhook_stats,
/webhooks/{id}/stats) are scoped to the caller's organisation and documented in /openapi.json, and the session
routes take only admin and viewer tokens, as JSON, and make changes need the CSRF token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from dispatcher.api.http import csrf_token
from tests.support.api import Server, ServerClient, assert_native_error, module_server
from tests.support.factories import make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = pytest.mark.db


@pytest.fixture(scope="module")
def server(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir: Path = tmp_path_factory.mktemp("console-api-daemon")
    with module_server(pg_server, workdir, {}) as s:
        yield s


async def test_figures_are_the_callers_organisations_own(server: Server, receiver: Receiver) -> None:
    """A viewer reads its organisation's queue, webhooks with their last hour, and a webhook's minutes; another
    organisation's deliveries are not counted and its webhook is not found; a producer may not read figures."""
    api = ServerClient(server)
    mine, theirs = await api.org("figures"), await api.org("others")
    conn = await asyncpg.connect(server.dsn)
    try:
        webhook_id, _ = await make_webhook(conn, receiver.url, organisation=mine.id, events=["request.*"], name="a")
        other_id, _ = await make_webhook(conn, receiver.url, organisation=theirs.id, events=["request.*"])
        for org in (mine, theirs, theirs):
            await conn.fetchval("SELECT dispatcher_emit($1, 'request.create', '{}')", org.id)
        await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'delivered' AND webhook_id = ANY($1)", 3,
                      [webhook_id, other_id])  # fmt: skip
    finally:
        await conn.close()

    status = await api("GET", "/status", token=mine.viewer)
    assert status.status == 200, status
    assert status.body["deliveries"]["delivered"] == 1 and status.body["dead_letters"] == 0
    assert status.body["webhooks"] == {"valid": 1} and status.body["failing"] == []

    listed = await api("GET", "/webhook_stats", token=mine.viewer)
    assert [w["id"] for w in listed.body["data"]] == [webhook_id]
    hour = listed.body["data"][0]["last_hour"]
    assert hour["attempts"] == 1 and hour["succeeded"] == 1 and hour["success_rate"] == 1.0

    stats = await api("GET", f"/webhooks/{webhook_id}/stats", token=mine.viewer)
    assert stats.status == 200 and stats.body["webhook"]["name"] == "a"
    assert sum(m["delivered"] for m in stats.body["minutes"]) == 1

    assert_native_error(await api("GET", f"/webhooks/{other_id}/stats", token=mine.admin), 404)
    assert_native_error(await api("GET", "/status", token=mine.producer), 403)
    assert_native_error(await api("GET", "/status"), 401)


async def test_sessions_take_admin_and_viewer_tokens_and_changes_need_the_csrf_token(server: Server) -> None:
    """Signing in takes a JSON body with a live admin or viewer token (a producer's, a wrong one, a form or another
    origin are refused) and sets an HttpOnly SameSite=Strict cookie; with that cookie reads work, a change without
    the session's CSRF token is 403, with it the change is made; signing out clears the cookie."""
    api = ServerClient(server)
    org = await api.org("session")
    url = f"{server.url}/console/session"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(url, json={"token": org.producer}) as reply:
            assert reply.status == 403
        async with http.post(url, json={"token": "dsp_" + "x" * 43}) as reply:
            assert reply.status == 401
        async with http.post(url, data={"token": org.admin}) as reply:
            assert reply.status == 415
        async with http.post(url, json={"token": org.admin}, headers={"Origin": "http://evil.example"}) as reply:
            assert reply.status == 403
        async with http.get(url) as reply:
            assert reply.status == 401
        async with http.post(url, json={"token": org.admin}) as reply:
            assert reply.status == 200
            body = await reply.json()
            cookie = reply.headers["Set-Cookie"]
        assert body == {"organisation": org.id, "role": "admin", "csrf_token": csrf_token(org.admin)}
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie

        async with http.get(f"{server.url}/organisation_settings") as reply:
            assert reply.status == 200
        change = f"{server.url}/event_types"
        async with http.post(change, json={"name": "session.made"}) as reply:
            assert reply.status == 403 and (await reply.json())["error"]["code"] == "csrf"
        async with http.post(change, json={"name": "session.made"}, headers={"X-CSRF-Token": "0" * 64}) as reply:
            assert reply.status == 403
        headers = {"X-CSRF-Token": body["csrf_token"]}
        async with http.post(change, json={"name": "session.made"}, headers=headers) as reply:
            assert reply.status == 201, await reply.text()

        async with http.get(f"{server.url}/console/") as reply:
            assert reply.status == 200 and reply.content_type == "text/html"
            assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]
            assert reply.headers["X-Frame-Options"] == "DENY"
        async with http.get(f"{server.url}/console/static/../app.py") as reply:
            assert reply.status == 404

        async with http.delete(url) as reply:
            assert reply.status == 403
        async with http.delete(url, headers=headers) as reply:
            assert reply.status == 204
        async with http.get(url) as reply:
            assert reply.status == 401
