"""JWT bodies of webhooks under a 4me webhook policy (dispatcher.formats.jwtbody, dispatcher.signing.verify_jwt),
and prepare() wrapping a format's envelope in them: pure, with a fixed clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from uuid import UUID

import jwt
import pytest

from dispatcher import signing
from dispatcher.delivery import Claimed, prepare
from dispatcher.envelope import EventData
from dispatcher.formats import FORMATS
from dispatcher.formats.jwtbody import JwtPolicy, PolicyError, jwt_body
from dispatcher.vocab import WebhookFormat

NOW = 1795339650
ISSUER = "https://dispatcher.example.com"
DELIVERY_ID = UUID("01a0f3c2-0000-7000-8000-000000000001")
EVENT_ID = "01a0f3c2-0000-7000-8000-0000000000e1"
ENVELOPE = b'{"webhook_id":7,"event":"request.create","object_id":42,"payload":{"k":1}}'
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEYS = {alg: signing.generate_policy_key(alg) for alg in ("rs256", "es256", "hs256")}


def policy(alg: str = "rs256", *, audience: str | None = "receiver", minutes: int | None = 5) -> JwtPolicy:
    return JwtPolicy(
        id=3, disabled=False, alg=alg, audience=audience, expires_in_minutes=minutes, key=KEYS[alg].signing_key
    )


def token_of(body: bytes) -> str:
    assert body.startswith(b'{"jwt":"') and body.endswith(b'"}')
    return body[8:-2].decode()


@pytest.mark.parametrize("alg", ["rs256", "es256", "hs256"])
def test_pyjwt_verifies_the_token_with_the_shown_key(alg: str) -> None:
    """The body is {"jwt": <token>}; PyJWT verifies it with the key shown at create (public PEM, or the hs256 shared
    key), the issuer and the audience; the claims are data (the envelope), jti, sub, iss, aud, iat, nbf, exp."""
    body = jwt_body(ENVELOPE, policy(alg), delivery_id=DELIVERY_ID, webhook_id=7, issuer=ISSUER, now=NOW)
    token = token_of(body)
    assert jwt.get_unverified_header(token) == {"alg": alg.upper(), "typ": "JWT"}
    claims = jwt.decode(
        token, KEYS[alg].shown, algorithms=[alg.upper()], issuer=ISSUER, audience="receiver",
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )  # fmt: skip
    assert claims == {
        "data": {"webhook_id": 7, "event": "request.create", "object_id": 42, "payload": {"k": 1}},
        "jti": str(DELIVERY_ID),
        "sub": "7",
        "iss": ISSUER,
        "aud": "receiver",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 300,
    }
    assert signing.verify_jwt(body, KEYS[alg].shown, issuer=ISSUER, audience="receiver", now=NOW + 10) == claims


def test_without_expiry_or_audience_the_claims_are_left_out() -> None:
    """exp only when jwt_claim_expires_in is set; aud only when the policy has an audience."""
    body = jwt_body(
        ENVELOPE, policy(audience=None, minutes=None), delivery_id=DELIVERY_ID, webhook_id=7, issuer=ISSUER, now=NOW
    )
    claims = signing.verify_jwt(body, KEYS["rs256"].shown, issuer=ISSUER, now=NOW + 10**6)
    assert "exp" not in claims and "aud" not in claims


def test_a_tampered_token_is_rejected() -> None:
    """Changing the payload part of the token breaks its signature."""
    token = token_of(jwt_body(ENVELOPE, policy(), delivery_id=DELIVERY_ID, webhook_id=7, issuer=ISSUER, now=NOW))
    head, payload, sig = token.split(".")
    forged = jwt.utils.base64url_encode(jwt.utils.base64url_decode(payload).replace(b'"sub":"7"', b'"sub":"8"'))
    with pytest.raises(signing.NoMatchingSignatureError):
        signing.verify_jwt(f"{head}.{forged.decode()}.{sig}", KEYS["rs256"].shown, issuer=ISSUER, now=NOW)


def test_an_expired_token_a_wrong_issuer_audience_or_key_are_rejected() -> None:
    """exp (with two minutes of leeway), iss, aud and the key are all checked."""
    body = jwt_body(ENVELOPE, policy(minutes=1), delivery_id=DELIVERY_ID, webhook_id=7, issuer=ISSUER, now=NOW)
    public = KEYS["rs256"].shown
    signing.verify_jwt(body, public, issuer=ISSUER, audience="receiver", now=NOW + 60 + 119)
    with pytest.raises(signing.TimestampOutOfToleranceError):
        signing.verify_jwt(body, public, issuer=ISSUER, audience="receiver", now=NOW + 60 + 121)
    with pytest.raises(signing.SignatureError):
        signing.verify_jwt(body, public, issuer="https://other", audience="receiver", now=NOW)
    with pytest.raises(signing.SignatureError):
        signing.verify_jwt(body, public, issuer=ISSUER, audience="someone-else", now=NOW)
    with pytest.raises(signing.NoMatchingSignatureError):
        signing.verify_jwt(body, signing.generate_policy_key("rs256").shown, issuer=ISSUER, now=NOW)
    with pytest.raises(signing.SignatureError):  # the algorithm follows the key: an hs256 key never verifies rs256
        signing.verify_jwt(body, KEYS["hs256"].shown, issuer=ISSUER, now=NOW)


def test_a_policy_that_cannot_sign_raises_policy_error_without_its_key() -> None:
    """Disabled, no issuer, or a key that does not load: PolicyError, whose text and the policy's repr never hold
    the key."""
    for bad, issuer in (
        (replace(policy(), disabled=True), ISSUER),
        (policy(), ""),
        (replace(policy(), key="-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"), ISSUER),
    ):
        with pytest.raises(PolicyError) as caught:
            jwt_body(ENVELOPE, bad, delivery_id=DELIVERY_ID, webhook_id=7, issuer=issuer, now=NOW)
        assert "PRIVATE" not in str(caught.value) and "PRIVATE" not in repr(bad)


def claimed(fmt: WebhookFormat, with_policy: JwtPolicy | None) -> Claimed:
    moment = datetime.fromtimestamp(NOW, UTC)
    return Claimed(
        id=DELIVERY_ID, event_id=UUID(EVENT_ID), webhook_id=7, kind="original", attempt=1, lease_token=1,
        retry_delay=5.0, next_attempt_at=moment,
        event=EventData(id=EVENT_ID, organisation="acme", type="request.create", object_id="42", payload='{"k":1}',
                        actor=None, created_at=moment),
        url="https://hooks.example.test/in", format=fmt, webhook_name="hook", secrets=(SECRET,),
        headers=(("Authorization", "Bearer r"),), webhook_state="valid", policy=with_policy,
    )  # fmt: skip


def test_prepare_wraps_the_envelope_and_signs_what_is_sent() -> None:
    """Under a policy prepare() sends {"jwt": ...} around the format's envelope (object_id a JSON integer), the
    Standard Webhooks signature covers those bytes, and X-4me-Delivery and static headers are kept."""
    delivery = claimed(WebhookFormat.FOURME, policy())
    envelope = FORMATS[WebhookFormat.FOURME].body(delivery.event, 7, "hook")
    request = prepare(delivery, envelope, NOW, 15.0, issuer=ISSUER)
    claims = signing.verify_jwt(request.body, KEYS["rs256"].shown, issuer=ISSUER, audience="receiver", now=NOW)
    assert claims["data"]["object_id"] == 42 and claims["data"]["webhook_id"] == 7
    signing.verify_standard([SECRET], request.headers, request.body, now=NOW)
    assert request.headers["X-4me-Delivery"] == str(DELIVERY_ID) == claims["jti"]
    assert request.headers["Authorization"] == "Bearer r"
    again = prepare(delivery, envelope, NOW + 5, 15.0, issuer=ISSUER)
    assert again.body != request.body  # signed anew on every attempt
    plain = prepare(claimed(WebhookFormat.FOURME, None), envelope, NOW, 15.0, issuer=ISSUER)
    assert plain.body == envelope


def test_prepare_under_a_disabled_policy_raises_so_nothing_unsigned_is_sent() -> None:
    """A disabled policy's delivery is never sent unsigned: prepare() raises (the deliverer records a failed
    attempt, and maintenance holds such strays)."""
    delivery = claimed(WebhookFormat.FOURME, replace(policy(), disabled=True))
    with pytest.raises(PolicyError):
        prepare(delivery, ENVELOPE, NOW, 15.0, issuer=ISSUER)
