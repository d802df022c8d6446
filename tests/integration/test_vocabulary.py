"""The shared vocabulary (dispatcher.vocab) says what the SQL CHECK constraints say, and every named query of
sql/queries.sql has exactly one typed method in dispatcher.db.queries (and no method names a missing query)."""

from __future__ import annotations

import inspect
import re
from enum import StrEnum

import asyncpg
import pytest

from dispatcher.db import load_queries
from dispatcher.db import queries as typed
from dispatcher.vocab import DeliveryKind, DeliveryState, EventKind, Role, TaskState, WebhookFormat, WebhookState

# Each vocabulary type and the CHECK constraint that lists the same words.
CHECKS: list[tuple[type[StrEnum], str]] = [
    (Role, "token_role"),
    (WebhookFormat, "webhook_format"),
    (WebhookState, "webhook_state"),
    (DeliveryState, "delivery_state"),
    (DeliveryKind, "delivery_kind"),
    (EventKind, "event_kind"),
    (TaskState, "task_state"),
]


@pytest.mark.db
@pytest.mark.parametrize(("vocabulary", "constraint"), CHECKS, ids=[c for _, c in CHECKS])
async def test_vocabulary_equals_the_check_constraint(
    conn: asyncpg.Connection, vocabulary: type[StrEnum], constraint: str
) -> None:
    """The words a CHECK constraint allows are exactly the members of the Python type (no more, no fewer)."""
    definition = await conn.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1", constraint
    )
    assert definition is not None, f"no constraint {constraint}"
    words = set(re.findall(r"'([^']*)'::text", definition))
    assert words == {member.value for member in vocabulary}, definition


def test_every_named_query_has_one_typed_method() -> None:
    """Nothing calls a query by a name that sql/queries.sql lacks, and no query is left without its method."""
    source = inspect.getsource(typed)
    called = re.findall(r'self\._(?:fetch|fetchrow|fetchval|execute)\(\s*"(\w+)"', source)
    assert len(called) == len(set(called)), sorted(n for n in called if called.count(n) > 1)
    assert set(called) == set(load_queries())
