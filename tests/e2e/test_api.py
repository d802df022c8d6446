"""The management API (SPEC §8), part 1: auth, roles, organisation isolation, bodies, errors, the ricloud dialect,
POST /events and /tokens, against `dispatcher run` as a subprocess.

One daemon (worker and API) serves the whole module; every test works in organisations of its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from tests.support.api import (
    Org,
    Server,
    ServerClient,
    add_token,
    assert_native_error,
    assert_ricloud_error,
    module_server,
)
from tests.support.receivers import Receiver
from tests.support.waits import poll

pytestmark = pytest.mark.db

MAX_BODY = 4096
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="module")
def server(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daemon for the module, with a small [api] max_body_bytes for the 413 checks."""
    workdir: Path = tmp_path_factory.mktemp("api-daemon")
    with module_server(pg_server, workdir, {"api": {"max_body_bytes": MAX_BODY}}) as s:
        yield s


@pytest.fixture
def api(server: Server) -> Api:
    """The module's server, with helpers bound to it."""
    return Api(server)


class Api(ServerClient):
    """Calls to the module's daemon and its database."""

    async def create_config(self, org: Org, url: str) -> dict[str, Any]:
        reply = await self("POST", "/configs/webhook", token=org.admin, json_body={"url": url})
        assert reply.status == 201, reply
        return reply.body

    async def valid_config(self, org: Org, url: str) -> dict[str, Any]:
        """A config whose creation test has succeeded (the receiver at `url` must answer 2xx)."""
        config = await self.create_config(org, url)

        async def is_valid() -> bool:
            reply = await self("GET", f"/configs/webhook/{config['id']}", token=org.admin)
            return reply.body["state"] == "valid"

        await poll(is_valid, f"webhook config {config['id']} valid")
        return config

    async def emit(self, org: Org, type_: str, payload: dict[str, Any]) -> str:
        """Insert an event as a producer would (no key): returns its id."""
        rows = await self.sql(
            "INSERT INTO events (organisation, type, payload) VALUES ($1, $2, $3::jsonb) RETURNING id::text",
            org.id,
            type_,
            json.dumps(payload),
        )
        return rows[0][0]


class Gate:
    """A receiver behaviour that holds every request until `open()` (then answers `status`)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.opened = asyncio.Event()

    def open(self) -> None:
        self.opened.set()

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        await asyncio.wait_for(self.opened.wait(), 10)
        return web.Response(status=self.status, text="ok")


def answer(status: int) -> Any:
    async def behaviour(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=status, text=f"answered {status}")

    return behaviour


def ricloud_signature_ok(arrival: Any, secret: str) -> bool:
    """Ricloud-Signature: t=<ts>,s=<base64 HMAC-SHA256 of "<ts>.<body>" keyed with the whole secret>."""
    header = arrival.headers["Ricloud-Signature"]
    t, s = (part.split("=", 1)[1] for part in header.split(",", 1))
    expected = hmac.new(secret.encode(), f"{t}.".encode() + arrival.body, hashlib.sha256).digest()
    return hmac.compare_digest(base64.b64decode(s), expected)


def exact_time(moment: datetime) -> str:
    """A timestamp with microseconds and Z, for date_created bounds that must not round."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- auth, roles, organisations ------------------------------------------------------------------------------


async def test_every_route_authenticates_checks_the_role_and_hides_other_organisations(
    api: Api, receiver: Receiver
) -> None:
    """Every route: 401 without a token (and with an unknown one, or a wrong scheme), 403 for a role that may not
    call it (viewer on writes, producer on reads but /key and POST /events), 404 for another organisation's
    record, and lists that show only the caller's organisation. Errors come in each route's dialect."""
    a, b = await api.org("auth-a"), await api.org("auth-b")
    b_config = await api.valid_config(b, receiver.url)
    b_task = (await api("POST", f"/configs/webhook/{b_config['id']}/test", token=b.admin)).body
    assert b_task["resource"] == "task", b_task
    b_event = await api.emit(b, "task.succeeded", {"n": 1})
    b_token_id = b.token_id("viewer")
    wid, tid, eid = b_config["id"], b_task["id"], b_event

    # (method, path, dialect, roles allowed, body, whether the path names one of b's records)
    routes: list[tuple[str, str, str, set[str], Any, bool]] = [
        ("POST", "/configs/webhook", "ricloud", {"admin"}, {"url": receiver.url}, False),
        ("GET", "/configs/webhook", "ricloud", {"admin", "viewer"}, None, False),
        ("GET", f"/configs/webhook/{wid}", "ricloud", {"admin", "viewer"}, None, True),
        ("POST", f"/configs/webhook/{wid}", "ricloud", {"admin"}, {"state": "new"}, True),
        ("DELETE", f"/configs/webhook/{wid}", "ricloud", {"admin"}, None, True),
        ("POST", f"/configs/webhook/{wid}/test", "ricloud", {"admin"}, None, True),
        ("GET", f"/tasks/{tid}", "ricloud", {"admin", "viewer"}, None, True),
        ("GET", "/key", "ricloud", {"admin", "viewer", "producer"}, None, False),
        ("POST", f"/keys/{b_token_id}", "ricloud", {"admin"}, {"webhook_config": None}, True),
        ("GET", "/organisation", "ricloud", {"admin", "viewer"}, None, False),
        ("POST", "/organisation", "ricloud", {"admin"}, {"default_webhook_config": None}, False),
        ("GET", "/events", "ricloud", {"admin", "viewer"}, None, False),
        ("GET", f"/events/{eid}", "ricloud", {"admin", "viewer"}, None, True),
        ("POST", "/events", "native", {"admin", "producer"}, {"type": "task.succeeded"}, False),
        ("GET", "/tokens", "native", {"admin"}, None, False),
        ("POST", "/tokens", "native", {"admin"}, {"role": "viewer"}, False),
        ("DELETE", f"/tokens/{b_token_id}", "native", {"admin"}, None, True),
    ]
    for method, path, dialect, allowed, body, foreign in routes:
        check = assert_ricloud_error if dialect == "ricloud" else assert_native_error
        kwargs: dict[str, Any] = {} if body is None else {"json_body": body}
        check(await api(method, path, **kwargs), 401)
        check(await api(method, path, token="dsp_not-a-token", **kwargs), 401)
        check(await api(method, path, token=a.admin, scheme="Basic", **kwargs), 401)
        for role in {"admin", "viewer", "producer"} - allowed:
            reply = await api(method, path, token=getattr(a, role), **kwargs)
            check(reply, 403)
            assert role in reply.text, reply
        if foreign:
            check(await api(method, path, token=a.admin, **kwargs), 404)

    # Nothing of b's changed through a's calls.
    reply = await api("GET", f"/configs/webhook/{wid}", token=b.admin, scheme="Bearer")
    assert reply.status == 200 and reply.body["state"] == "valid", reply
    assert (await api("GET", "/key", token=b.viewer)).status == 200
    assert (await api("GET", "/organisation", token=b.admin)).body["default_webhook_config"] is None

    # Lists show the caller's organisation only.
    assert (await api("GET", "/configs/webhook", token=a.viewer)).body["data"] == []
    assert (await api("GET", "/events", token=a.viewer)).body["data"] == []
    tokens = (await api("GET", "/tokens", token=a.admin)).body["data"]
    assert {t["organisation"] for t in tokens} == {a.id}, tokens
    listed_b = (await api("GET", "/configs/webhook", token=b.viewer)).body["data"]
    assert [c["id"] for c in listed_b] == [wid]


# ---- bodies and errors ---------------------------------------------------------------------------------------


async def test_bodies_are_json_whatever_the_content_type_and_big_ones_get_413(api: Api, receiver: Receiver) -> None:
    """A JSON body is read with no Content-Type, with text/plain and with application/json; `null` and an empty
    body are {}; a body over [api] max_body_bytes is 413 (with or without Content-Length) in the route's
    dialect; a body that is not a JSON object is a 400."""
    org = await api.org("body")
    for content_type in (None, "text/plain", "application/json", "application/x-www-form-urlencoded"):
        reply = await api(
            "POST",
            "/configs/webhook",
            token=org.admin,
            data=json.dumps({"url": receiver.url}).encode(),
            content_type=content_type,
        )
        assert reply.status == 201, (content_type, reply)
        assert reply.body["url"] == receiver.url
    config = reply.body

    # ricloud-py's test call sends the body `null`; an empty body works too.
    for data in (b"null", b"", b"  \n"):
        reply = await api("POST", f"/configs/webhook/{config['id']}/test", token=org.admin, data=data)
        assert reply.status == 200, (data, reply)
        assert reply.body["resource"] == "task"
    # `null` is {}: create then asks for the url.
    assert_ricloud_error(await api("POST", "/configs/webhook", token=org.admin, data=b"null"), 400, "url")

    for data in (b"{not json", b"[1, 2]", b'"a string"'):
        assert_ricloud_error(await api("POST", "/configs/webhook", token=org.admin, data=data), 400)
    assert_native_error(await api("POST", "/events", token=org.producer, data=b"[1]"), 400)

    big = json.dumps({"url": receiver.url, "pad": "x" * MAX_BODY}).encode()
    reply = await api("POST", "/configs/webhook", token=org.admin, data=big)
    assert_ricloud_error(reply, 413)
    assert str(MAX_BODY) in reply.body["message"]

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * (MAX_BODY // 2)
        yield json.dumps({"url": receiver.url}).encode()

    reply = await api("POST", "/configs/webhook", token=org.admin, data=chunks())
    assert_ricloud_error(reply, 413)
    reply = await api("POST", "/events", token=org.producer, json_body={"type": "task.succeeded", "data": "x" * 5000})
    assert_native_error(reply, 413)
    # Exactly at the limit is fine.
    at_limit = json.dumps({"url": receiver.url, "pad": ""}).encode()
    at_limit = at_limit[:-2] + b" " * (MAX_BODY - len(at_limit)) + at_limit[-2:]
    assert len(at_limit) == MAX_BODY
    assert (await api("POST", "/configs/webhook", token=org.admin, data=at_limit)).status == 201
    configs = await api.sql("SELECT count(*) FROM webhook WHERE organisation = $1", org.id)
    assert configs[0][0] == 5  # four content types and the one at the limit; nothing from the 413s


async def test_unknown_routes_and_wrong_methods_answer_json(api: Api) -> None:
    """An unknown path is a JSON 404, a known path with a wrong method a JSON 405; never aiohttp's text page."""
    org = await api.org("routes")
    for method, path, status in [
        ("GET", "/no/such/route", 404),
        ("POST", "/configs", 404),
        ("GET", "/tokens/1", 405),
        ("PUT", "/configs/webhook", 405),
        ("PATCH", "/organisation", 405),
        ("DELETE", "/events", 405),
    ]:
        for token in (None, org.admin):
            reply = await api(method, path, token=token)
            assert reply.status == status, (method, path, reply)
            assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
            assert isinstance(reply.body, dict) and reply.body.get("error"), reply
            assert "Traceback" not in reply.text


async def test_router_errors_on_ricloud_paths_use_ricloud_error_shape(api: Api) -> None:
    """ricloud-py reads `error` and `message` at the top level: a method the server does not serve on a ricloud
    path (ricloud-py's Key.list() is GET /keys, Key.rotate POST /keys/{id}/rotate, Task.list GET /tasks,
    DELETE /organisation) must answer ricloud's shape so that ricloud-py prints a message, not None."""
    org = await api.org("rshape")
    for method, path in [("GET", "/keys"), ("GET", "/keys/1"), ("GET", "/tasks"), ("DELETE", "/organisation")]:
        reply = await api(method, path, token=org.admin)
        assert reply.status in (404, 405), reply
        assert_ricloud_error(reply, reply.status)


async def test_router_errors_have_the_native_shape(api: Api) -> None:
    """Outside the ricloud paths the router's errors have the whole native shape {"error": {"code", "message",
    "field"}} (field null), like every other native error."""
    assert_native_error(await api("GET", "/no/such/route"), 404)
    assert_native_error(await api("GET", "/tokens/1"), 405)


# ---- /configs/webhook ------------------------------------------------------------------------------------------


async def test_create_and_retrieve_webhook_config(api: Api, receiver: Receiver) -> None:
    """POST /configs/webhook answers the resource with its secret and state new and queues a test, which
    reaches the receiver as ricloud's webhook_config.test event at <url>/<event id>, signed with the secret;
    GET shows the config without the secret; bad urls are 400 naming url; unknown ids are 404."""
    org = await api.org("create")
    reply = await api("POST", "/configs/webhook", token=org.admin, json_body={"url": receiver.url})
    assert reply.status == 201, reply
    config = reply.body
    assert set(config) == {"id", "resource", "organisation", "url", "secret", "state", "date_created"}, config
    assert config["resource"] == "webhook_config" and config["organisation"] == org.id
    assert config["url"] == receiver.url and config["state"] == "new"
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", config["secret"]), config
    assert RFC3339_MS.match(config["date_created"]), config

    await receiver.wait_count(1)
    arrival = receiver.arrivals[0]
    event_id = arrival.path.removeprefix("/hook/")
    assert UUID_RE.match(event_id), arrival.path
    envelope = arrival.json
    assert envelope["id"] == event_id and envelope["resource"] == "event"
    assert (envelope["type"], envelope["action"]) == ("webhook_config", "test")
    assert envelope["data"]["id"] == config["id"] and "secret" not in envelope["data"]
    assert ricloud_signature_ok(arrival, config["secret"])

    async def state() -> Any:
        reply = await api("GET", f"/configs/webhook/{config['id']}", token=org.viewer)
        assert reply.status == 200, reply
        assert "secret" not in reply.body
        return reply.body["state"] == "valid" and reply.body

    shown = await poll(state, "config valid after its creation test")
    assert {k: v for k, v in config.items() if k not in ("secret", "state")} == {
        k: v for k, v in shown.items() if k != "state"
    }

    for body, field in [
        ({}, "url"),
        ({"url": ""}, "url"),
        ({"url": 42}, "url"),
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://10.1.2.3/hook"}, "url"),  # refused by the SSRF guard (only loopback is allowed here)
        ({"url": "http://169.254.169.254/latest"}, "url"),
    ]:
        reply = await api("POST", "/configs/webhook", token=org.admin, json_body=body)
        assert_ricloud_error(reply, 400, field)
        assert reply.body["params"][field], reply
    for path in ("/configs/webhook/999999", "/configs/webhook/abc", "/configs/webhook/-1"):
        assert_ricloud_error(await api("GET", path, token=org.admin), 404)


async def test_ricloud_await_waits_for_the_task_and_tasks_show_results(api: Api, receiver: Receiver) -> None:
    """POST /configs/webhook/{id}/test with Ricloud-Await: N answers the finished task (receiver 200 → succeeded,
    config valid; receiver 404 → failed with the status, config invalid with last error); without it the task
    is pending and GET /tasks/{id} (also with Ricloud-Await) shows its result; a test while one is pending
    returns that task."""
    org = await api.org("await")
    config = await api.valid_config(org, receiver.url)
    path = f"/configs/webhook/{config['id']}/test"

    reply = await api("POST", path, token=org.admin, data=b"null", headers={"Ricloud-Await": "10"})
    assert reply.status == 200, reply
    task = reply.body
    assert set(task) == {"id", "resource", "type", "state", "result", "date_created", "date_completed"}, task
    assert task["resource"] == "task" and task["type"] == "webhook_config.test"
    assert task["state"] == "succeeded", task
    assert task["result"]["status"] == 200, task
    assert RFC3339_MS.match(task["date_created"]) and RFC3339_MS.match(task["date_completed"]), task
    again = await api("GET", f"/tasks/{task['id']}", token=org.viewer)
    assert again.status == 200 and again.body == task, again
    assert (await api("GET", f"/configs/webhook/{config['id']}", token=org.admin)).body["state"] == "valid"

    # Held by a gate: without Ricloud-Await the task is pending, and a second test returns the same task.
    gate = Gate(status=404)
    receiver.behaviour = gate
    first = (await api("POST", path, token=org.admin)).body
    second = (await api("POST", path, token=org.admin)).body
    assert first["state"] == "pending" and first["result"] is None and first["date_completed"] is None, first
    assert second["id"] == first["id"], (first, second)
    assert (await api("GET", f"/tasks/{first['id']}", token=org.admin)).body["state"] == "pending"
    gate.open()
    done = await api("GET", f"/tasks/{first['id']}", token=org.admin, headers={"Ricloud-Await": "10"})
    assert done.body["state"] == "failed", done
    assert done.body["result"]["status"] == 404, done

    reply = await api("GET", f"/configs/webhook/{config['id']}", token=org.admin)
    assert reply.body["state"] == "invalid", reply
    last_error = await api.sql("SELECT last_error FROM webhook WHERE id = $1", config["id"])
    assert "404" in last_error[0][0], last_error

    for bad in ("abc", "00000000-0000-0000-0000-000000000000"):
        assert_ricloud_error(await api("GET", f"/tasks/{bad}", token=org.admin), 404)
    assert_ricloud_error(await api("POST", "/configs/webhook/999999/test", token=org.admin), 404)


async def test_list_filters_dates_and_paging(api: Api, receiver: Receiver) -> None:
    """GET /configs/webhook: newest first; `state` filters (deactivated hidden unless asked for, several states
    comma-separated); date_created and date_created[gt|gte|lt|lte]; `limit` with `has_more` and
    `starting_after`; bad parameters are 400 naming them."""
    org = await api.org("list")
    configs = []
    for _ in range(3):
        configs.append(await api.valid_config(org, receiver.url))
        await asyncio.sleep(0.01)
    a, b, c = (x["id"] for x in configs)
    reply = await api("POST", f"/configs/webhook/{a}", token=org.admin, json_body={"state": "deactivated"})
    assert reply.status == 200 and reply.body["state"] == "deactivated", reply

    async def ids(**params: str) -> list[int]:
        reply = await api("GET", "/configs/webhook", token=org.viewer, params=params)
        assert reply.status == 200, (params, reply)
        assert reply.body["resource"] == "list" and reply.body["has_more"] is False, reply
        return [x["id"] for x in reply.body["data"]]

    assert await ids() == [c, b]
    assert await ids(state="deactivated") == [a]
    assert await ids(state="valid") == [c, b]
    assert await ids(state="valid,deactivated") == [c, b, a]
    assert await ids(state="invalid") == []

    created = {
        r["id"]: r["created_at"]
        for r in await api.sql("SELECT id, created_at FROM webhook WHERE id = ANY($1)", [a, b, c])
    }
    at_b = exact_time(created[b])
    everything = "valid,deactivated"
    assert await ids(state=everything, **{"date_created[gt]": at_b}) == [c]
    assert await ids(state=everything, **{"date_created[gte]": at_b}) == [c, b]
    assert await ids(state=everything, **{"date_created[lt]": at_b}) == [a]
    assert await ids(state=everything, **{"date_created[lte]": at_b}) == [b, a]
    assert await ids(state=everything, **{"date_created[gt]": exact_time(created[a]), "date_created[lt]": at_b}) == []
    assert await ids(state=everything, date_created=at_b) == [c, b]
    assert await ids(**{"date_created[gt]": "2999-01-01T00:00:00Z"}) == []
    assert await ids(**{"date_created[gte]": "2000-01-01T00:00:00+00:00"}) == [c, b]

    page = await api("GET", "/configs/webhook", token=org.admin, params={"state": everything, "limit": "2"})
    assert [x["id"] for x in page.body["data"]] == [c, b] and page.body["has_more"] is True, page
    rest = await api(
        "GET", "/configs/webhook", token=org.admin, params={"state": everything, "limit": "2", "starting_after": str(b)}
    )
    assert [x["id"] for x in rest.body["data"]] == [a] and rest.body["has_more"] is False, rest
    exact = await api("GET", "/configs/webhook", token=org.admin, params={"limit": "2"})
    assert exact.body["has_more"] is False, exact  # two left once a is hidden: no more

    for params, field in [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"state": "bogus"}, "state"),
        ({"date_created[gt]": "yesterday"}, "date_created[gt]"),
        ({"date_created": "2026-13-45"}, "date_created"),
        ({"starting_after": "x"}, "starting_after"),
    ]:
        assert_ricloud_error(await api("GET", "/configs/webhook", token=org.admin, params=params), 400, field)


async def test_update_url_and_state(api: Api, receiver: Receiver) -> None:
    """POST /configs/webhook/{id}: a new url makes the config new and tests the new url (then valid); state new
    retests; state valid (or anything but new/deactivated) is 400; other fields and bad urls are 400 naming the
    field; a deactivated config keeps its state on a url change and is hidden from the list."""
    org = await api.org("update")
    config = await api.valid_config(org, receiver.url)
    path = f"/configs/webhook/{config['id']}"
    gate = Gate()
    receiver.behaviour = gate
    before = len(receiver.arrivals)
    new_url = receiver.url.replace("/hook", "/moved")

    reply = await api("POST", path, token=org.admin, json_body={"url": new_url})
    assert reply.status == 200, reply
    assert reply.body["url"] == new_url and reply.body["state"] == "new", reply
    assert "secret" not in reply.body
    await receiver.wait_count(before + 1)
    arrival = receiver.arrivals[-1]
    assert arrival.path.startswith("/moved/") and arrival.json["type"] == "webhook_config", arrival
    assert (await api("GET", path, token=org.admin)).body["state"] == "new"
    gate.open()
    await poll(lambda: _state_is(api, org, config["id"], "valid"), "valid after the url change's test")

    reply = await api("POST", path, token=org.admin, json_body={"state": "new"})
    assert reply.status == 200 and reply.body["state"] in ("new", "valid"), reply
    await receiver.wait_count(before + 2)
    assert receiver.arrivals[-1].json["action"] == "test"
    await poll(lambda: _state_is(api, org, config["id"], "valid"), "valid after the retest")

    for body, field in [
        ({"state": "valid"}, "state"),
        ({"state": "invalid"}, "state"),
        ({"state": "bogus"}, "state"),
        ({"url": "ftp://example.com/"}, "url"),
        ({"url": None}, "url"),
        ({"secret": "whsec_x"}, "secret"),
    ]:
        assert_ricloud_error(await api("POST", path, token=org.admin, json_body=body), 400, field)
    assert (await api("GET", path, token=org.admin)).body["url"] == new_url

    reply = await api("POST", path, token=org.admin, json_body={"state": "deactivated"})
    assert reply.body["state"] == "deactivated", reply
    before = len(receiver.arrivals)
    reply = await api("POST", path, token=org.admin, json_body={"url": receiver.url})
    assert reply.body["state"] == "deactivated" and reply.body["url"] == receiver.url, reply
    assert (await api("GET", "/configs/webhook", token=org.admin)).body["data"] == []
    # A test of a deactivated config is sent and recorded, and changes no state.
    reply = await api("POST", f"{path}/test", token=org.admin, headers={"Ricloud-Await": "10"})
    assert reply.body["state"] == "succeeded", reply
    assert len(receiver.arrivals) == before + 1  # the url change of a deactivated config sent no test
    assert (await api("GET", path, token=org.admin)).body["state"] == "deactivated"
    # Asking for state new re-enables it, with a test.
    reply = await api("POST", path, token=org.admin, json_body={"state": "new"})
    assert reply.body["state"] in ("new", "valid"), reply
    await receiver.wait_count(before + 2)
    await poll(lambda: _state_is(api, org, config["id"], "valid"), "valid after the re-enable's test")
    assert_ricloud_error(await api("POST", "/configs/webhook/999999", token=org.admin, json_body={"state": "new"}), 404)


async def _state_is(api: Api, org: Org, webhook_id: int, state: str) -> bool:
    reply = await api("GET", f"/configs/webhook/{webhook_id}", token=org.admin)
    return reply.body["state"] == state


async def test_delete_answers_the_resource_and_clears_bindings(api: Api, receiver: Receiver) -> None:
    """DELETE /configs/webhook/{id} answers 200 with the resource (ricloud-py parses it); afterwards the config is
    404, gone from the list, a second delete is 404, and the key binding and organisation default that named it
    are cleared."""
    org = await api.org("delete")
    config = await api.valid_config(org, receiver.url)
    keep = await api.valid_config(org, receiver.url)
    assert (
        await api(
            "POST", f"/keys/{org.token_id('producer')}", token=org.admin, json_body={"webhook_config": config["id"]}
        )
    ).status == 200
    reply = await api("POST", "/organisation", token=org.admin, json_body={"default_webhook_config": config["id"]})
    assert reply.body["default_webhook_config"] == config["id"], reply

    reply = await api("DELETE", f"/configs/webhook/{config['id']}", token=org.admin)
    assert reply.status == 200, reply
    assert reply.body["id"] == config["id"] and reply.body["resource"] == "webhook_config", reply
    assert "secret" not in reply.body
    assert_ricloud_error(await api("GET", f"/configs/webhook/{config['id']}", token=org.admin), 404)
    assert_ricloud_error(await api("DELETE", f"/configs/webhook/{config['id']}", token=org.admin), 404)
    assert_ricloud_error(await api("POST", f"/configs/webhook/{config['id']}/test", token=org.admin), 404)
    listed = await api("GET", "/configs/webhook", token=org.admin, params={"state": "new,valid,invalid,deactivated"})
    assert [x["id"] for x in listed.body["data"]] == [keep["id"]], listed
    assert (await api("GET", "/key", token=org.producer)).body["webhook_config"] is None
    assert (await api("GET", "/organisation", token=org.admin)).body["default_webhook_config"] is None
    assert_ricloud_error(await api("DELETE", "/configs/webhook/abc", token=org.admin), 404)


# ---- keys, organisation, events ---------------------------------------------------------------------------


async def test_key_binding_routes_the_keys_events(api: Api, receiver: Receiver) -> None:
    """GET /key shows the calling token as a key (any role); POST /keys/{id} {webhook_config} binds it and /key
    shows the binding; an event posted with that key goes to the bound config; bad or foreign configs are 400
    naming webhook_config; unbinding with null works."""
    org, other = await api.org("key"), await api.org("key-other")
    config = await api.valid_config(org, receiver.url)
    foreign = await api.valid_config(other, receiver.url)
    producer_id = org.token_id("producer")

    reply = await api("GET", "/key", token=org.producer)
    assert reply.status == 200, reply
    key = reply.body
    assert key["resource"] == "key" and key["id"] == producer_id and key["webhook_config"] is None, key
    assert key["organisation"] == org.id and key["role"] == "producer"
    assert RFC3339_MS.match(key["date_created"]), key
    assert "digest" not in key and "token" not in key

    reply = await api("POST", f"/keys/{producer_id}", token=org.admin, json_body={"webhook_config": config["id"]})
    assert reply.status == 200 and reply.body["webhook_config"] == config["id"], reply
    assert (await api("GET", "/key", token=org.producer)).body["webhook_config"] == config["id"]
    # ricloud-py sends a resource as its id; a whole resource object is taken too.
    reply = await api("POST", f"/keys/{producer_id}", token=org.admin, json_body={"webhook_config": config})
    assert reply.status == 200 and reply.body["webhook_config"] == config["id"], reply

    before = len(receiver.arrivals)
    reply = await api("POST", "/events", token=org.producer, json_body={"type": "task.succeeded", "data": {"k": 1}})
    assert reply.status == 201, reply
    await receiver.wait_count(before + 1)
    arrival = receiver.arrivals[-1]
    assert arrival.path == f"/hook/{reply.body['id']}", arrival.path
    assert (arrival.json["type"], arrival.json["action"], arrival.json["data"]) == ("task", "succeeded", {"k": 1})

    for body in (
        {},
        {"webhook_config": foreign["id"]},
        {"webhook_config": "abc"},
        {"webhook_config": True},
        {"webhook_config": 999999},
    ):
        assert_ricloud_error(
            await api("POST", f"/keys/{producer_id}", token=org.admin, json_body=body), 400, "webhook_config"
        )
    assert_ricloud_error(await api("POST", "/keys/abc", token=org.admin, json_body={"webhook_config": None}), 404)
    assert_ricloud_error(await api("POST", "/keys/999999", token=org.admin, json_body={"webhook_config": None}), 404)
    reply = await api("POST", f"/keys/{producer_id}", token=org.admin, json_body={"webhook_config": None})
    assert reply.status == 200 and reply.body["webhook_config"] is None, reply


async def test_organisation_default_and_events(api: Api, receiver: Receiver) -> None:
    """POST /organisation {default_webhook_config} makes an event inserted with no key go to that config; GET
    /events and /events/{id} show ricloud's type/action halves, the data, and state pending → delivered with
    date_delivered; the type and action filters and paging work; bad parameters are 400; unknown ids 404."""
    org, other = await api.org("orgdef"), await api.org("orgdef-other")
    config = await api.valid_config(org, receiver.url)
    foreign = await api.valid_config(other, receiver.url)

    reply = await api("GET", "/organisation", token=org.viewer)
    assert reply.status == 200, reply
    assert reply.body["resource"] == "organisation" and reply.body["id"] == org.id, reply
    assert reply.body["default_webhook_config"] is None
    for body in ({}, {"default_webhook_config": foreign["id"]}, {"default_webhook_config": "x"}):
        assert_ricloud_error(
            await api("POST", "/organisation", token=org.admin, json_body=body), 400, "default_webhook_config"
        )
    reply = await api("POST", "/organisation", token=org.admin, json_body={"default_webhook_config": config["id"]})
    assert reply.status == 200 and reply.body["default_webhook_config"] == config["id"], reply
    assert (await api("GET", "/organisation", token=org.admin)).body["default_webhook_config"] == config["id"]

    gate = Gate()
    receiver.behaviour = gate
    before = len(receiver.arrivals)
    event_id = await api.emit(org, "poll.completed", {"poll": 7})
    await receiver.wait_count(before + 1)
    arrival = receiver.arrivals[-1]
    assert arrival.path == f"/hook/{event_id}", arrival.path
    assert arrival.json == {**arrival.json, "id": event_id, "type": "poll", "action": "completed", "data": {"poll": 7}}

    reply = await api("GET", f"/events/{event_id}", token=org.viewer)
    assert reply.status == 200, reply
    event = reply.body
    assert set(event) == {
        "id",
        "resource",
        "type",
        "action",
        "data",
        "state",
        "retries",
        "date_created",
        "date_delivered",
    }, event
    assert (event["resource"], event["type"], event["action"], event["data"]) == (
        "event",
        "poll",
        "completed",
        {"poll": 7},
    )
    assert event["state"] == "pending" and event["date_delivered"] is None and event["retries"] == 0, event
    gate.open()

    async def delivered() -> Any:
        reply = await api("GET", f"/events/{event_id}", token=org.viewer)
        return reply.body if reply.body["state"] == "delivered" else None

    event = await poll(delivered, "event delivered")
    assert RFC3339_MS.match(event["date_delivered"]) and event["date_delivered"] >= event["date_created"], event

    second = await api.emit(org, "task.succeeded", {"t": 1})
    third = await api.emit(org, "poll.created", {"p": 2})

    async def listed(**params: str) -> tuple[list[str], bool]:
        reply = await api("GET", "/events", token=org.viewer, params=params)
        assert reply.status == 200 and reply.body["resource"] == "list", reply
        return [e["id"] for e in reply.body["data"]], reply.body["has_more"]

    assert await listed() == ([third, second, event_id], False)
    assert await listed(type="poll") == ([third, event_id], False)
    assert await listed(action="created") == ([third], False)
    assert await listed(type="poll", action="completed") == ([event_id], False)
    assert await listed(type="task", action="created") == ([], False)
    assert await listed(limit="2") == ([third, second], True)
    assert await listed(limit="2", starting_after=second) == ([event_id], False)

    for params, field in [({"limit": "0"}, "limit"), ({"starting_after": "nope"}, "starting_after")]:
        assert_ricloud_error(await api("GET", "/events", token=org.admin, params=params), 400, field)

    # An event whose delivery runs out of attempts (4 here: the test schedule has 3 retries) is failed.
    receiver.behaviour = answer(500)
    failing = await api.emit(org, "task.failed", {})

    async def failed() -> Any:
        reply = await api("GET", f"/events/{failing}", token=org.viewer)
        return reply.body if reply.body["state"] == "failed" else None

    event = await poll(failed, "event failed")
    assert event["retries"] == 3 and event["date_delivered"] is None, event
    for bad in ("nope", "00000000-0000-0000-0000-000000000000"):
        assert_ricloud_error(await api("GET", f"/events/{bad}", token=org.admin), 404)


@pytest.mark.timeout(25)
async def test_test_calls_are_rate_limited_per_token(api: Api, receiver: Receiver) -> None:
    """At most 30 tests per token and minute: the 31st answers 429 in ricloud's shape with a Retry-After of at
    most 60 s; another token of the organisation is not limited; the count lives in PostgreSQL."""
    org = await api.org("rate")
    config = await api.valid_config(org, receiver.url)
    path = f"/configs/webhook/{config['id']}/test"
    # Stay inside one minute-window: start with at least 5 s of it left (30 calls take well under a second).
    left = (await api.sql("SELECT 60 - extract(epoch FROM now())::numeric % 60"))[0][0]
    if left < 5:
        await asyncio.sleep(float(left) + 0.5)
    for n in range(30):
        reply = await api("POST", path, token=org.admin)
        assert reply.status == 200, (n, reply)
    reply = await api("POST", path, token=org.admin)
    assert_ricloud_error(reply, 429)
    assert 1 <= int(reply.headers["Retry-After"]) <= 60, reply.headers
    uses = await api.sql("SELECT uses FROM rate_limit WHERE token_id = $1 AND action = 'test'", org.token_id("admin"))
    assert uses[0][0] == 31, uses

    other_id, other = await _admin_token(api, org)
    assert (await api("POST", path, token=other)).status == 200
    # Reaching the limit by another process's counts (the table) works the same.
    await api.sql("UPDATE rate_limit SET uses = 30 WHERE token_id = $1 AND action = 'test'", other_id)
    assert_ricloud_error(await api("POST", path, token=other), 429)


async def _admin_token(api: Api, org: Org) -> tuple[int, str]:
    conn = await asyncpg.connect(api.server.dsn)
    try:
        return await add_token(conn, org.id, "admin", "second admin")
    finally:
        await conn.close()


# ---- native: POST /events, /tokens --------------------------------------------------------------------------


async def test_post_events_as_producer(api: Api) -> None:
    """POST /events as a producer answers 201 with the event id and stores the event with the caller's key;
    an idempotency key returns the first id; a type not in the catalogue is 422 naming type; a missing type or
    a bad actor or object_id is 400 naming the field."""
    org = await api.org("emit")
    reply = await api(
        "POST",
        "/events",
        token=org.producer,
        json_body={
            "type": "request.create",
            "payload": {"subject": "Printer on fire"},
            "object_id": 12345,
            "actor": {"id": 591, "name": "Ann"},
        },
    )
    assert reply.status == 201, reply
    assert UUID_RE.match(reply.body["id"]), reply
    rows = await api.sql(
        "SELECT organisation, type, payload::text, object_id, actor::text, key_id FROM events WHERE id = $1::uuid",
        reply.body["id"],
    )
    assert len(rows) == 1
    row = rows[0]
    assert (row[0], row[1], json.loads(row[2]), row[3]) == (
        org.id,
        "request.create",
        {"subject": "Printer on fire"},
        "12345",
    )
    assert json.loads(row[4]) == {"id": 591, "name": "Ann"} and row[5] == org.token_id("producer")

    first = await api("POST", "/events", token=org.admin, json_body={"type": "task.failed", "idempotency_key": "k1"})
    again = await api("POST", "/events", token=org.admin, json_body={"type": "task.failed", "idempotency_key": "k1"})
    assert first.status == 201 and again.body["id"] == first.body["id"], (first, again)

    reply = await api("POST", "/events", token=org.producer, json_body={"type": "no.such.type"})
    assert_native_error(reply, 422, "type")
    for body, field in [
        ({}, "type"),
        ({"type": 7}, "type"),
        ({"type": "request.create", "actor": "Ann"}, "actor"),
        ({"type": "request.create", "object_id": [1]}, "object_id"),
    ]:
        assert_native_error(await api("POST", "/events", token=org.producer, json_body=body), 400, field)
    count = await api.sql("SELECT count(*) FROM events WHERE organisation = $1", org.id)
    assert count[0][0] == 2


async def test_tokens_create_list_revoke(api: Api) -> None:
    """POST /tokens (admin) answers the new token once; GET /tokens lists tokens without secret or digest, newest
    first with a cursor; DELETE /tokens/{id} revokes it and the revoked token gets 401; bad input is 400 naming
    the field; another organisation's token is 404."""
    org, other = await api.org("tokens"), await api.org("tokens-other")
    config = await api.create_config(org, "http://127.0.0.1:9/hook")
    reply = await api("POST", "/tokens", token=org.admin, json_body={"role": "viewer", "name": "dashboard"})
    assert reply.status == 201, reply
    created = reply.body
    assert created["role"] == "viewer" and created["name"] == "dashboard" and created["organisation"] == org.id
    token = created["token"]
    assert token.startswith("dsp_") and "digest" not in created
    assert (await api("GET", "/key", token=token)).body["id"] == created["id"]
    bound = await api("POST", "/tokens", token=org.admin, json_body={"role": "producer", "webhook_id": config["id"]})
    assert bound.status == 201 and bound.body["webhook_id"] == config["id"], bound

    reply = await api("GET", "/tokens", token=org.admin)
    assert reply.status == 200, reply
    listed = reply.body["data"]
    assert [t["id"] for t in listed][:2] == [bound.body["id"], created["id"]], listed
    assert len(listed) == 5 and reply.body["next_cursor"] is None
    assert token not in reply.text and bound.body["token"] not in reply.text
    assert all("token" not in t and "digest" not in t for t in listed), listed
    page = await api("GET", "/tokens", token=org.admin, params={"limit": "2"})
    assert len(page.body["data"]) == 2 and page.body["next_cursor"] == created["id"], page
    rest = await api("GET", "/tokens", token=org.admin, params={"limit": "2", "cursor": str(created["id"])})
    assert [t["id"] for t in rest.body["data"]] == [t["id"] for t in listed[2:4]], rest

    reply = await api("DELETE", f"/tokens/{created['id']}", token=org.admin)
    assert reply.status == 200 and reply.body["revoked_at"], reply
    assert "token" not in reply.body
    assert_ricloud_error(await api("GET", "/key", token=token), 401)
    assert_native_error(await api("GET", "/tokens", token=token), 401)
    listed = (await api("GET", "/tokens", token=org.admin)).body["data"]
    assert next(t for t in listed if t["id"] == created["id"])["revoked_at"], listed

    for body, field in [
        ({}, "role"),
        ({"role": "root"}, "role"),
        ({"role": "viewer", "name": 5}, "name"),
        ({"role": "viewer", "webhook_id": "x"}, "webhook_id"),
        ({"role": "viewer", "webhook_id": 999999}, "webhook_id"),
    ]:
        assert_native_error(await api("POST", "/tokens", token=org.admin, json_body=body), 400, field)
    for params, field in [({"limit": "0"}, "limit"), ({"cursor": "abc"}, "cursor")]:
        assert_native_error(await api("GET", "/tokens", token=org.admin, params=params), 400, field)
    assert_native_error(await api("DELETE", f"/tokens/{other.token_id('admin')}", token=org.admin), 404)
    assert_native_error(await api("DELETE", "/tokens/abc", token=org.admin), 404)
    assert (await api("GET", "/key", token=other.admin)).status == 200
    count = await api.sql("SELECT count(*) FROM token WHERE organisation = $1", org.id)
    assert count[0][0] == 5


async def test_ids_out_of_range_are_404_or_400_not_500(api: Api) -> None:
    """An id too big for the database's integer is an unknown record (404) in a path and a bad value (400 naming
    the field) in a body, never a 500 (whose native shape ricloud-py prints as message None)."""
    org = await api.org("bigid")
    big = 2**31
    for method, path, body in [
        ("GET", f"/configs/webhook/{big}", None),
        ("POST", f"/configs/webhook/{big}", {"state": "new"}),
        ("DELETE", f"/configs/webhook/{big}", None),
        ("POST", f"/configs/webhook/{big}/test", None),
        ("POST", f"/keys/{big}", {"webhook_config": None}),
    ]:
        kwargs = {} if body is None else {"json_body": body}
        assert_ricloud_error(await api(method, path, token=org.admin, **kwargs), 404)
    assert_native_error(await api("DELETE", f"/tokens/{big}", token=org.admin), 404)
    path = f"/keys/{org.token_id('viewer')}"
    assert_ricloud_error(
        await api("POST", path, token=org.admin, json_body={"webhook_config": big}), 400, "webhook_config"
    )
    assert_ricloud_error(
        await api("POST", "/organisation", token=org.admin, json_body={"default_webhook_config": big}),
        400,
        "default_webhook_config",
    )
    assert_native_error(
        await api("POST", "/tokens", token=org.admin, json_body={"role": "viewer", "webhook_id": big}),
        400,
        "webhook_id",
    )


async def test_tokens_cannot_be_bound_to_a_deleted_webhook(api: Api, receiver: Receiver) -> None:
    """POST /tokens {webhook_id} of a deleted webhook is 400 naming webhook_id (as POST /keys/{id} does): a key
    bound to a deleted webhook would send its events nowhere, bypassing the organisation default."""
    org = await api.org("bind-deleted")
    default = await api.valid_config(org, receiver.url)
    reply = await api("POST", "/organisation", token=org.admin, json_body={"default_webhook_config": default["id"]})
    assert reply.status == 200, reply
    gone = await api.valid_config(org, receiver.url)
    assert (await api("DELETE", f"/configs/webhook/{gone['id']}", token=org.admin)).status == 200
    bound = await api(
        "POST", f"/keys/{org.token_id('producer')}", token=org.admin, json_body={"webhook_config": gone["id"]}
    )
    assert_ricloud_error(bound, 400, "webhook_config")  # the ricloud route refuses it already

    reply = await api("POST", "/tokens", token=org.admin, json_body={"role": "producer", "webhook_id": gone["id"]})
    if reply.status == 201:  # what it leads to: the key's event goes nowhere instead of to the default
        before = len(receiver.arrivals)
        event = await api("POST", "/events", token=reply.body["token"], json_body={"type": "task.succeeded"})
        assert event.status == 201, event
        await receiver.wait_count(before + 1, timeout=3)
    assert_native_error(reply, 400, "webhook_id")


async def test_bodies_json_cannot_carry_are_400_not_500(api: Api) -> None:
    """NaN, Infinity, 1e999 and nesting deeper than the decoder goes are 400 invalid_json in the route's dialect,
    never a 500; nothing is stored. (An integer of over 4,300 digits, which Python refuses to decode, takes a body
    larger than this module's 4 KiB limit: it is refused by the same ValueError path as malformed JSON.)"""
    org = await api.org("hostile")
    bodies = [
        b'{"type": "request.create", "payload": {"n": NaN}}',
        b'{"type": "request.create", "payload": {"n": -Infinity}}',
        b'{"type": "request.create", "payload": {"n": 1e999}}',
        b'{"type": "request.create", "payload": ' + b"[" * 1500 + b"]" * 1500 + b"}",  # 1,500 levels deep
    ]
    for body in bodies:
        reply = await api("POST", "/events", token=org.producer, data=body)
        assert_native_error(reply, 400)
        assert reply.body["error"]["code"] == "invalid_json", reply
    reply = await api("POST", "/configs/webhook", token=org.admin, data=b'{"url": NaN}')
    assert_ricloud_error(reply, 400)
    assert await api.sql("SELECT count(*) FROM events WHERE organisation = $1", org.id) == [(0,)]


async def test_answers_are_not_cached_or_sniffed(api: Api) -> None:
    """Every answer, errors and unknown routes included, carries Cache-Control: no-store and
    X-Content-Type-Options: nosniff (tokens and secrets appear in some of them)."""
    org = await api.org("nostore")
    for reply in (
        await api("GET", "/key", token=org.admin),
        await api("POST", "/tokens", token=org.admin, json_body={"role": "viewer"}),
        await api("GET", "/key", token="dsp_not-a-real-token"),
        await api("GET", "/no/such/route"),
        await api("GET", "/healthz"),
    ):
        assert reply.headers.get("Cache-Control") == "no-store", reply
        assert reply.headers.get("X-Content-Type-Options") == "nosniff", reply
