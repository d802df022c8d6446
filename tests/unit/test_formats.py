"""Golden values for dispatcher.formats: each format's exact body bytes, target URL and headers.

The expected bodies are written out by hand from the formats' documented layouts. The expected signatures were
computed once with the receivers' own libraries, not with dispatcher.signing: ``standardwebhooks``
(``Webhook(secret).sign(EVENT_ID, <TIMESTAMP as a UTC datetime>, body)``, one entry per secret) and ricloud-py
3.2.0 (``ricloud.signing.Signature.sign(body, secret).to_header()`` with its clock at TIMESTAMP).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import pytest

from dispatcher.envelope import EventData
from dispatcher.formats import FORMATS, Format
from dispatcher.vocab import WebhookFormat

pytestmark = pytest.mark.timeout(10)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks test vector's secret
OLDER_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()  # whsec_AAECAwQF...Hh8=
EVENT_ID = "01936f4e-8a0b-7c3d-9e2f-0a1b2c3d4e5f"
DELIVERY_ID = UUID("01936f4e-9999-7000-8000-00000000d001")
TIMESTAMP = 1795339650  # 2026-11-22T09:27:30Z
# Stored payload text: raw non-ASCII, a \u escape and a space, all of which must reach the body untouched.
PAYLOAD = '{"subject":"Zoë ☃", "escaped":"caf\\u00e9"}'
ACTOR = '{"id":7,"name":"Zoë Ünal","email":"z@acme.test"}'

EVENT = EventData(
    id=EVENT_ID,
    organisation="acme",
    type="ticket.status.updated",
    object_id="42",
    payload=PAYLOAD,
    actor=ACTOR,
    # 11:27:30.123999 at +02:00: bodies show it in UTC, milliseconds truncated (not rounded).
    created_at=datetime(2026, 11, 22, 11, 27, 30, 123999, tzinfo=timezone(timedelta(hours=2))),
)
BARE_EVENT = EventData(
    id=EVENT_ID,
    organisation="acme",
    type="ticket.status.updated",
    object_id=None,
    payload=PAYLOAD,
    actor=None,
    created_at=datetime(2026, 11, 22, 9, 27, 30, 123000, tzinfo=UTC),
)


def small_event(
    *, organisation: str = "acme", type: str = "a.b", object_id: str | None = None, actor: str | None = None
) -> EventData:
    """A minimal event: id e1, payload {}, created at 2026-11-22T09:27:30.123Z, the given fields."""
    return EventData(
        id="e1",
        organisation=organisation,
        type=type,
        object_id=object_id,
        payload="{}",
        actor=actor,
        created_at=BARE_EVENT.created_at,
    )


STANDARD_BODY = (
    '{"id":"01936f4e-8a0b-7c3d-9e2f-0a1b2c3d4e5f","type":"ticket.status.updated",'
    '"timestamp":"2026-11-22T09:27:30.123Z","organisation":"acme","object_id":"42",'
    '"actor":{"id":7,"name":"Zoë Ünal","email":"z@acme.test"},'
    '"data":{"subject":"Zoë ☃", "escaped":"caf\\u00e9"}}'
).encode()
FOURME_BODY = (
    '{"webhook_id":17,"account_id":"acme","name":"Printer hook","event":"ticket.status.updated",'
    '"object_id":42,"person_id":7,"person_name":"Zoë Ünal",'
    '"payload":{"subject":"Zoë ☃", "escaped":"caf\\u00e9"}}'
).encode()
RICLOUD_BODY = (
    '{"id":"01936f4e-8a0b-7c3d-9e2f-0a1b2c3d4e5f","resource":"event","type":"ticket","action":"status.updated",'
    '"data":{"subject":"Zoë ☃", "escaped":"caf\\u00e9"},"date_created":"2026-11-22T09:27:30.123Z"}'
).encode()

STANDARD = FORMATS[WebhookFormat.STANDARD]
FOURME = FORMATS[WebhookFormat.FOURME]
RICLOUD = FORMATS[WebhookFormat.RICLOUD]


# -- the registry ------------------------------------------------------------------------------------------


def test_every_webhook_format_has_exactly_one_format() -> None:
    """The registry holds one format per WebhookFormat member, and nothing else."""
    assert set(FORMATS) == set(WebhookFormat)


def test_a_plain_string_finds_its_format() -> None:
    """The stored column value, a plain str, finds the same format as the enum member (a StrEnum hashes as its
    value), so a row's format works as a key before or after it is converted to WebhookFormat."""
    assert FORMATS["4me"] is FOURME  # type: ignore[index]
    assert FORMATS["standard"] is STANDARD  # type: ignore[index]
    assert FORMATS["ricloud"] is RICLOUD  # type: ignore[index]


@pytest.mark.parametrize(
    ("fmt", "per_webhook"),
    [(WebhookFormat.STANDARD, False), (WebhookFormat.FOURME, True), (WebhookFormat.RICLOUD, False)],
)
def test_only_4me_bodies_depend_on_the_webhook(fmt: WebhookFormat, per_webhook: bool) -> None:
    """body_per_webhook is True for 4me only, and says the truth: other bodies ignore the webhook's id and name."""
    format_ = FORMATS[fmt]
    assert format_.body_per_webhook is per_webhook
    same = format_.body(EVENT, 17, "Printer hook") == format_.body(EVENT, 18, "Other hook")
    assert same is not per_webhook


# -- bodies ------------------------------------------------------------------------------------------------


def test_standard_body_with_actor() -> None:
    """The standard envelope: id, type, UTC millisecond timestamp, organisation, object_id as a string,
    the actor and payload JSON inserted verbatim."""
    assert STANDARD.body(EVENT, 17, "Printer hook") == STANDARD_BODY


def test_standard_body_without_actor_or_object_id() -> None:
    """Without an actor and an object id, both are JSON null."""
    expected = (
        '{"id":"01936f4e-8a0b-7c3d-9e2f-0a1b2c3d4e5f","type":"ticket.status.updated",'
        '"timestamp":"2026-11-22T09:27:30.123Z","organisation":"acme","object_id":null,"actor":null,'
        '"data":{"subject":"Zoë ☃", "escaped":"caf\\u00e9"}}'
    )
    assert STANDARD.body(BARE_EVENT, 17, "") == expected.encode()


def test_bodies_are_utf8_without_escaping_non_ascii() -> None:
    """Non-ASCII text is sent as raw UTF-8 (not \\u escapes), in the payload and in the fields the format writes."""
    body = STANDARD.body(small_event(organisation="Zoë AG", object_id="Ω-1"), 1, "")
    assert b'"organisation":"Zo\xc3\xab AG","object_id":"\xce\xa9-1"' in body
    assert b'"subject":"Zo\xc3\xab \xe2\x98\x83"' in STANDARD_BODY


def test_4me_body_with_actor_and_integer_object_id() -> None:
    """4me's envelope names the webhook, writes an integer object_id as a JSON number and takes person_id and
    person_name from the actor."""
    assert FOURME.body(EVENT, 17, "Printer hook") == FOURME_BODY


def test_4me_body_without_actor_for_an_unnamed_webhook() -> None:
    """Without an actor person_id and person_name are null; an unnamed webhook's name is the event type."""
    expected = (
        '{"webhook_id":17,"account_id":"acme","name":"ticket.status.updated","event":"ticket.status.updated",'
        '"object_id":null,"person_id":null,"person_name":null,'
        '"payload":{"subject":"Zoë ☃", "escaped":"caf\\u00e9"}}'
    )
    assert FOURME.body(BARE_EVENT, 17, "") == expected.encode()


def test_4me_person_fields_missing_from_the_actor_are_null() -> None:
    """An actor without a name (or id) gives null for that person field; other actor keys are not copied."""
    assert FOURME.body(small_event(object_id="1", actor='{"id":"u-9"}'), 3, "h") == (
        b'{"webhook_id":3,"account_id":"acme","name":"h","event":"a.b","object_id":1,'
        b'"person_id":"u-9","person_name":null,"payload":{}}'
    )


@pytest.mark.parametrize(
    ("object_id", "written"),
    [
        ("42", "42"),
        ("0", "0"),
        ("-3", "-3"),
        ("12345678901234567890", "12345678901234567890"),  # beyond 64 bits, still an exact JSON integer
        ("007", '"007"'),  # a leading zero is not an integer literal
        ("-0", "0"),
        ("1.5", '"1.5"'),
        ("1e3", '"1e3"'),
        ("INC-42", '"INC-42"'),
        (" 42", '" 42"'),
        (None, "null"),
    ],
)
def test_4me_object_id_is_a_number_only_for_an_integer_literal(object_id: str | None, written: str) -> None:
    """4me's object_id is a JSON integer exactly when the stored text is a plain decimal integer, else a string."""
    expected = (
        '{"webhook_id":1,"account_id":"acme","name":"h","event":"a.b",'
        f'"object_id":{written},"person_id":null,"person_name":null,"payload":{{}}}}'
    )
    assert FOURME.body(small_event(object_id=object_id), 1, "h") == expected.encode()


def test_ricloud_body() -> None:
    """ricloud's event resource: type is the event type's first segment, action the rest, then data and
    date_created."""
    assert RICLOUD.body(EVENT, 17, "Printer hook") == RICLOUD_BODY


def test_ricloud_type_without_a_dot_has_an_empty_action() -> None:
    """An event type without a dot is all type, and the action is the empty string."""
    assert RICLOUD.body(small_event(type="ping"), 1, "") == (
        b'{"id":"e1","resource":"event","type":"ping","action":"","data":{},"date_created":"2026-11-22T09:27:30.123Z"}'
    )


# -- target URLs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "url", "target"),
    [
        (WebhookFormat.STANDARD, "https://hooks.example.test/in", "https://hooks.example.test/in"),
        (WebhookFormat.STANDARD, "https://hooks.example.test/in/?k=1", "https://hooks.example.test/in/?k=1"),
        (WebhookFormat.FOURME, "https://hooks.example.test/4me/", "https://hooks.example.test/4me/"),
        (WebhookFormat.RICLOUD, "https://hooks.example.test/rc", f"https://hooks.example.test/rc/{EVENT_ID}"),
        (WebhookFormat.RICLOUD, "https://hooks.example.test/rc//", f"https://hooks.example.test/rc/{EVENT_ID}"),
    ],
)
def test_target_url(fmt: WebhookFormat, url: str, target: str) -> None:
    """Standard and 4me post to the webhook's URL as is; ricloud appends the event id as the last path segment,
    after dropping trailing slashes."""
    assert FORMATS[fmt].target_url(url, EVENT_ID) == target


# -- headers -----------------------------------------------------------------------------------------------


def headers(format_: Format, body: bytes, secrets: tuple[str, ...]) -> list[tuple[str, str]]:
    """The format's headers for the fixed delivery, in order."""
    return list(format_.headers(DELIVERY_ID, EVENT_ID, TIMESTAMP, secrets, body).items())


@pytest.mark.parametrize(
    ("fmt", "extra"),
    [
        (WebhookFormat.STANDARD, []),
        (WebhookFormat.FOURME, [("X-4me-Delivery", "01936f4e-9999-7000-8000-00000000d001")]),
        (WebhookFormat.RICLOUD, []),
    ],
)
def test_without_secrets_only_id_and_timestamp(fmt: WebhookFormat, extra: list[tuple[str, str]]) -> None:
    """With no live secret nothing is signed: webhook-id and webhook-timestamp only (4me adds its delivery id;
    ricloud gets no Ricloud-Signature)."""
    assert headers(FORMATS[fmt], b"{}", ()) == [
        ("webhook-id", EVENT_ID),
        ("webhook-timestamp", "1795339650"),
        *extra,
    ]


def test_standard_headers_with_one_secret() -> None:
    """Standard: webhook-id (the event id), webhook-timestamp, and one v1 signature."""
    assert headers(STANDARD, STANDARD_BODY, (SECRET,)) == [
        ("webhook-id", EVENT_ID),
        ("webhook-timestamp", "1795339650"),
        ("webhook-signature", "v1,S23cMGdgcRGPH7Ba+q/a7FeL2VocaggRvNlb7lIIqHY="),
    ]


def test_standard_headers_with_two_secrets() -> None:
    """During a rotation webhook-signature holds one entry per live secret, current first."""
    assert headers(STANDARD, STANDARD_BODY, (SECRET, OLDER_SECRET)) == [
        ("webhook-id", EVENT_ID),
        ("webhook-timestamp", "1795339650"),
        (
            "webhook-signature",
            "v1,S23cMGdgcRGPH7Ba+q/a7FeL2VocaggRvNlb7lIIqHY= v1,VgaTneV/SYIimofAKlDoWHi9YiKeFsHneQmUwSxYbH8=",
        ),
    ]


def test_4me_headers_with_one_secret() -> None:
    """4me: the Standard Webhooks headers, then X-4me-Delivery with the delivery id."""
    assert headers(FOURME, FOURME_BODY, (SECRET,)) == [
        ("webhook-id", EVENT_ID),
        ("webhook-timestamp", "1795339650"),
        ("webhook-signature", "v1,xup9ifxfNnVTLK172OiioBKOaBlRsmXXe4DjkRQocnw="),
        ("X-4me-Delivery", "01936f4e-9999-7000-8000-00000000d001"),
    ]


def test_4me_headers_with_two_secrets() -> None:
    """4me during a rotation: both signatures, current first, and the delivery id."""
    assert headers(FOURME, FOURME_BODY, (SECRET, OLDER_SECRET)) == [
        ("webhook-id", EVENT_ID),
        ("webhook-timestamp", "1795339650"),
        (
            "webhook-signature",
            "v1,xup9ifxfNnVTLK172OiioBKOaBlRsmXXe4DjkRQocnw= v1,tD93iMjKwVND3OtYrJxmEGxXLG4zwBd0rDqiD3x4Kbs=",
        ),
        ("X-4me-Delivery", "01936f4e-9999-7000-8000-00000000d001"),
    ]


def test_ricloud_headers_with_one_secret() -> None:
    """ricloud: the Standard Webhooks headers, then a Ricloud-Signature keyed with the whole secret string."""
    assert headers(RICLOUD, RICLOUD_BODY, (SECRET,)) == [
        ("webhook-id", EVENT_ID),
        ("webhook-timestamp", "1795339650"),
        ("webhook-signature", "v1,+TLIY49CoOL03/Wk1oqVAVn5OjQwhLYvnDHtiuC9kYE="),
        ("Ricloud-Signature", "t=1795339650,s=6EcLrRpGDU+/Pg7aR2+rp63xXGNBomFML0EQ2wFwZ4E="),
    ]


def test_ricloud_headers_with_two_secrets_sign_ricloud_with_the_oldest() -> None:
    """During a rotation Standard Webhooks signs with both secrets, but the single Ricloud-Signature uses the
    oldest live secret (the last), so ricloud receivers keep verifying until they switch."""
    assert headers(RICLOUD, RICLOUD_BODY, (SECRET, OLDER_SECRET)) == [
        ("webhook-id", EVENT_ID),
        ("webhook-timestamp", "1795339650"),
        (
            "webhook-signature",
            "v1,+TLIY49CoOL03/Wk1oqVAVn5OjQwhLYvnDHtiuC9kYE= v1,4JA5ZVhxRbpqCiRkItQl9mCGZZUYiY9JMX0fUgv5r4c=",
        ),
        ("Ricloud-Signature", "t=1795339650,s=uy3Y3RyclJZOf2R4NWax9IvRJplC9QmPvD1z8BfiWiQ="),
    ]


def test_standard_signature_without_actor() -> None:
    """The signature covers the exact body bytes: the actor-less body signs to its own value."""
    body = STANDARD.body(BARE_EVENT, 17, "")
    assert STANDARD.headers(DELIVERY_ID, EVENT_ID, TIMESTAMP, (SECRET,), body)["webhook-signature"] == (
        "v1,7Az0iaAuwaDEr4TtbhCireWeVjKgp6CPlqZ6qJZgxV0="
    )
