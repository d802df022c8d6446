"""The producer contract (SPEC §4): plain INSERTs into `events`, constraint names that say what was wrong,
idempotency keys, one empty NOTIFY per statement, and the `dispatcher_producer` role."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.support.factories import emit_many, make_webhook

pytestmark = pytest.mark.db

CHANNEL = "dispatcher_events"
MARKER = "doorbell-settle-marker"  # the payload of Doorbell.settle's own notification (producers' are empty)
# Producer columns (SPEC §4); everything else has defaults the daemon owns.
PRODUCER_COLUMNS = ("organisation", "type", "payload", "object_id", "actor", "key_id", "idempotency_key")


# ---- helpers -----------------------------------------------------------------------------------------------


async def add_organisation(conn: asyncpg.Connection, organisation: str) -> None:
    await conn.execute("INSERT INTO organisation (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", organisation)


async def add_token(conn: asyncpg.Connection, organisation: str, webhook_id: int | None = None) -> int:
    """A producer token of `organisation` (random digest), optionally bound to a webhook; returns its id."""
    await add_organisation(conn, organisation)
    token_id: int = await conn.fetchval(
        "INSERT INTO token (organisation, role, digest, name, webhook_id)"
        " VALUES ($1, 'producer', decode(md5(random()::text), 'hex'), 'test', $2) RETURNING id",
        organisation,
        webhook_id,
    )
    return token_id


async def count_events(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM events")
    return count


def payload_of_size(size: int) -> str:
    """A JSON object whose jsonb text form (what the limit measures) is exactly `size` bytes."""
    # jsonb prints {"a": "xxx"} with one space after the colon: 9 bytes of frame around the string.
    text = '{"a": "' + "x" * (size - 9) + '"}'
    assert len(text) == size
    return text


@dataclass
class Doorbell:
    """A separate connection LISTENing on the dispatcher channel, recording every notification."""

    conn: asyncpg.Connection
    received: list[tuple[int, str, str]] = field(default_factory=list)
    _marker_seen: asyncio.Event = field(default_factory=asyncio.Event)

    def on_notify(self, connection: object, pid: int, channel: str, payload: str) -> None:
        if payload == MARKER:
            self._marker_seen.set()
            return
        self.received.append((pid, channel, payload))

    async def settle(self, within: float = 5.0) -> int:
        """Wait until every notification of a statement committed before this call has arrived; returns how
        many arrived in all.

        The listening connection sends itself a marker on the same channel and waits for it: PostgreSQL
        delivers notifications in the order their transactions committed, so the marker comes after all of
        them (it is not recorded). A fact rather than a pause of "long enough" for stragglers."""
        self._marker_seen.clear()
        await self.conn.execute("SELECT pg_notify($1, $2)", CHANNEL, MARKER)
        await asyncio.wait_for(self._marker_seen.wait(), within)
        return len(self.received)


@pytest.fixture
async def doorbell(dsn: str) -> AsyncIterator[Doorbell]:
    """LISTEN dispatcher_events on a connection of its own, as the daemon's listener does."""
    listener = await asyncpg.connect(dsn)
    bell = Doorbell(listener)
    await listener.add_listener(CHANNEL, bell.on_notify)
    yield bell
    await listener.remove_listener(CHANNEL, bell.on_notify)
    await listener.close()


def dsn_as(dsn: str, user: str) -> str:
    """The same DSN with another user (the embedded server trusts local connections)."""
    replaced, n = re.subn(r"^(postgresql://)[^:@/]*(:[^@/]*)?@", rf"\g<1>{user}@", dsn)
    assert n == 1, dsn
    return replaced


@pytest.fixture
async def producer(dsn: str, conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A connection as a fresh LOGIN role that is only a member of dispatcher_producer (dropped after)."""
    role = f"producer_{uuid.uuid4().hex[:16]}"
    await conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE dispatcher_producer")
    try:
        producer_conn = await asyncpg.connect(dsn_as(dsn, role))
        try:
            assert await producer_conn.fetchval("SELECT current_user") == role
            yield producer_conn
        finally:
            await producer_conn.close()
    finally:
        await conn.execute(f"DROP ROLE {role}")


# ---- a plain INSERT ----------------------------------------------------------------------------------------


async def test_plain_insert_fills_the_defaults(conn: asyncpg.Connection) -> None:
    """The §4 INSERT works as written and the row gets a UUIDv7 id, created_at, kind 'event' and is not yet
    dispatched (no delivery count, no error)."""
    await add_organisation(conn, "acme")
    before = await conn.fetchval("SELECT clock_timestamp()")
    await conn.execute(
        "INSERT INTO events (organisation, type, object_id, payload)"
        " VALUES ('acme', 'request.create', '12345', '{\"subject\": \"Printer on fire\"}')"
    )
    after = await conn.fetchval("SELECT clock_timestamp()")
    row = await conn.fetchrow("SELECT * FROM events")
    assert row is not None
    assert isinstance(row["id"], uuid.UUID)
    assert row["id"].version == 7
    assert row["id"].variant == uuid.RFC_4122
    assert before <= row["created_at"] <= after
    assert row["kind"] == "event"
    assert row["dispatched_at"] is None
    assert row["delivery_count"] is None
    assert row["dispatch_error"] is None
    assert row["webhook_id"] is None and row["key_id"] is None and row["actor"] is None
    assert row["object_id"] == "12345"
    assert row["payload"] == '{"subject": "Printer on fire"}'


async def test_event_ids_are_uuidv7_that_increase_with_time(conn: asyncpg.Connection) -> None:
    """Ids carry the creation time in their first 48 bits (unix milliseconds), have version nibble 7, and sort
    in the order the events were made when they are made in different milliseconds."""
    await add_organisation(conn, "acme")
    ids = []
    for n in range(20):
        ids.append(
            await conn.fetchval(
                "INSERT INTO events (organisation, type, object_id) VALUES ('acme', 'request.create', $1) RETURNING id",
                str(n),
            )
        )
        await asyncio.sleep(0.003)
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    rows = await conn.fetch("SELECT id, created_at FROM events")
    for row in rows:
        millis = int.from_bytes(row["id"].bytes[:6], "big")
        embedded = datetime.fromtimestamp(millis / 1000, UTC)
        assert abs(embedded - row["created_at"]) < timedelta(milliseconds=50)


async def test_created_at_is_clock_time_not_transaction_time(conn: asyncpg.Connection) -> None:
    """Two events made in one transaction, some time apart, get different created_at (clock_timestamp(), not
    now()) and increasing ids."""
    await add_organisation(conn, "acme")
    insert = "INSERT INTO events (organisation, type) VALUES ('acme', 'request.create') RETURNING id, created_at"
    async with conn.transaction():
        first = await conn.fetchrow(insert)
        await asyncio.sleep(0.02)
        second = await conn.fetchrow(insert)
    assert first is not None and second is not None
    assert second["created_at"] - first["created_at"] >= timedelta(milliseconds=15)
    assert first["id"] < second["id"]


# ---- bad inserts fail at once, naming what is wrong --------------------------------------------------------


async def test_unknown_type_is_refused(conn: asyncpg.Connection) -> None:
    """A type that is not in the catalogue fails with a foreign key violation named event_type_unknown."""
    await add_organisation(conn, "acme")
    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await conn.execute("INSERT INTO events (organisation, type) VALUES ('acme', 'request.created')")
    assert caught.value.constraint_name == "event_type_unknown"
    assert await count_events(conn) == 0


async def test_unknown_organisation_is_refused(conn: asyncpg.Connection) -> None:
    """An organisation that does not exist fails with event_organisation_unknown."""
    await add_organisation(conn, "acme")
    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await conn.execute("INSERT INTO events (organisation, type) VALUES ('acne', 'request.create')")
    assert caught.value.constraint_name == "event_organisation_unknown"
    assert await count_events(conn) == 0


async def test_payload_over_the_default_limit_is_refused(conn: asyncpg.Connection) -> None:
    """The default limit is 256 KiB of payload text: exactly 262144 bytes is accepted, one byte more fails
    with a check violation named event_payload_too_large."""
    await add_organisation(conn, "acme")
    assert await conn.fetchval("SELECT max_payload_bytes FROM dispatcher_settings") == 262144
    insert = "INSERT INTO events (organisation, type, payload) VALUES ('acme', 'request.create', $1::jsonb)"
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(insert, payload_of_size(262145))
    assert caught.value.constraint_name == "event_payload_too_large"
    assert await count_events(conn) == 0
    await conn.execute(insert, payload_of_size(262144))
    assert await count_events(conn) == 1


async def test_payload_limit_follows_the_settings_table(conn: asyncpg.Connection) -> None:
    """After the limit is lowered to 100 bytes, a 101-byte payload fails (event_payload_too_large) through a
    plain INSERT and through dispatcher_emit, and a 100-byte one is accepted."""
    await add_organisation(conn, "acme")
    await conn.execute("UPDATE dispatcher_settings SET max_payload_bytes = 100")
    insert = "INSERT INTO events (organisation, type, payload) VALUES ('acme', 'request.create', $1::jsonb)"
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(insert, payload_of_size(101))
    assert caught.value.constraint_name == "event_payload_too_large"
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create', $1::jsonb)", payload_of_size(101))
    assert caught.value.constraint_name == "event_payload_too_large"
    assert await count_events(conn) == 0
    await conn.execute(insert, payload_of_size(100))
    assert await count_events(conn) == 1


async def test_actor_counts_with_the_payload(conn: asyncpg.Connection) -> None:
    """The limit holds for payload and actor together (both go into every envelope): a 60-byte payload with a
    41-byte actor fails a 100-byte limit; with a 40-byte actor it passes; an UPDATE of the actor alone is checked."""
    await add_organisation(conn, "acme")
    await conn.execute("UPDATE dispatcher_settings SET max_payload_bytes = 100")
    insert = "INSERT INTO events (organisation, type, payload, actor) VALUES ('acme', 'request.create', $1, $2)"
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(insert, payload_of_size(60), payload_of_size(41))
    assert caught.value.constraint_name == "event_payload_too_large"
    assert "payload and actor are 101 bytes" in str(caught.value)
    await conn.execute(insert, payload_of_size(60), payload_of_size(40))
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("UPDATE events SET actor = $1::jsonb", payload_of_size(41))
    assert await count_events(conn) == 1


async def test_object_id_is_at_most_255_characters(conn: asyncpg.Connection) -> None:
    """object_id of 255 characters is accepted, 256 fail with event_object_id_length (a plain INSERT and
    dispatcher_emit alike): a 5,000-digit id no longer reaches the deliverer."""
    await add_organisation(conn, "acme")
    insert = "INSERT INTO events (organisation, type, object_id) VALUES ('acme', 'request.create', $1)"
    await conn.execute(insert, "9" * 255)
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(insert, "9" * 256)
    assert caught.value.constraint_name == "event_object_id_length"
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create', '{}', object_id => $1)", "9" * 5000)
    assert caught.value.constraint_name == "event_object_id_length"
    assert await count_events(conn) == 1


async def test_payload_limit_counts_bytes_not_characters(conn: asyncpg.Connection) -> None:
    """The limit is octet_length: 40 three-byte characters (120 bytes with the frame) exceed a 100-byte limit
    although the text is only 49 characters long."""
    await add_organisation(conn, "acme")
    await conn.execute("UPDATE dispatcher_settings SET max_payload_bytes = 100")
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute(
            "INSERT INTO events (organisation, type, payload) VALUES ('acme', 'request.create', $1::jsonb)",
            '{"a": "' + "€" * 40 + '"}',
        )
    assert caught.value.constraint_name == "event_payload_too_large"
    assert await count_events(conn) == 0


async def test_key_of_another_organisation_is_refused(conn: asyncpg.Connection) -> None:
    """key_id must be a token of the event's own organisation: another organisation's token fails with
    event_key_not_in_organisation, while the organisation's own token is accepted."""
    await add_organisation(conn, "acme")
    theirs = await add_token(conn, "globex")
    ours = await add_token(conn, "acme")
    insert = "INSERT INTO events (organisation, type, key_id) VALUES ('acme', 'request.create', $1)"
    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await conn.execute(insert, theirs)
    assert caught.value.constraint_name == "event_key_not_in_organisation"
    assert await count_events(conn) == 0
    await conn.execute(insert, ours)
    assert await count_events(conn) == 1


async def test_webhook_of_another_organisation_is_refused(conn: asyncpg.Connection) -> None:
    """A targeted event's webhook_id must be a webhook of its organisation: another organisation's webhook
    fails with event_webhook_not_in_organisation."""
    await add_organisation(conn, "acme")
    theirs, _ = await make_webhook(conn, "https://example.test/globex", organisation="globex")
    ours, _ = await make_webhook(conn, "https://example.test/acme", organisation="acme")
    insert = "INSERT INTO events (organisation, type, webhook_id, kind) VALUES ('acme', 'webhook.test', $1, 'test')"
    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await conn.execute(insert, theirs)
    assert caught.value.constraint_name == "event_webhook_not_in_organisation"
    assert await count_events(conn) == 0
    await conn.execute(insert, ours)
    assert await count_events(conn) == 1


@pytest.mark.parametrize(
    "name",
    [
        "Request.create",  # upper case
        "1request.create",  # first segment starts with a digit
        "_request",  # ... or an underscore
        "request..create",  # empty segment
        "request.",  # trailing dot
        ".request",  # leading dot
        "request.create!",  # character outside [a-z0-9_-]
        "request create",  # space
        "request.*",  # a pattern is not a type
        "a" * 101,  # more than 100 characters
    ],
)
async def test_event_type_grammar_is_enforced(conn: asyncpg.Connection, name: str) -> None:
    """A catalogue entry with bad grammar fails with event_type_name_format and is not added."""
    before = await conn.fetchval("SELECT count(*) FROM event_type")
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await conn.execute("INSERT INTO event_type (name, source) VALUES ($1, 'api')", name)
    assert caught.value.constraint_name == "event_type_name_format"
    assert await conn.fetchval("SELECT count(*) FROM event_type") == before


@pytest.mark.parametrize(
    "name",
    [
        "automation_rule",
        "request.agile-board-column-changed",
        "customer.subscription.created",
        "a1.2b.c_d",
        "a" * 100,
    ],
)
async def test_event_type_grammar_accepts_the_documented_forms(conn: asyncpg.Connection, name: str) -> None:
    """Dot-separated segments of [a-z0-9_-], the first starting with a letter, up to 100 characters, are
    accepted (the negative cases above would pass vacuously if nothing were)."""
    await conn.execute("INSERT INTO event_type (name, source) VALUES ($1, 'api') ON CONFLICT DO NOTHING", name)
    assert await conn.fetchval("SELECT count(*) FROM event_type WHERE name = $1", name) == 1


# ---- idempotency -------------------------------------------------------------------------------------------


async def test_insert_on_conflict_do_nothing_keeps_one_row(conn: asyncpg.Connection) -> None:
    """The §4 idempotent INSERT run twice leaves one row; the same key in another organisation is another
    event, and events without a key never conflict."""
    await add_organisation(conn, "acme")
    await add_organisation(conn, "globex")
    keyed = (
        "INSERT INTO events (organisation, type, payload, idempotency_key)"
        " VALUES ($1, 'problem.update', '{}', 'problem-42-v7') ON CONFLICT DO NOTHING"
    )
    assert await conn.execute(keyed, "acme") == "INSERT 0 1"
    assert await conn.execute(keyed, "acme") == "INSERT 0 0"
    assert await conn.fetchval("SELECT count(*) FROM events WHERE organisation = 'acme'") == 1
    assert await conn.execute(keyed, "globex") == "INSERT 0 1"
    unkeyed = "INSERT INTO events (organisation, type) VALUES ('acme', 'problem.update')"
    await conn.execute(unkeyed)
    await conn.execute(unkeyed)
    assert await count_events(conn) == 4


async def test_repeated_key_without_on_conflict_names_the_constraint(conn: asyncpg.Connection) -> None:
    """A repeated idempotency key without ON CONFLICT fails with event_idempotency_key_repeated."""
    await add_organisation(conn, "acme")
    keyed = "INSERT INTO events (organisation, type, idempotency_key) VALUES ('acme', 'problem.update', 'k')"
    await conn.execute(keyed)
    with pytest.raises(asyncpg.UniqueViolationError) as caught:
        await conn.execute(keyed)
    assert caught.value.constraint_name == "event_idempotency_key_repeated"
    assert await count_events(conn) == 1


async def test_emit_with_a_key_returns_the_original_id(conn: asyncpg.Connection) -> None:
    """dispatcher_emit with a repeated idempotency key returns the first event's id and makes no new row."""
    await add_organisation(conn, "acme")
    emit = (
        "SELECT dispatcher_emit('acme', 'request.create', '{\"id\": 1}'::jsonb,"
        " object_id => '1', idempotency_key => 'k1')"
    )
    first = await conn.fetchval(emit)
    second = await conn.fetchval(emit)
    assert isinstance(first, uuid.UUID)
    assert second == first
    assert await count_events(conn) == 1
    row = await conn.fetchrow("SELECT * FROM events")
    assert row is not None
    assert (row["id"], row["object_id"], row["idempotency_key"]) == (first, "1", "k1")
    assert row["payload"] == '{"id": 1}'


async def test_emit_without_a_key_makes_distinct_events(conn: asyncpg.Connection) -> None:
    """dispatcher_emit without an idempotency key makes a new event, with a new id, every time."""
    await add_organisation(conn, "acme")
    emit = "SELECT dispatcher_emit('acme', 'request.create', '{\"id\": 1}'::jsonb, object_id => '1')"
    ids = [await conn.fetchval(emit) for _ in range(3)]
    assert len(set(ids)) == 3
    assert await count_events(conn) == 3


async def test_emit_reports_bad_input_like_an_insert(conn: asyncpg.Connection) -> None:
    """dispatcher_emit fails with the same constraint names as a plain INSERT (unknown type, another
    organisation's key), inserting nothing."""
    await add_organisation(conn, "acme")
    theirs = await add_token(conn, "globex")
    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await conn.fetchval("SELECT dispatcher_emit('acme', 'request.nope')")
    assert caught.value.constraint_name == "event_type_unknown"
    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create', key_id => $1)", theirs)
    assert caught.value.constraint_name == "event_key_not_in_organisation"
    assert await count_events(conn) == 0


# ---- NOTIFY ------------------------------------------------------------------------------------------------


async def test_one_statement_of_a_thousand_rows_rings_once(conn: asyncpg.Connection, doorbell: Doorbell) -> None:
    """A single INSERT ... SELECT of 1,000 events sends exactly one notification, on dispatcher_events, with
    an empty payload, from the producer's backend."""
    await add_organisation(conn, "acme")
    await emit_many(conn, 1000)
    assert await count_events(conn) == 1000
    assert await doorbell.settle() == 1
    assert doorbell.received == [(conn.get_server_pid(), CHANNEL, "")]


async def test_two_statements_ring_twice(conn: asyncpg.Connection, doorbell: Doorbell) -> None:
    """Two producer statements (each its own transaction) send two notifications, one each."""
    await add_organisation(conn, "acme")
    await emit_many(conn, 10)
    await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create')")
    assert await doorbell.settle() == 2
    assert [payload for _, _, payload in doorbell.received] == ["", ""]


async def test_session_setting_silences_the_doorbell(dsn: str, conn: asyncpg.Connection, doorbell: Doorbell) -> None:
    """`SET dispatcher.notify = off` on the producer's connection sends no notification for its inserts (a
    control insert from another connection afterwards proves the listener was listening, and that the setting
    is per session)."""
    await add_organisation(conn, "acme")
    await conn.execute("SET dispatcher.notify = off")
    await emit_many(conn, 100)
    await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create')")
    assert await count_events(conn) == 101
    await doorbell.settle()
    assert doorbell.received == []
    other = await asyncpg.connect(dsn)
    try:
        await other.execute("INSERT INTO events (organisation, type) VALUES ('acme', 'request.create')")
        assert await doorbell.settle() == 1
        assert doorbell.received == [(other.get_server_pid(), CHANNEL, "")]
    finally:
        await other.close()


async def test_settings_table_silences_the_doorbell(conn: asyncpg.Connection, doorbell: Doorbell) -> None:
    """`notify = false` in dispatcher_settings sends no notification for any producer; setting it back to true
    brings the doorbell back."""
    await add_organisation(conn, "acme")
    await conn.execute("UPDATE dispatcher_settings SET notify = false")
    await emit_many(conn, 100)
    await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create')")
    assert await count_events(conn) == 101
    await doorbell.settle()
    assert doorbell.received == []
    await conn.execute("UPDATE dispatcher_settings SET notify = true")
    await emit_many(conn, 1)
    assert await doorbell.settle() == 1


# ---- the dispatcher_producer role --------------------------------------------------------------------------


async def test_producer_role_can_insert_and_emit(conn: asyncpg.Connection, producer: asyncpg.Connection) -> None:
    """A login that is only a member of dispatcher_producer can INSERT events with every producer column, use
    the §4 idempotent INSERT, and call dispatcher_emit (which returns the original id for a repeated key)."""
    await add_organisation(conn, "acme")
    key = await add_token(conn, "acme")
    await producer.execute(
        "INSERT INTO events (organisation, type, payload, object_id, actor, key_id, idempotency_key)"
        " VALUES ('acme', 'request.create', '{\"subject\": \"x\"}', '12345',"
        ' \'{"id": 591, "name": "Ann"}\', $1, \'request-12345-v1\')',
        key,
    )
    await producer.execute(
        "INSERT INTO events (organisation, type, payload, idempotency_key)"
        " VALUES ('acme', 'problem.update', '{}', 'problem-42-v7') ON CONFLICT DO NOTHING"
    )
    await producer.execute(
        "INSERT INTO events (organisation, type, payload, idempotency_key)"
        " VALUES ('acme', 'problem.update', '{}', 'problem-42-v7') ON CONFLICT DO NOTHING"
    )
    first = await producer.fetchval(
        "SELECT dispatcher_emit('acme', 'request.create', '{\"id\": 1}'::jsonb, object_id => '1',"
        " idempotency_key => 'k1')"
    )
    again = await producer.fetchval(
        "SELECT dispatcher_emit('acme', 'request.create', '{\"id\": 1}'::jsonb, object_id => '1',"
        " idempotency_key => 'k1')"
    )
    assert isinstance(first, uuid.UUID) and again == first
    assert await count_events(conn) == 3
    row = await conn.fetchrow("SELECT * FROM events WHERE idempotency_key = 'request-12345-v1'")
    assert row is not None
    assert row["key_id"] == key and row["actor"] == '{"id": 591, "name": "Ann"}'
    assert row["id"].version == 7 and row["kind"] == "event" and row["dispatched_at"] is None


async def test_producer_role_gets_the_same_constraint_errors(
    conn: asyncpg.Connection, producer: asyncpg.Connection
) -> None:
    """The producer role sees the named constraint errors too (the checks run whatever it may read)."""
    await add_organisation(conn, "acme")
    await conn.execute("UPDATE dispatcher_settings SET max_payload_bytes = 100")
    with pytest.raises(asyncpg.ForeignKeyViolationError) as fk:
        await producer.execute("INSERT INTO events (organisation, type) VALUES ('acme', 'nope.nope')")
    assert fk.value.constraint_name == "event_type_unknown"
    with pytest.raises(asyncpg.CheckViolationError) as check:
        await producer.execute(
            "INSERT INTO events (organisation, type, payload) VALUES ('acme', 'request.create', $1::jsonb)",
            payload_of_size(101),
        )
    assert check.value.constraint_name == "event_payload_too_large"
    assert await count_events(conn) == 0


@pytest.mark.parametrize("table", ["token", "webhook", "events", "delivery", "webhook_policy", "organisation"])
async def test_producer_role_cannot_read(conn: asyncpg.Connection, producer: asyncpg.Connection, table: str) -> None:
    """The producer role cannot SELECT tokens, webhooks (secrets), policies (keys), events or deliveries."""
    await make_webhook(conn, "https://example.test/hook")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await producer.fetch(f"SELECT * FROM {table}")


@pytest.mark.parametrize(
    "column, value",
    [
        ("dispatched_at", "now()"),
        ("webhook_id", "$1"),
        ("kind", "'test'"),
        ("delivery_count", "0"),
        ("dispatch_error", "'x'"),
        ("id", "gen_random_uuid()"),
        ("created_at", "now()"),
    ],
)
async def test_producer_role_cannot_set_daemon_columns(
    conn: asyncpg.Connection, producer: asyncpg.Connection, column: str, value: str
) -> None:
    """An INSERT naming a column outside the producer set (dispatch state, targeting, id, kind) is refused,
    and nothing is inserted."""
    webhook_id, _ = await make_webhook(conn, "https://example.test/hook")
    args = [webhook_id] if "$1" in value else []
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await producer.execute(
            f"INSERT INTO events (organisation, type, {column}) VALUES ('acme', 'request.create', {value})", *args
        )
    assert await count_events(conn) == 0


async def test_producer_role_cannot_change_or_delete_events(
    conn: asyncpg.Connection, producer: asyncpg.Connection
) -> None:
    """The producer role cannot UPDATE or DELETE events (e.g. to mark them dispatched) nor change settings."""
    await add_organisation(conn, "acme")
    await conn.execute("INSERT INTO events (organisation, type) VALUES ('acme', 'request.create')")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await producer.execute("UPDATE events SET dispatched_at = now()")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await producer.execute("DELETE FROM events")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await producer.execute("UPDATE dispatcher_settings SET max_payload_bytes = 1000000000")
    assert await conn.fetchval("SELECT count(*) FROM events WHERE dispatched_at IS NULL") == 1


async def test_emit_is_not_open_to_public(conn: asyncpg.Connection, dsn: str) -> None:
    """A login without dispatcher_producer cannot call dispatcher_emit (EXECUTE is revoked from PUBLIC) nor
    insert events."""
    await add_organisation(conn, "acme")
    role = f"stranger_{uuid.uuid4().hex[:16]}"
    await conn.execute(f"CREATE ROLE {role} LOGIN")
    try:
        stranger = await asyncpg.connect(dsn_as(dsn, role))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await stranger.fetchval("SELECT dispatcher_emit('acme', 'request.create')")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await stranger.execute("INSERT INTO events (organisation, type) VALUES ('acme', 'request.create')")
        finally:
            await stranger.close()
    finally:
        await conn.execute(f"DROP ROLE {role}")
    assert await count_events(conn) == 0
