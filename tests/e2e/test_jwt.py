"""JWT bodies end to end (SPEC §6, issue 11): webhooks under a 4me webhook policy receive {"jwt": <token>} that
PyJWT verifies with the policy's public key (or hs256 shared key), issuer and audience; a disabled policy holds
deliveries and enabling it releases them, nothing lost; the private key shows in no response and no log line; and
`dispatcher receiver --public-key` verifies such bodies.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from dispatcher import signing
from dispatcher.receiver import make_app
from tests.support.api import Org, Server, module_server
from tests.support.fourme import FourMe
from tests.support.receivers import Receiver
from tests.support.waits import poll

pytestmark = pytest.mark.db

ISSUER = "https://dispatcher.example.test"


@pytest.fixture(scope="module")
def server(pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One daemon for the module, naming ISSUER as its [api] public_url."""
    with module_server(pg_server, tmp_path_factory.mktemp("jwt-daemon"), {"api": {"public_url": ISSUER}}) as s:
        yield s


@pytest.fixture
def api(server: Server) -> FourMe:
    return FourMe(server)


async def valid_webhook(api: FourMe, org: Org, receiver: Receiver, policy: dict[str, Any]) -> dict[str, Any]:
    """A webhook under `policy`, once its test has made it valid."""
    webhook = await api.webhook(org, receiver.url, webhook_policy=policy["id"])

    async def valid() -> bool:
        return await api.state(org, webhook["id"]) == "valid"

    await poll(valid, "the webhook valid after its test")
    return webhook


def token(body: bytes) -> str:
    parsed = json.loads(body)
    assert list(parsed) == ["jwt"]
    value: str = parsed["jwt"]
    return value


@pytest.mark.parametrize(
    ("alg", "key"), [("rs256", "public_key_pem"), ("es256", "public_key_pem"), ("hs256", "shared_key")]
)
async def test_pyjwt_verifies_delivered_tokens(api: FourMe, receiver: Receiver, alg: str, key: str) -> None:
    """A delivered body is {"jwt": ...}: PyJWT verifies it with the key shown at create, the issuer ([api]
    public_url) and the audience; data is the 4me envelope (object_id a JSON integer), jti the delivery id (as
    X-4me-Delivery), sub the webhook id; exp is iat + jwt_claim_expires_in minutes."""
    org = await api.org()
    policy = await api.policy(org, jwt_alg=alg, jwt_audience="acme-receiver", jwt_claim_expires_in=3)
    webhook = await valid_webhook(api, org, receiver, policy)
    await api.emit(org, payload={"subject": "Printer on fire"}, object_id="42")
    await receiver.wait_count(2)
    arrival = receiver.arrivals[-1]
    claims = jwt.decode(
        token(arrival.body), policy[key], algorithms=[alg.upper()], issuer=ISSUER, audience="acme-receiver"
    )
    assert claims["data"]["object_id"] == 42 and claims["data"]["event"] == "request.create"
    assert claims["data"]["payload"] == {"subject": "Printer on fire"}
    assert claims["data"]["webhook_id"] == webhook["id"] and claims["sub"] == str(webhook["id"])
    assert claims["jti"] == arrival.headers["X-4me-Delivery"]
    assert claims["exp"] == claims["iat"] + 180 and claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - time.time()) < 60
    # The test that made it valid was signed the same way.
    test_claims = signing.verify_jwt(receiver.arrivals[0].body, policy[key], issuer=ISSUER, audience="acme-receiver")
    assert test_claims["data"]["object_id"] == 12345


async def test_a_short_expiry_makes_tokens_expire(api: FourMe, receiver: Receiver) -> None:
    """With jwt_claim_expires_in 1 (minute) a token no longer verifies once that minute and the two minutes of
    leeway are past; a tampered one never does."""
    org = await api.org()
    policy = await api.policy(org, jwt_alg="es256", jwt_claim_expires_in=1)
    await valid_webhook(api, org, receiver, policy)
    body = receiver.arrivals[0].body
    claims = signing.verify_jwt(body, policy["public_key_pem"], issuer=ISSUER)
    with pytest.raises(signing.TimestampOutOfToleranceError):
        signing.verify_jwt(body, policy["public_key_pem"], issuer=ISSUER, now=claims["iat"] + 60 + 121)
    assert claims["exp"] == claims["iat"] + 60
    head, payload, signature = token(body).split(".")
    with pytest.raises(signing.SignatureError):
        signing.verify_jwt(f"{head}.{payload}x.{signature}", policy["public_key_pem"], issuer=ISSUER)


@pytest.mark.timeout(40)
async def test_a_disabled_policy_holds_and_enabling_releases_nothing_lost(api: FourMe, receiver: Receiver) -> None:
    """Disabling a policy holds its webhooks' deliveries (nothing is sent, unsigned or otherwise); enabling it
    again releases them and every one arrives, signed."""
    org = await api.org()
    policy = await api.policy(org, jwt_alg="hs256")
    webhook = await valid_webhook(api, org, receiver, policy)
    path = f"/webhook_policies/{policy['id']}"
    assert (await api("PATCH", path, token=org.admin, json_body={"disabled": True})).body["disabled"] is True
    events = {await api.emit(org, payload={"n": n}) for n in range(5)}

    async def held() -> bool:
        return await api.deliveries(webhook["id"], "held") == 5

    await poll(held, "five deliveries held")
    assert len(receiver.arrivals) == 1  # the test only
    assert (await api("PATCH", path, token=org.admin, json_body={"disabled": False})).body["disabled"] is False
    await receiver.wait_count(6)
    arrived = receiver.arrivals[1:]
    assert {a.message_id for a in arrived} == events
    for arrival in arrived:
        signing.verify_jwt(arrival.body, policy["shared_key"], issuer=ISSUER)

    async def delivered() -> bool:
        return await api.deliveries(webhook["id"], "delivered") == 5

    await poll(delivered, "five deliveries recorded delivered")


async def test_the_private_key_shows_in_no_response_and_no_log_line(
    api: FourMe, server: Server, receiver: Receiver
) -> None:
    """After create, the private key is in no API answer and the daemon's log holds no line of it."""
    org = await api.org()
    policy = await api.policy(org, jwt_alg="rs256")
    await valid_webhook(api, org, receiver, policy)
    key = (await api.sql("SELECT signing_key FROM webhook_policy WHERE id = $1", policy["id"]))[0]["signing_key"]
    lines = [line for line in key.splitlines() if "-----" not in line]
    assert "PRIVATE" in key and lines
    texts = [
        (await api(method, path, token=org.admin, **kwargs)).text
        for method, path, kwargs in (
            ("GET", f"/webhook_policies/{policy['id']}", {}),
            ("GET", "/webhook_policies", {}),
            ("PATCH", f"/webhook_policies/{policy['id']}", {"json_body": {"name": "renamed"}}),
            ("PATCH", f"/webhook_policies/{policy['id']}", {"json_body": {"jwt_alg": "es256"}}),
            ("GET", "/webhooks", {}),
        )
    ]
    log = server.daemon.log_text()
    for line in lines:
        assert all(line not in text for text in texts)
        assert line not in log
    assert "PRIVATE KEY" not in log


# ---- dispatcher receiver --public-key -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


async def test_the_sample_receiver_verifies_jwt_bodies(api: FourMe, receiver: Receiver) -> None:
    """`dispatcher receiver --public-key FILE --issuer --audience` (make_app with jwt_key) accepts a delivered JWT
    body and prints its data; a tampered body, another audience or another key is answered 400."""
    org = await api.org()
    policy = await api.policy(org, jwt_alg="rs256", jwt_audience="aud-1")
    await valid_webhook(api, org, receiver, policy)
    arrival = receiver.arrivals[0]
    out = io.StringIO()
    good = make_app([], out=out, jwt_key=policy["public_key_pem"], issuer=ISSUER, audience="aud-1")
    wrong_audience = make_app([], out=io.StringIO(), jwt_key=policy["public_key_pem"], issuer=ISSUER, audience="x")
    other_key = make_app([], out=io.StringIO(), jwt_key=signing.generate_policy_key("rs256").shown, issuer=ISSUER)
    tampered = arrival.body.replace(b'"}', b'x"}')
    async with aiohttp.ClientSession() as session:
        for app, body, status in (
            (good, arrival.body, 200), (good, tampered, 400), (wrong_audience, arrival.body, 400),
            (other_key, arrival.body, 400),
        ):  # fmt: skip
            async with serving(app) as url, session.post(url, data=body, headers=arrival.headers) as response:
                assert response.status == status, await response.text()
    printed = json.loads(out.getvalue().splitlines()[0])
    assert printed["verified"] is True and printed["event"]["object_id"] == 12345
    await asyncio.sleep(0)
