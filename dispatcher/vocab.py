"""The words every layer shares: roles, webhook formats and states, delivery states and kinds, task states.

Each is a `StrEnum`, so a member is also the plain string stored in PostgreSQL and sent in JSON. The SQL
`CHECK` constraints hold the same lists (tests/integration/test_schema.py keeps the two equal).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a token may do: `admin` everything in its organisation, `producer` emit events, `viewer` read."""

    ADMIN = "admin"
    PRODUCER = "producer"
    VIEWER = "viewer"


class WebhookFormat(StrEnum):
    """The envelope, target URL and signatures a webhook's requests get (dispatcher.formats)."""

    STANDARD = "standard"
    FOURME = "4me"
    RICLOUD = "ricloud"


class WebhookState(StrEnum):
    """A webhook's health (docs/design.md, the state machine)."""

    NEW = "new"
    VALID = "valid"
    INVALID = "invalid"
    DEACTIVATED = "deactivated"


class DeliveryState(StrEnum):
    """Where a delivery is: waiting, under a lease, held, or finished one of three ways."""

    PENDING = "pending"
    LEASED = "leased"
    HELD = "held"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeliveryKind(StrEnum):
    """Why a delivery exists: routed from an event, a webhook test, an operator's redelivery or a replay."""

    ORIGINAL = "original"
    TEST = "test"
    REDELIVER = "redeliver"
    REPLAY = "replay"


class EventKind(StrEnum):
    """An event from a producer, or the event of a webhook test."""

    EVENT = "event"
    TEST = "test"


class TaskState(StrEnum):
    """A webhook test's task (ricloud's `webhook_config.test`)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
