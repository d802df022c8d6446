"""The 4me dialect (SPEC §8, issue 11): /webhooks and /webhook_policies with paging, validation (422 naming the
field), roles and organisations, and the seed's flow (create disabled, test, enable, receive), against `dispatcher
run` as a subprocess and real receivers on 127.0.0.1.

One daemon serves the whole module; every test works in organisations of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.api import Server, assert_native_error, module_server
from tests.support.fourme import FourMe
from tests.support.receivers import Receiver
from tests.support.waits import poll

pytestmark = pytest.mark.db

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
HOOK = "https://hooks.example.com/4me"


@pytest.fixture(scope="module")
def server(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daemon for the module."""
    with module_server(pg_server, tmp_path_factory.mktemp("fourme-daemon"), {}) as s:
        yield s


@pytest.fixture
def api(server: Server) -> FourMe:
    return FourMe(server)


# ---- every route: no token, wrong role, another organisation ---------------------------------------------

ROUTES = [
    ("GET", "/webhooks", None),
    ("GET", "/webhooks/enabled", None),
    ("GET", "/webhooks/disabled", None),
    ("POST", "/webhooks", {"event": "request.create", "uri": HOOK}),
    ("GET", "/webhooks/{id}", None),
    ("PATCH", "/webhooks/{id}", {"name": "x"}),
    ("DELETE", "/webhooks/{id}", None),
    ("POST", "/webhooks/{id}/test", None),
    ("GET", "/webhook_policies", None),
    ("GET", "/webhook_policies/enabled", None),
    ("GET", "/webhook_policies/disabled", None),
    ("POST", "/webhook_policies", {"name": "p"}),
    ("GET", "/webhook_policies/{id}", None),
    ("PATCH", "/webhook_policies/{id}", {"name": "q"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_every_route_needs_an_admin_of_the_organisation(
    api: FourMe, method: str, path: str, body: dict[str, Any] | None
) -> None:
    """Each 4me route answers 401 without a token and 403 to a viewer or producer (only administrators use 4me's
    webhook API); a record of another organisation is 404 to its admin, and the record is left as it was."""
    org, other = await api.org(), await api.org()
    webhook = await api.webhook(org, HOOK, disabled=True)
    policy = await api.policy(org, jwt_alg="hs256")
    target = path.replace("{id}", str(policy["id"] if "policies" in path else webhook["id"]))
    kwargs: dict[str, Any] = {} if body is None else {"json_body": body}
    assert_native_error(await api(method, target, **kwargs), 401)
    for role in ("viewer", "producer"):
        assert_native_error(await api(method, target, token=org.tokens[role][1], **kwargs), 403)
    if "{id}" in path:
        assert_native_error(await api(method, target, token=other.admin, **kwargs), 404)
        assert (await api("GET", f"/webhooks/{webhook['id']}", token=org.admin)).body["name"] == "request.create"


# ---- webhooks: success ---------------------------------------------------------------------------------


async def test_create_returns_every_field_and_the_secret_once(api: FourMe) -> None:
    """POST /webhooks answers 4me's fields (name defaulting to the event, event, uri, disabled, ...) plus state,
    format (4me by default), masked header values and the secret; GET shows the same without the secret."""
    org = await api.org()
    created = await api.webhook(
        org, "https://user:pw@hooks.example.com/x", description="Update requests", sourceID="abc", source="crm",
        mail_exceptions_to="john.doe@example.com, jane.doe@example.com", headers={"Authorization": "Bearer s3cret"},
        rate_limit=5,
    )  # fmt: skip
    assert created["name"] == "request.create" and created["event"] == "request.create"
    assert created["events"] == ["request.create"] and created["format"] == "4me"
    assert created["uri"] == "https://***@hooks.example.com/x"
    assert created["disabled"] is False and created["state"] == "new"
    assert created["mail_exceptions_to"] == "john.doe@example.com,jane.doe@example.com"
    assert created["sourceID"] == "abc" and created["source"] == "crm" and created["rate_limit"] == 5
    assert created["headers"] == {"Authorization": "***"}
    assert created["secret"].startswith("whsec_")
    assert RFC3339_MS.match(created["created_at"]) and RFC3339_MS.match(created["updated_at"])
    got = (await api("GET", f"/webhooks/{created['id']}", token=org.admin)).body
    assert "secret" not in got
    assert {k: v for k, v in got.items() if k not in ("state", "updated_at")} == {
        k: v for k, v in created.items() if k not in ("secret", "state", "updated_at")
    }


async def test_events_take_patterns_and_event_is_null_then(api: FourMe) -> None:
    """`events` takes catalogue types and patterns; `event` shows the single exact event, else null."""
    org = await api.org()
    created = await api.webhook(org, HOOK, event=None, events=["request.*", "problem.update"])
    assert created["event"] is None and created["events"] == ["request.*", "problem.update"]


async def test_patch_changes_only_what_is_given(api: FourMe) -> None:
    """PATCH /webhooks/{id} changes the fields given and leaves the others; a new uri makes the webhook new."""
    org = await api.org()
    created = await api.webhook(org, HOOK, description="before", disabled=True)
    reply = await api(
        "PATCH", f"/webhooks/{created['id']}", token=org.admin,
        json_body={"name": "renamed", "event": "problem.update", "uri": "https://hooks.example.com/other"},
    )  # fmt: skip
    assert reply.status == 200, reply
    assert reply.body["name"] == "renamed" and reply.body["event"] == "problem.update"
    assert reply.body["uri"] == "https://hooks.example.com/other" and reply.body["description"] == "before"
    assert reply.body["state"] == "deactivated"  # a url change keeps a deactivated webhook deactivated


async def test_disabled_true_deactivates_and_false_reenables(api: FourMe, receiver: Receiver) -> None:
    """PATCH disabled: true deactivates; false re-enables (state new and a test); false on an enabled webhook
    changes nothing."""
    org = await api.org()
    created = await api.webhook(org, receiver.url)
    await poll(lambda: _is_valid(api, org, created["id"]), "the webhook valid after its test")
    path = f"/webhooks/{created['id']}"
    same = await api("PATCH", path, token=org.admin, json_body={"disabled": False})
    assert same.body["state"] == "valid" and same.body["disabled"] is False
    off = await api("PATCH", path, token=org.admin, json_body={"disabled": True})
    assert off.body["state"] == "deactivated" and off.body["disabled"] is True
    on = await api("PATCH", path, token=org.admin, json_body={"disabled": "false"})
    assert on.body["state"] == "new" and on.body["disabled"] is False


async def test_enabled_and_disabled_lists(api: FourMe, receiver: Receiver) -> None:
    """/webhooks/enabled and /webhooks/disabled split the organisation's webhooks by 4me's `disabled` (invalid or
    deactivated)."""
    org = await api.org()
    on = await api.webhook(org, receiver.url)
    await poll(lambda: _is_valid(api, org, on["id"]), "the webhook valid after its test")
    off = await api.webhook(org, HOOK, disabled=True)
    enabled = await api("GET", "/webhooks/enabled", token=org.admin)
    disabled = await api("GET", "/webhooks/disabled", token=org.admin)
    everything = await api("GET", "/webhooks", token=org.admin)
    assert [w["id"] for w in enabled.body] == [on["id"]]
    assert [w["id"] for w in disabled.body] == [off["id"]]
    assert [w["id"] for w in everything.body] == [off["id"], on["id"]]


async def test_delete_answers_204_and_the_webhook_is_gone(api: FourMe) -> None:
    """DELETE /webhooks/{id} answers 204 with no body; the webhook is then 404."""
    org = await api.org()
    created = await api.webhook(org, HOOK)
    reply = await api("DELETE", f"/webhooks/{created['id']}", token=org.admin)
    assert reply.status == 204 and reply.text == ""
    assert_native_error(await api("GET", f"/webhooks/{created['id']}", token=org.admin), 404)


# ---- paging ----------------------------------------------------------------------------------------------


def _links(header: str) -> dict[str, dict[str, str]]:
    found = {}
    for target, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', header):
        query = dict(part.split("=", 1) for part in target.split("?", 1)[1].split("&"))
        found[rel] = query
    return found


async def test_paging_headers_agree_with_the_data(api: FourMe) -> None:
    """per_page and page page through the webhooks newest first; Link (first, prev, next, last) and
    X-Pagination-* agree with the data on the first, a middle and the last page, and past the end."""
    org = await api.org()
    ids = [(await api.webhook(org, HOOK, disabled=True))["id"] for _ in range(5)][::-1]
    seen = []
    for page, rels in (
        (1, {"first", "next", "last"}),
        (2, {"first", "prev", "next", "last"}),
        (3, {"first", "prev", "last"}),
    ):
        reply = await api("GET", "/webhooks", token=org.admin, params={"per_page": "2", "page": str(page)})
        assert reply.status == 200, reply
        seen += [w["id"] for w in reply.body]
        assert reply.headers["X-Pagination-Per-Page"] == "2"
        assert reply.headers["X-Pagination-Current-Page"] == str(page)
        assert reply.headers["X-Pagination-Total-Pages"] == "3"
        assert reply.headers["X-Pagination-Total-Entries"] == "5"
        links = _links(reply.headers["Link"])
        assert set(links) == rels
        assert links["first"]["page"] == "1" and links["last"]["page"] == "3"
        assert all(q["per_page"] == "2" for q in links.values())
        if "next" in links:
            assert links["next"]["page"] == str(page + 1)
        if "prev" in links:
            assert links["prev"]["page"] == str(page - 1)
    assert seen == ids
    beyond = await api("GET", "/webhooks", token=org.admin, params={"per_page": "2", "page": "4"})
    assert beyond.status == 200 and beyond.body == []
    default = await api("GET", "/webhooks", token=org.admin)
    assert default.headers["X-Pagination-Per-Page"] == "25" and len(default.body) == 5


@pytest.mark.parametrize("params", [{"per_page": "101"}, {"per_page": "0"}, {"page": "0"}, {"page": "x"}])
async def test_paging_values_out_of_range_are_422(api: FourMe, params: dict[str, str]) -> None:
    """per_page is 1 to 100 and page at least 1: anything else is a 422 naming the parameter."""
    org = await api.org()
    reply = await api("GET", "/webhooks", token=org.admin, params=params)
    assert_native_error(reply, 422, next(iter(params)))


# ---- webhooks: validation -----------------------------------------------------------------------------------

INVALID = [
    ({"uri": HOOK}, "event"),
    ({"event": "no.such-event", "uri": HOOK}, "event"),
    ({"event": "request.*", "uri": HOOK}, "event"),
    ({"events": ["request.create", "nope"], "uri": HOOK}, "events"),
    ({"event": "request.create", "events": ["request.create"], "uri": HOOK}, "events"),
    ({"event": "request.create"}, "uri"),
    ({"event": "request.create", "uri": "ftp://hooks.example.com/"}, "uri"),
    ({"event": "request.create", "uri": "http://169.254.169.254/latest"}, "uri"),
    ({"event": "request.create", "uri": HOOK, "sourceID": "x" * 129}, "sourceID"),
    ({"event": "request.create", "uri": HOOK, "source": "x" * 31}, "source"),
    ({"event": "request.create", "uri": HOOK, "description": "x" * (64 * 1024 + 1)}, "description"),
    ({"event": "request.create", "uri": HOOK, "mail_exceptions_to": "a@example.com,not-an-address"},
     "mail_exceptions_to"),
    ({"event": "request.create", "uri": HOOK, "webhook_policy": 2147483000}, "webhook_policy"),
    ({"event": "request.create", "uri": HOOK, "rate_limit": 0}, "rate_limit"),
    ({"event": "request.create", "uri": HOOK, "headers": {"Bad Name": "x"}}, "headers"),
    ({"event": "request.create", "uri": HOOK, "headers": {"X-Ok": "a\r\nInjected: 1"}}, "headers"),
    ({"event": "request.create", "uri": HOOK, "format": "xml"}, "format"),
    ({"event": "request.create", "uri": HOOK, "colour": "blue"}, "colour"),
    ({"event": "request.create", "uri": HOOK, "source_id": "snake"}, "source_id"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "field"), INVALID)
async def test_create_refuses_a_bad_value_with_422_naming_the_field(
    api: FourMe, body: dict[str, Any], field: str
) -> None:
    """Each bad value (or unknown field) is a 422 whose error names the field as 4me calls it; nothing is made."""
    org = await api.org()
    reply = await api("POST", "/webhooks", token=org.admin, json_body=body)
    assert_native_error(reply, 422, field)
    assert (await api("GET", "/webhooks", token=org.admin)).body == []


REFUSED_HEADERS = [
    "Host", "content-length", "TRANSFER-ENCODING", "Content-Type", "user-agent", "Webhook-Id", "webhook-signature",
    "WEBHOOK-TIMESTAMP", "ricloud-signature", "X-4ME-DELIVERY",
]  # fmt: skip


@pytest.mark.parametrize("name", REFUSED_HEADERS)
async def test_headers_dispatcher_sets_are_refused_whatever_their_case(api: FourMe, name: str) -> None:
    """A static header dispatcher sets itself is refused at create and at update, in any case."""
    org = await api.org()
    body = {"event": "request.create", "uri": HOOK, "headers": {name: "x"}}
    assert_native_error(await api("POST", "/webhooks", token=org.admin, json_body=body), 422, "headers")
    created = await api.webhook(org, HOOK, disabled=True)
    reply = await api("PATCH", f"/webhooks/{created['id']}", token=org.admin, json_body={"headers": {name: "x"}})
    assert_native_error(reply, 422, "headers")


async def test_patch_refuses_bad_values_and_changes_nothing(api: FourMe) -> None:
    """A PATCH with one bad value among good ones is a 422 naming it, and the webhook is left as it was."""
    org = await api.org()
    created = await api.webhook(org, HOOK, disabled=True)
    path = f"/webhooks/{created['id']}"
    for body, field in (
        ({"name": "new", "uri": "gopher://x"}, "uri"),
        ({"name": "new", "event": "nope"}, "event"),
        ({"name": "new", "uri": None}, "uri"),
        ({"name": "new", "id": 3}, "id"),
    ):
        assert_native_error(await api("PATCH", path, token=org.admin, json_body=body), 422, field)
    assert (await api("GET", path, token=org.admin)).body["name"] == "request.create"


async def test_a_policy_of_another_organisation_is_refused(api: FourMe) -> None:
    """webhook_policy must name a policy of the caller's organisation."""
    org, other = await api.org(), await api.org()
    policy = await api.policy(other, jwt_alg="hs256")
    body = {"event": "request.create", "uri": HOOK, "webhook_policy": policy["id"]}
    assert_native_error(await api("POST", "/webhooks", token=org.admin, json_body=body), 422, "webhook_policy")


# ---- the seed's flow ---------------------------------------------------------------------------------------


@pytest.mark.timeout(40)
async def test_the_seed_flow_create_disabled_test_enable_receive(api: FourMe, receiver: Receiver) -> None:
    """4me's advice: create the webhook disabled, test until happy (204; the test carries object_id 12345 and
    changes no state), enable it (state new, tested, valid), then real events arrive with the static headers."""
    org = await api.org()
    created = await api.webhook(org, receiver.url, disabled=True, headers={"Authorization": "Bearer receiver-token"})
    assert created["state"] == "deactivated" and created["disabled"] is True
    reply = await api("POST", f"/webhooks/{created['id']}/test", token=org.admin)
    assert reply.status == 204 and reply.text == ""
    await receiver.wait_count(1)
    test = receiver.arrivals[0]
    assert test.json["object_id"] == 12345 and test.json["event"] == "request.create"
    assert test.json["webhook_id"] == created["id"] and test.json["payload"] == {}
    assert test.headers["Authorization"] == "Bearer receiver-token"
    assert test.headers["X-4me-Delivery"]
    assert await api.state(org, created["id"]) == "deactivated"

    enabled = await api("PATCH", f"/webhooks/{created['id']}", token=org.admin, json_body={"disabled": False})
    assert enabled.body["state"] == "new"
    await poll(lambda: _is_valid(api, org, created["id"]), "the webhook valid after its test")
    await api.emit(org, payload={"subject": "Printer on fire"}, object_id="42", actor={"id": 591, "name": "Ann"})
    await receiver.wait_for(lambda: any(a.json.get("object_id") == 42 for a in receiver.arrivals))
    event = next(a for a in receiver.arrivals if a.json.get("object_id") == 42)
    assert event.json["payload"] == {"subject": "Printer on fire"}
    assert event.json["person_id"] == 591 and event.json["person_name"] == "Ann"
    assert event.headers["Authorization"] == "Bearer receiver-token"


async def _is_valid(api: FourMe, org: Any, webhook_id: int) -> bool:
    return await api.state(org, webhook_id) == "valid"


# ---- policies ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "shown"), [("rs256", "public_key_pem"), ("es256", "public_key_pem"), ("hs256", "shared_key")]
)
async def test_policy_key_is_shown_only_in_the_create_response(api: FourMe, alg: str, shown: str) -> None:
    """POST /webhook_policies answers the public key PEM (or hs256's shared key) once; no read shows it again, nor
    the private key."""
    org = await api.org()
    policy = await api.policy(org, name="provider", jwt_alg=alg, jwt_audience="aud", jwt_claim_expires_in=12)
    assert policy["jwt_alg"] == alg and policy["jwt_claim_expires_in"] == 12 and policy["disabled"] is False
    assert policy[shown]
    if shown == "public_key_pem":
        assert policy[shown].startswith("-----BEGIN PUBLIC KEY-----")
    key = (await api.sql("SELECT signing_key FROM webhook_policy WHERE id = $1", policy["id"]))[0]["signing_key"]
    for path in (f"/webhook_policies/{policy['id']}", "/webhook_policies", "/webhook_policies/enabled"):
        reply = await api("GET", path, token=org.admin)
        assert reply.status == 200, reply
        assert "public_key_pem" not in reply.text and "shared_key" not in reply.text
        assert key.splitlines()[1 if "BEGIN" in key else 0] not in reply.text


async def test_policy_default_alg_and_update(api: FourMe) -> None:
    """A policy is rs256 by default; PATCH changes name, audience, expiry and disabled, and the enabled/disabled
    lists follow; jwt_alg cannot change (a 422 naming it)."""
    org = await api.org()
    policy = await api.policy(org)
    assert policy["jwt_alg"] == "rs256" and policy["jwt_audience"] is None
    path = f"/webhook_policies/{policy['id']}"
    reply = await api("PATCH", path, token=org.admin, json_body={"name": "n", "jwt_audience": "a", "disabled": True})
    assert reply.status == 200 and reply.body["name"] == "n" and reply.body["disabled"] is True
    assert [p["id"] for p in (await api("GET", "/webhook_policies/disabled", token=org.admin)).body] == [policy["id"]]
    assert (await api("GET", "/webhook_policies/enabled", token=org.admin)).body == []
    assert_native_error(await api("PATCH", path, token=org.admin, json_body={"jwt_alg": "hs256"}), 422, "jwt_alg")


@pytest.mark.parametrize(
    ("body", "field"),
    [({"jwt_alg": "none"}, "jwt_alg"), ({"jwt_claim_expires_in": 0}, "jwt_claim_expires_in"),
     ({"name": "x" * 256}, "name"), ({"signing_key": "mine"}, "signing_key")],
)  # fmt: skip
async def test_policy_create_refuses_bad_values(api: FourMe, body: dict[str, Any], field: str) -> None:
    """A bad policy value (or a field that is not one) is a 422 naming it."""
    org = await api.org()
    assert_native_error(await api("POST", "/webhook_policies", token=org.admin, json_body=body), 422, field)


# ---- ownership verification ----------------------------------------------------------------------------------


def _callback_path(arrival: Any) -> str:
    """The path and query of the callback URL in a webhook.verify request (the host is [api] public_url's)."""
    callback: str = arrival.json["payload"]["callback"]
    return "/" + callback.split("://", 1)[1].split("/", 1)[1]


@pytest.mark.timeout(40)
async def test_verification_keeps_the_webhook_new_until_the_callback_is_fetched(
    api: FourMe, receiver: Receiver
) -> None:
    """With verify set, a new webhook first receives webhook.verify with a one-time callback (object_id its id); it
    stays new, its deliveries are held and tests are refused until the callback is fetched; a wrong code is
    refused; the right one verifies it (200), is refused when reused, and the webhook is then tested (valid) and
    the held event arrives."""
    org = await api.org()
    created = await api.webhook(org, receiver.url, verify=True)
    assert created["verify"] is True and created["verification_pending"] is True and created["state"] == "new"
    await receiver.wait_count(1)
    verify = receiver.arrivals[0]
    assert verify.json["event"] == "webhook.verify" and verify.json["object_id"] == created["id"]
    path = _callback_path(verify)
    assert path.startswith(f"/webhooks/{created['id']}/verify?code=")

    await api.emit(org, payload={"n": 1})

    async def held() -> bool:
        return await api.deliveries(created["id"], "held") == 1

    await poll(held, "the event's delivery held while unverified")
    assert await api.state(org, created["id"]) == "new" and len(receiver.arrivals) == 1
    assert_native_error(await api("POST", f"/webhooks/{created['id']}/test", token=org.admin), 422, "verify")
    wrong = path.split("code=")[0] + "code=not-the-code"
    assert_native_error(await api("GET", wrong), 404)
    assert_native_error(await api("GET", path.replace(f"/{created['id']}/", f"/{created['id'] + 1000}/")), 404)

    reply = await api("GET", path)
    assert reply.status == 200 and reply.body == {"verified": True, "webhook_id": created["id"]}
    assert_native_error(await api("GET", path), 404)  # used up
    await poll(lambda: _is_valid(api, org, created["id"]), "the webhook tested and valid once verified")
    await receiver.wait_for(lambda: any(a.json.get("payload") == {"n": 1} for a in receiver.arrivals))
    got = (await api("GET", f"/webhooks/{created['id']}", token=org.admin)).body
    assert got["verification_pending"] is False


async def test_a_repointed_webhook_is_verified_again_and_off_by_default(api: FourMe, receiver: Receiver) -> None:
    """Verification is off by default (a plain webhook is tested at once); with verify set, a new uri sends a new
    webhook.verify to the new address and the webhook waits again."""
    org = await api.org()
    plain = await api.webhook(org, receiver.url + "/plain")
    assert plain["verify"] is False and plain["verification_pending"] is False
    created = await api.webhook(org, receiver.url + "/a", verify=True, disabled=True)
    assert created["verification_pending"] is False  # nothing is sent to a disabled webhook
    reply = await api("PATCH", f"/webhooks/{created['id']}", token=org.admin, json_body={"disabled": False})
    assert reply.body["verification_pending"] is True and reply.body["state"] == "new"
    # The first webhook.verify has arrived at /a before the webhook is re-pointed (else it may never be sent).
    await receiver.wait_for(lambda: any(a.path == "/hook/a" for a in receiver.arrivals))
    reply = await api("PATCH", f"/webhooks/{created['id']}", token=org.admin, json_body={"uri": receiver.url + "/b"})
    assert reply.body["verification_pending"] is True
    await receiver.wait_for(lambda: any(a.path == "/hook/b" for a in receiver.arrivals))
    to_b = next(a for a in receiver.arrivals if a.path == "/hook/b")
    assert to_b.json["event"] == "webhook.verify"
    first = next(a for a in receiver.arrivals if a.path == "/hook/a")
    assert_native_error(await api("GET", _callback_path(first)), 404)  # the older code no longer works
    assert (await api("GET", _callback_path(to_b))).status == 200
