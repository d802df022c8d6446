"""Unit tests for dispatcher.signing: golden vectors, interop with the receivers' libraries, rejections.

The interop tests use the receivers' own code unchanged: the ``standardwebhooks`` library and
ricloud-py 3.2.0's ``ricloud.signing.Signature``. ricloud-py pins ``click<8``, so it is installed
without its dependencies (``pip install --no-deps ricloud==3.2.0``, plus ``requests``, which its
package ``__init__`` imports); ``ricloud.signing`` itself needs neither click nor flask.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import ricloud.signing  # type: ignore[import-untyped]
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dispatcher.signing import (
    MalformedHeaderError,
    MissingHeaderError,
    NoMatchingSignatureError,
    SignatureError,
    TimestampOutOfToleranceError,
    generate_secret,
    ricloud_signature,
    standard_headers,
    standard_signature,
    verify_ricloud,
    verify_standard,
)

# The Standard Webhooks test vector, from standard-webhooks/standard-webhooks,
# libraries/python/tests/test_webhooks.py::test_sign_function (the same values appear in Svix's
# "verifying payloads manually" documentation).
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

# A Ricloud-Signature produced by ricloud-py 3.2.0 itself:
# Signature.sign(RICLOUD_BODY, VECTOR_SECRET).to_header() with its clock at VECTOR_TIMESTAMP.
RICLOUD_BODY = b'{"id": "evt_1", "resource": "event"}'
RICLOUD_VECTOR = "t=1614265330,s=d4S/MEvkEx+dan3vvDEUzpA7k+5syhooWVeExDEQbNc="

OTHER_SECRET = "whsec_" + base64.b64encode(b"\x01" * 32).decode()
NOW = 1_700_000_000
BODY = b'{"id": "evt_1", "type": "invoice.paid", "data": {"amount": 12}}'
MSG_ID = "evt_1"


@pytest.fixture
def ricloud_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Return a setter for the clock ricloud-py's Signature reads (``generate_timestamp``)."""

    def set_now(now: int) -> None:
        monkeypatch.setattr(ricloud.signing, "generate_timestamp", lambda: now)

    return set_now


# -- Standard Webhooks: the published vector ------------------------------------------------------


def test_standard_signature_matches_the_published_vector() -> None:
    """Signing reproduces the Standard Webhooks test vector exactly.

    Source: standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
    test_sign_function (secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, msg_p5jXN8AQM9LWM0D4loKWxJek,
    1614265330, '{"test": 2432232314}' -> v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=).
    """
    signature = standard_signature([VECTOR_SECRET], VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert signature == VECTOR_SIGNATURE


def test_standard_signature_accepts_a_secret_without_the_prefix() -> None:
    """A secret given without ``whsec_`` yields the same key, hence the same vector signature."""
    bare = VECTOR_SECRET.removeprefix("whsec_")
    assert standard_signature([bare], VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_verify_standard_accepts_the_published_vector() -> None:
    """The verifier accepts the Standard Webhooks test vector's headers at its own timestamp."""
    headers = {
        "webhook-id": VECTOR_MSG_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    verify_standard([VECTOR_SECRET], headers, VECTOR_BODY, now=VECTOR_TIMESTAMP)


# -- Standard Webhooks: shape and rotation --------------------------------------------------------


def test_standard_headers_hold_id_timestamp_and_signature() -> None:
    """standard_headers returns exactly the three headers, the timestamp as decimal text."""
    headers = standard_headers([VECTOR_SECRET], VECTOR_MSG_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert headers == {
        "webhook-id": VECTOR_MSG_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_standard_signature_has_one_entry_per_secret_in_order() -> None:
    """During a rotation the header holds one space-separated entry per secret, in the given order."""
    both = standard_signature([VECTOR_SECRET, OTHER_SECRET], MSG_ID, NOW, BODY)
    assert both.split(" ") == [
        standard_signature([VECTOR_SECRET], MSG_ID, NOW, BODY),
        standard_signature([OTHER_SECRET], MSG_ID, NOW, BODY),
    ]


def test_verify_standard_accepts_any_secret_and_any_header_case() -> None:
    """Verification passes when any entry matches any of the secrets, header names in any case."""
    headers = standard_headers([OTHER_SECRET], MSG_ID, NOW, BODY)
    shouted = {name.upper(): value for name, value in headers.items()}
    verify_standard([VECTOR_SECRET, OTHER_SECRET], shouted, BODY, now=NOW)


def test_verify_standard_skips_other_versions_and_garbage_entries() -> None:
    """Entries that are not ``v1,<base64>`` are ignored, not fatal, when a later v1 entry matches."""
    good = standard_signature([VECTOR_SECRET], MSG_ID, NOW, BODY)
    headers = standard_headers([VECTOR_SECRET], MSG_ID, NOW, BODY)
    headers["webhook-signature"] = f"v2,{good[3:]} nonsense v1,!!notbase64!! {good}"
    verify_standard([VECTOR_SECRET], headers, BODY, now=NOW)


def test_verify_standard_refuses_a_matching_digest_under_another_version() -> None:
    """A correct digest labelled ``v1a`` (not ``v1``) does not count as a match."""
    good = standard_signature([VECTOR_SECRET], MSG_ID, NOW, BODY)
    headers = standard_headers([VECTOR_SECRET], MSG_ID, NOW, BODY)
    headers["webhook-signature"] = "v1a," + good.removeprefix("v1,")
    with pytest.raises(NoMatchingSignatureError, match="no signature matches"):
        verify_standard([VECTOR_SECRET], headers, BODY, now=NOW)


# -- Standard Webhooks: interop with the standardwebhooks library ---------------------------------


def test_standardwebhooks_library_verifies_our_headers() -> None:
    """The standardwebhooks library, unchanged, accepts a request we signed (it reads the real clock)."""
    now = int(time.time())
    headers = standard_headers([VECTOR_SECRET], MSG_ID, now, BODY)
    assert Webhook(VECTOR_SECRET).verify(BODY, headers) == {
        "id": "evt_1",
        "type": "invoice.paid",
        "data": {"amount": 12},
    }


def test_standardwebhooks_library_verifies_the_second_secret_of_a_rotation() -> None:
    """Signed with two secrets, the request verifies for a receiver that knows only the second one,
    and fails for one that knows neither."""
    now = int(time.time())
    headers = standard_headers([VECTOR_SECRET, OTHER_SECRET], MSG_ID, now, BODY)
    Webhook(OTHER_SECRET).verify(BODY, headers, json_parse=False)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers, json_parse=False)


def test_verify_standard_accepts_a_signature_made_by_the_standardwebhooks_library() -> None:
    """A signature the standardwebhooks library makes verifies with our verify_standard."""
    signed_at = datetime.fromtimestamp(NOW, tz=UTC)
    signature = Webhook(VECTOR_SECRET).sign(msg_id=MSG_ID, timestamp=signed_at, data=BODY.decode())
    headers = {"webhook-id": MSG_ID, "webhook-timestamp": str(NOW), "webhook-signature": signature}
    verify_standard([VECTOR_SECRET], headers, BODY, now=NOW)


# -- Ricloud-Signature: vector and interop with ricloud-py 3.2.0 ----------------------------------


def test_ricloud_signature_matches_ricloud_py_output() -> None:
    """ricloud_signature reproduces a header ricloud-py 3.2.0 produced: base64 digest, key = whole secret."""
    assert ricloud_signature(VECTOR_SECRET, VECTOR_TIMESTAMP, RICLOUD_BODY) == RICLOUD_VECTOR


def test_ricloud_py_sign_equals_ricloud_signature(ricloud_clock: Callable[[int], None]) -> None:
    """ricloud-py's Signature.sign(...).to_header() and ricloud_signature give the same header."""
    ricloud_clock(NOW)
    header = ricloud.signing.Signature.sign(BODY, VECTOR_SECRET).to_header()
    assert header == ricloud_signature(VECTOR_SECRET, NOW, BODY)


def test_verify_ricloud_accepts_a_header_made_by_ricloud_py(ricloud_clock: Callable[[int], None]) -> None:
    """A header from ricloud-py's Signature.sign(body, secret).to_header() verifies with verify_ricloud."""
    ricloud_clock(NOW)
    header = ricloud.signing.Signature.sign(BODY, VECTOR_SECRET).to_header()
    verify_ricloud([VECTOR_SECRET], header, BODY, now=NOW + 10)


def test_ricloud_py_verifies_our_header(ricloud_clock: Callable[[int], None]) -> None:
    """Our header passes ricloud-py's own receiver path (from_header(...).verify(body, secret, delta)),
    and the same path refuses it under another secret, so the check is real."""
    ricloud_clock(NOW + 10)
    signature = ricloud.signing.Signature.from_header(ricloud_signature(VECTOR_SECRET, NOW, BODY))
    signature.verify(BODY, VECTOR_SECRET, delta=600)
    with pytest.raises(ricloud.signing.Signature.InvalidSignature):
        signature.verify(BODY, OTHER_SECRET, delta=600)


def test_verify_ricloud_accepts_any_secret_of_a_rotation() -> None:
    """verify_ricloud takes a list of secrets and passes when the header matches any of them."""
    header = ricloud_signature(OTHER_SECRET, NOW, BODY)
    verify_ricloud([VECTOR_SECRET, OTHER_SECRET], header, BODY, now=NOW)


# -- Rejections, both formats ---------------------------------------------------------------------


def _verify_standard_case(*, secret: str, signed_at: int, body: bytes, now: int, drop: bool = False) -> None:
    """Sign BODY with VECTOR_SECRET at ``signed_at``; verify ``body`` under ``secret`` at ``now``."""
    headers = standard_headers([VECTOR_SECRET], MSG_ID, signed_at, BODY)
    if drop:
        del headers["webhook-signature"]
    verify_standard([secret], headers, body, now=now, tolerance=300)


def _verify_ricloud_case(*, secret: str, signed_at: int, body: bytes, now: int, drop: bool = False) -> None:
    """Sign BODY with VECTOR_SECRET at ``signed_at``; verify ``body`` under ``secret`` at ``now``."""
    header = "" if drop else ricloud_signature(VECTOR_SECRET, signed_at, BODY)
    verify_ricloud([secret], header, body, now=now, tolerance=300)


VERIFIERS = [
    pytest.param(_verify_standard_case, id="standard"),
    pytest.param(_verify_ricloud_case, id="ricloud"),
]
Case = Callable[..., None]


@pytest.mark.parametrize("case", VERIFIERS)
def test_untouched_request_verifies(case: Case) -> None:
    """Control for the rejection tests: the unaltered request verifies at the signing time."""
    case(secret=VECTOR_SECRET, signed_at=NOW, body=BODY, now=NOW)


@pytest.mark.parametrize("case", VERIFIERS)
def test_tampered_body_is_refused(case: Case) -> None:
    """One changed byte of the body makes the signature fail."""
    tampered = BODY.replace(b"12", b"13")
    with pytest.raises(NoMatchingSignatureError, match="no signature matches"):
        case(secret=VECTOR_SECRET, signed_at=NOW, body=tampered, now=NOW)


@pytest.mark.parametrize("case", VERIFIERS)
def test_wrong_secret_is_refused(case: Case) -> None:
    """A receiver holding another secret refuses the request."""
    with pytest.raises(NoMatchingSignatureError, match="no signature matches"):
        case(secret=OTHER_SECRET, signed_at=NOW, body=BODY, now=NOW)


@pytest.mark.parametrize("case", VERIFIERS)
def test_stale_timestamp_is_refused(case: Case) -> None:
    """A signature older than the tolerance (301 s at 300) is refused as too old."""
    with pytest.raises(TimestampOutOfToleranceError, match="timestamp too old"):
        case(secret=VECTOR_SECRET, signed_at=NOW - 301, body=BODY, now=NOW)


@pytest.mark.parametrize("case", VERIFIERS)
def test_future_timestamp_is_refused(case: Case) -> None:
    """A signature dated more than the tolerance ahead (301 s at 300) is refused as too new."""
    with pytest.raises(TimestampOutOfToleranceError, match="timestamp too new"):
        case(secret=VECTOR_SECRET, signed_at=NOW + 301, body=BODY, now=NOW)


@pytest.mark.parametrize("case", VERIFIERS)
@pytest.mark.parametrize("offset", [-300, 300])
def test_timestamp_exactly_at_the_tolerance_verifies(case: Case, offset: int) -> None:
    """The tolerance is inclusive: exactly 300 s either way still verifies."""
    case(secret=VECTOR_SECRET, signed_at=NOW + offset, body=BODY, now=NOW)


@pytest.mark.parametrize("case", VERIFIERS)
def test_missing_signature_header_is_refused(case: Case) -> None:
    """Without the signature header the request is refused, naming the header."""
    with pytest.raises(MissingHeaderError, match="missing header"):
        case(secret=VECTOR_SECRET, signed_at=NOW, body=BODY, now=NOW, drop=True)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_missing_standard_header_is_named(name: str) -> None:
    """Each of the three Standard Webhooks headers is required, and the error names the missing one."""
    headers = standard_headers([VECTOR_SECRET], MSG_ID, NOW, BODY)
    del headers[name]
    with pytest.raises(MissingHeaderError, match=f"missing header {name}"):
        verify_standard([VECTOR_SECRET], headers, BODY, now=NOW)


@pytest.mark.parametrize("timestamp", ["", " ", "-5", "1.5", "1e9", "1_700_000_000", "\u0661\u0667\u0660\u0660"])
def test_standard_timestamp_must_be_plain_digits(timestamp: str) -> None:
    """webhook-timestamp must be ASCII decimal unix seconds; anything else is missing or malformed."""
    headers = standard_headers([VECTOR_SECRET], MSG_ID, NOW, BODY)
    headers["webhook-timestamp"] = timestamp
    with pytest.raises((MissingHeaderError, MalformedHeaderError)):
        verify_standard([VECTOR_SECRET], headers, BODY, now=NOW)


def test_a_different_message_id_is_refused() -> None:
    """The signature covers the message id: the same signature under another webhook-id fails."""
    headers = standard_headers([VECTOR_SECRET], MSG_ID, NOW, BODY)
    headers["webhook-id"] = "evt_2"
    with pytest.raises(NoMatchingSignatureError):
        verify_standard([VECTOR_SECRET], headers, BODY, now=NOW)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        "s=abc,t=1700000000",
        "t=1700000000",
        "t=abc,s=d4S/MEvkEx+dan3vvDEUzpA7k+5syhooWVeExDEQbNc=",
        "t=1700000000,s=not base64!",
    ],
)
def test_malformed_ricloud_header_is_refused(header: str) -> None:
    """A Ricloud-Signature that is not ``t=<digits>,s=<base64>`` is refused as malformed."""
    with pytest.raises(MalformedHeaderError, match="malformed header Ricloud-Signature"):
        verify_ricloud([VECTOR_SECRET], header, BODY, now=NOW)


def test_errors_share_one_base_class_with_a_default_message() -> None:
    """Every refusal is a SignatureError; raised bare, each says what its docstring says."""
    for error in (
        MissingHeaderError,
        MalformedHeaderError,
        TimestampOutOfToleranceError,
        NoMatchingSignatureError,
    ):
        assert issubclass(error, SignatureError)
        assert str(error()) == error.__doc__
    assert str(SignatureError()) == "The signature does not verify."


# -- Misuse ---------------------------------------------------------------------------------------


def test_a_bare_string_is_not_taken_as_a_list_of_secrets() -> None:
    """Passing one secret string where a list belongs is a TypeError, not a character-wise loop."""
    with pytest.raises(TypeError):
        standard_signature(VECTOR_SECRET, MSG_ID, NOW, BODY)
    with pytest.raises(TypeError):
        verify_ricloud(VECTOR_SECRET, ricloud_signature(VECTOR_SECRET, NOW, BODY), BODY, now=NOW)


@pytest.mark.parametrize("secrets", [[], ["whsec_"], ["whsec_not base64!"]])
def test_signing_needs_usable_secrets(secrets: list[str]) -> None:
    """Signing refuses no secrets, an empty key and a key that is not base64 (ValueError)."""
    with pytest.raises(ValueError):
        standard_signature(secrets, MSG_ID, NOW, BODY)


# -- Secrets --------------------------------------------------------------------------------------


def test_generate_secret_is_whsec_and_32_random_bytes() -> None:
    """A new secret is ``whsec_`` + padded base64 of 32 bytes, and two secrets differ."""
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
    assert first != second


def test_generated_secret_signs_for_both_libraries(ricloud_clock: Callable[[int], None]) -> None:
    """A generated secret works as a Standard Webhooks key and as ricloud-py's key."""
    secret = generate_secret()
    now = int(time.time())
    Webhook(secret).verify(BODY, standard_headers([secret], MSG_ID, now, BODY), json_parse=False)
    ricloud_clock(now)
    received = ricloud.signing.Signature.from_header(ricloud_signature(secret, now, BODY))
    received.verify(BODY, secret, delta=300)
