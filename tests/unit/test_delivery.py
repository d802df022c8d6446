"""Pure parts of the deliverer: which secrets are live, the signed request, and the body cache."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import pytest

from dispatcher.config import Config
from dispatcher.delivery import Claimed, Deliverer, live_secrets, prepare
from dispatcher.envelope import EventData
from dispatcher.vocab import WebhookFormat

pytestmark = pytest.mark.timeout(10)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLDER_SECRET = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
NOW = datetime(2026, 11, 22, 9, 27, 30, tzinfo=UTC)
EVENT_ID = "01936f4e-8a0b-7c3d-9e2f-0a1b2c3d4e5f"
DELIVERY_ID = UUID("01936f4e-9999-7000-8000-00000000d001")
TIMESTAMP = 1795339650  # NOW in unix seconds
BODY = b'{"k":1}'
# Computed with the receivers' libraries, not dispatcher.signing: standardwebhooks'
# Webhook(SECRET).sign(EVENT_ID, NOW, '{"k":1}') and ricloud-py 3.2.0's Signature.sign(BODY, SECRET) at TIMESTAMP.
BODY_SIGNATURE = "v1,9hNdJvRRysj1Npu4pdh7yjb/M35bR6kF1Qsdv31vIhY="
BODY_RICLOUD_SIGNATURE = "t=1795339650,s=wwEWwYGLjA0l0Z1YjYsBTVmMPbCwQCwKF/qqSyUGWDo="


# -- live_secrets ------------------------------------------------------------------------------------------


def test_secrets_without_expiry_are_live() -> None:
    """A secret whose expires_at is null, or absent, signs."""
    stored: list[dict[str, Any]] = [{"secret": SECRET, "expires_at": None}, {"secret": OLDER_SECRET}]
    assert live_secrets(stored, NOW) == (SECRET, OLDER_SECRET)


def test_expired_secrets_are_dropped() -> None:
    """A secret that expired before now no longer signs."""
    stored: list[dict[str, Any]] = [
        {"secret": SECRET, "expires_at": None},
        {"secret": OLDER_SECRET, "expires_at": "2026-11-22T09:27:29.999999+00:00"},
    ]
    assert live_secrets(stored, NOW) == (SECRET,)


def test_a_secret_expiring_exactly_now_is_dropped() -> None:
    """expires_at is exclusive: at that instant the secret is already gone."""
    stored: list[dict[str, Any]] = [{"secret": OLDER_SECRET, "expires_at": "2026-11-22T09:27:30+00:00"}]
    assert live_secrets(stored, NOW) == ()


def test_a_secret_expiring_later_is_live() -> None:
    """A rotated-out secret still signs until its expiry."""
    stored: list[dict[str, Any]] = [
        {"secret": SECRET, "expires_at": None},
        {"secret": OLDER_SECRET, "expires_at": "2026-11-22T09:27:30.000001+00:00"},
    ]
    assert live_secrets(stored, NOW) == (SECRET, OLDER_SECRET)


def test_expiry_is_compared_as_an_instant_whatever_its_offset() -> None:
    """expires_at as PostgreSQL writes a timestamptz into JSON, with any UTC offset, is compared as an instant."""
    stored: list[dict[str, Any]] = [
        {"secret": "whsec_a", "expires_at": "2026-11-22T10:27:29+01:00"},  # 09:27:29Z: expired
        {"secret": "whsec_b", "expires_at": "2026-11-22T10:27:31+01:00"},  # 09:27:31Z: live
        {"secret": "whsec_c", "expires_at": "2026-11-22T04:27:31-05:00"},  # 09:27:31Z: live
    ]
    assert live_secrets(stored, NOW) == ("whsec_b", "whsec_c")


def test_live_secrets_keep_the_stored_order() -> None:
    """The stored order (current first) is kept, so signatures list the current secret first and ricloud's single
    signature uses the oldest."""
    stored: list[dict[str, Any]] = [
        {"secret": "whsec_new", "expires_at": None},
        {"secret": "whsec_gone", "expires_at": "2026-11-21T00:00:00+00:00"},
        {"secret": "whsec_mid", "expires_at": "2026-11-23T00:00:00+00:00"},
        {"secret": "whsec_old", "expires_at": "2026-11-22T12:00:00+00:00"},
    ]
    assert live_secrets(stored, NOW) == ("whsec_new", "whsec_mid", "whsec_old")
    assert live_secrets([], NOW) == ()


# -- prepare -----------------------------------------------------------------------------------------------


def claimed(
    fmt: WebhookFormat,
    *,
    secrets: tuple[str, ...] = (SECRET,),
    headers: tuple[tuple[str, str], ...] = (),
    webhook_id: int = 17,
    url: str = "https://hooks.example.test/in",
) -> Claimed:
    """A leased delivery of one fixed event to webhook `webhook_id` of format `fmt`."""
    return Claimed(
        id=DELIVERY_ID,
        event_id=UUID(EVENT_ID),
        webhook_id=webhook_id,
        kind="original",
        attempt=1,
        lease_token=1,
        retry_delay=5.0,
        next_attempt_at=NOW,
        event=EventData(
            id=EVENT_ID,
            organisation="acme",
            type="ticket.updated",
            object_id="42",
            payload='{"k":1}',
            actor=None,
            created_at=NOW,
        ),
        url=url,
        format=fmt,
        webhook_name=f"hook {webhook_id}",
        secrets=secrets,
        headers=headers,
        webhook_state="valid",
    )


STATIC = (("X-Static", "1"), ("webhook-id", "static"), ("Ricloud-Signature", "stale"), ("X-4me-Delivery", "x"))


def test_prepare_standard_puts_static_headers_first_and_lets_signatures_win() -> None:
    """The webhook's static headers come first, in their order; a static header that the format sets keeps its
    place but takes the format's value; the format's other headers follow."""
    request = prepare(claimed(WebhookFormat.STANDARD, headers=STATIC), BODY, TIMESTAMP, 15.0)
    assert list(request.headers.items()) == [
        ("X-Static", "1"),
        ("webhook-id", EVENT_ID),
        ("Ricloud-Signature", "stale"),  # not a standard header: the webhook's value stays
        ("X-4me-Delivery", "x"),
        ("webhook-timestamp", "1795339650"),
        ("webhook-signature", BODY_SIGNATURE),
    ]
    assert (request.url, request.body, request.timeout) == ("https://hooks.example.test/in", BODY, 15.0)


def test_prepare_ricloud_overrides_a_static_ricloud_signature() -> None:
    """For ricloud the Ricloud-Signature is the format's, over the exact body, and the URL ends in the event id."""
    request = prepare(claimed(WebhookFormat.RICLOUD, headers=STATIC), BODY, TIMESTAMP, 10.0)
    assert list(request.headers.items()) == [
        ("X-Static", "1"),
        ("webhook-id", EVENT_ID),
        ("Ricloud-Signature", BODY_RICLOUD_SIGNATURE),
        ("X-4me-Delivery", "x"),
        ("webhook-timestamp", "1795339650"),
        ("webhook-signature", BODY_SIGNATURE),
    ]
    assert (request.url, request.body, request.timeout) == (f"https://hooks.example.test/in/{EVENT_ID}", BODY, 10.0)


def test_prepare_4me_overrides_a_static_delivery_header() -> None:
    """For 4me X-4me-Delivery is the delivery id, whatever the webhook's static headers say."""
    request = prepare(claimed(WebhookFormat.FOURME, headers=STATIC), BODY, TIMESTAMP, 15.0)
    assert list(request.headers.items()) == [
        ("X-Static", "1"),
        ("webhook-id", EVENT_ID),
        ("Ricloud-Signature", "stale"),
        ("X-4me-Delivery", "01936f4e-9999-7000-8000-00000000d001"),
        ("webhook-timestamp", "1795339650"),
        ("webhook-signature", BODY_SIGNATURE),
    ]


def test_prepare_without_secrets_sends_id_and_timestamp_only() -> None:
    """A webhook with no live secret gets webhook-id and webhook-timestamp after its static headers, unsigned."""
    request = prepare(claimed(WebhookFormat.RICLOUD, secrets=(), headers=(("X-Static", "1"),)), BODY, TIMESTAMP, 15.0)
    assert list(request.headers.items()) == [
        ("X-Static", "1"),
        ("webhook-id", EVENT_ID),
        ("webhook-timestamp", "1795339650"),
    ]


# -- the body cache ----------------------------------------------------------------------------------------


def deliverer() -> Deliverer:
    """A deliverer for calling _body: nothing it is given is used (no database, no session, no recorder)."""
    unused = cast(Any, None)
    return Deliverer(unused, unused, unused, Config(), owner="test", wake=asyncio.Event(), recorded=asyncio.Event())


@pytest.mark.parametrize("fmt", [WebhookFormat.STANDARD, WebhookFormat.RICLOUD])
def test_one_body_per_event_and_format(fmt: WebhookFormat) -> None:
    """Within a claim, two webhooks of a format whose body does not name the webhook share one serialisation."""
    bodies = deliverer()
    first = bodies._body(claimed(fmt, webhook_id=17))
    assert bodies._body(claimed(fmt, webhook_id=18)) is first


def test_4me_bodies_are_per_webhook() -> None:
    """4me bodies name their webhook: each webhook gets its own body, and one webhook's body is reused."""
    bodies = deliverer()
    first = bodies._body(claimed(WebhookFormat.FOURME, webhook_id=17))
    second = bodies._body(claimed(WebhookFormat.FOURME, webhook_id=18))
    assert first.startswith(b'{"webhook_id":17,') and b'"name":"hook 17"' in first
    assert second.startswith(b'{"webhook_id":18,') and b'"name":"hook 18"' in second
    assert bodies._body(claimed(WebhookFormat.FOURME, webhook_id=17)) is first


def test_formats_do_not_share_a_body() -> None:
    """The same event for webhooks of different formats gets each format's body."""
    bodies = deliverer()
    standard = bodies._body(claimed(WebhookFormat.STANDARD))
    ricloud = bodies._body(claimed(WebhookFormat.RICLOUD))
    assert standard.startswith(b'{"id":"01936f4e-8a0b-7c3d-9e2f-0a1b2c3d4e5f","type":"ticket.updated",')
    assert ricloud.startswith(b'{"id":"01936f4e-8a0b-7c3d-9e2f-0a1b2c3d4e5f","resource":"event",')
