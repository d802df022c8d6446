"""Routing (SPEC §5): the route_events statement turns new events into deliveries (patterns, key bindings, the
organisation default, targeted tests, held and excluded webhooks), and the Router sets aside an event whose
routing fails without blocking the others."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from dispatcher.db import Database
from dispatcher.db.rows import RoutedRow
from dispatcher.fanout import Router
from tests.support.factories import emit_many, make_webhook

pytestmark = pytest.mark.db

MAX_ATTEMPTS = 8
URL = "https://example.test/hook"


# ---- helpers ---------------------------------------------------------------------------------------------------


async def route(
    db: Database, limit: int = 100, event_id: uuid.UUID | None = None, max_attempts: int = MAX_ATTEMPTS
) -> list[RoutedRow]:
    """Run the daemon's routing statement once."""
    return await db.route_events(limit=limit, max_attempts=max_attempts, event_id=event_id)


async def emit(
    conn: asyncpg.Connection,
    type: str = "request.create",
    *,
    organisation: str = "acme",
    key_id: int | None = None,
    webhook_id: int | None = None,
    kind: str = "event",
) -> uuid.UUID:
    """Insert one event (as a producer would, plus the targeting columns the API sets); returns its id."""
    event_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO events (organisation, type, key_id, webhook_id, kind) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        organisation,
        type,
        key_id,
        webhook_id,
        kind,
    )
    return event_id


async def webhook(
    conn: asyncpg.Connection,
    events: list[str] | None = None,
    *,
    organisation: str = "acme",
    state: str = "valid",
    paused: bool = False,
    deleted: bool = False,
) -> int:
    """A webhook of `organisation` with subscription patterns `events`; returns its id."""
    webhook_id, _ = await make_webhook(conn, URL, organisation=organisation, events=events, state=state)
    if paused or deleted:
        await conn.execute(
            "UPDATE webhook SET paused = $2, deleted_at = CASE WHEN $3 THEN clock_timestamp() END WHERE id = $1",
            webhook_id,
            paused,
            deleted,
        )
    return webhook_id


async def set_default(conn: asyncpg.Connection, webhook_id: int | None, organisation: str = "acme") -> None:
    await conn.execute("UPDATE organisation SET default_webhook_id = $1 WHERE id = $2", webhook_id, organisation)


async def token(conn: asyncpg.Connection, webhook_id: int | None = None, organisation: str = "acme") -> int:
    """A producer token (random digest), bound to `webhook_id` when given; returns its id."""
    await conn.execute("INSERT INTO organisation (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", organisation)
    token_id: int = await conn.fetchval(
        "INSERT INTO token (organisation, role, digest, name, webhook_id)"
        " VALUES ($1, 'producer', decode(md5(random()::text), 'hex'), 'producer', $2) RETURNING id",
        organisation,
        webhook_id,
    )
    return token_id


async def targets(conn: asyncpg.Connection, event_id: uuid.UUID) -> list[int]:
    """The webhook ids of the event's deliveries, sorted, repeats kept (so a duplicate delivery shows)."""
    rows = await conn.fetch("SELECT webhook_id FROM delivery WHERE event_id = $1 ORDER BY webhook_id", event_id)
    return [row["webhook_id"] for row in rows]


async def delivery(conn: asyncpg.Connection, event_id: uuid.UUID) -> asyncpg.Record:
    """The event's only delivery."""
    rows = await conn.fetch("SELECT * FROM delivery WHERE event_id = $1", event_id)
    assert len(rows) == 1, rows
    return rows[0]


async def event_row(conn: asyncpg.Connection, event_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM events WHERE id = $1", event_id)
    assert row is not None
    return row


def counts(rows: list[RoutedRow]) -> dict[uuid.UUID, int]:
    """route_events' returned rows as event id -> delivery count."""
    return {row.id: row.delivery_count for row in rows}


# ---- patterns ----------------------------------------------------------------------------------------------------


async def test_exact_pattern(conn: asyncpg.Connection, db: Database) -> None:
    """An exact pattern routes only that type: one original, pending delivery with the given max_attempts; the
    event is marked dispatched with its delivery count and returned with its organisation and type."""
    exact = await webhook(conn, ["request.create"])
    other = await webhook(conn, ["request.update"])
    await webhook(conn, [])  # a ricloud-style config: no patterns, reached only through rule 2
    event = await emit(conn, "request.create")
    rows = await route(db, max_attempts=5)
    assert [(r.id, r.organisation, r.type, r.delivery_count) for r in rows] == [(event, "acme", "request.create", 1)]
    d = await delivery(conn, event)
    assert (d["webhook_id"], d["kind"], d["state"], d["max_attempts"], d["attempts"]) == (
        exact,
        "original",
        "pending",
        5,
        0,
    )
    assert d["held_since"] is None
    assert other not in await targets(conn, event)
    row = await event_row(conn, event)
    assert row["dispatched_at"] is not None and row["delivery_count"] == 1 and row["dispatch_error"] is None


async def test_prefix_pattern(conn: asyncpg.Connection, db: Database) -> None:
    """`request.*` matches every type starting with `request.` (request.create,
    request.agile-board-column-changed) but not requests.x, a bare `request`, nor problem.create; a prefix
    pattern also spans several segments (customer.* matches customer.subscription.created); `request*` (no
    dot) is not a prefix pattern."""
    await conn.execute(
        "INSERT INTO event_type (name, source) VALUES"
        " ('requests.x', 'api'), ('request', 'api'), ('customer.subscription.created', 'api')"
    )
    prefix = await webhook(conn, ["request.*"])
    customer = await webhook(conn, ["customer.*"])
    starless = await webhook(conn, ["request*"])
    expected = {
        "request.create": [prefix],
        "request.agile-board-column-changed": [prefix],
        "requests.x": [],
        "request": [],
        "problem.create": [],
        "customer.subscription.created": [customer],
    }
    events = {type: await emit(conn, type) for type in expected}
    rows = await route(db)
    assert len(rows) == len(expected)
    for type, event in events.items():
        assert await targets(conn, event) == expected[type], type
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE webhook_id = $1", starless) == 0


async def test_star_matches_every_type(conn: asyncpg.Connection, db: Database) -> None:
    """`*` matches every type of the organisation, R-Service/4me and ricloud types alike."""
    star = await webhook(conn, ["*"])
    types = ["automation_rule", "request.create", "problem.note-added", "task.created", "session.expired"]
    events = [await emit(conn, type) for type in types]
    rows = await route(db)
    assert counts(rows) == {event: 1 for event in events}
    for event in events:
        assert await targets(conn, event) == [star]


async def test_every_matching_webhook_gets_one_delivery(conn: asyncpg.Connection, db: Database) -> None:
    """An event goes to every webhook whose patterns match (the union), not just the first."""
    hooks = [await webhook(conn, patterns) for patterns in (["request.create"], ["request.*"], ["*"])]
    await webhook(conn, ["problem.*"])
    event = await emit(conn, "request.create")
    assert counts(await route(db)) == {event: 3}
    assert await targets(conn, event) == sorted(hooks)


async def test_a_webhook_reached_several_ways_gets_one_delivery(conn: asyncpg.Connection, db: Database) -> None:
    """A webhook matched by several patterns that is also the organisation default and bound to the event's
    key gets exactly one delivery."""
    hook = await webhook(conn, ["request.create", "request.*", "*"])
    await set_default(conn, hook)
    key = await token(conn, hook)
    unkeyed = await emit(conn, "request.create")
    keyed = await emit(conn, "request.create", key_id=key)
    assert counts(await route(db)) == {unkeyed: 1, keyed: 1}
    assert await targets(conn, unkeyed) == [hook]
    assert await targets(conn, keyed) == [hook]


# ---- key binding and the organisation default --------------------------------------------------------------------


async def test_key_binding_wins_over_the_default(conn: asyncpg.Connection, db: Database) -> None:
    """An event whose key is bound to a webhook goes to that webhook and not to the organisation default; a key
    that is not bound, or no key, falls back to the default. Pattern matches are added either way."""
    default = await webhook(conn, [])
    bound = await webhook(conn, [])
    subscriber = await webhook(conn, ["request.*"])
    await set_default(conn, default)
    bound_key = await token(conn, bound)
    unbound_key = await token(conn)
    via_bound = await emit(conn, "request.create", key_id=bound_key)
    via_unbound = await emit(conn, "request.create", key_id=unbound_key)
    without_key = await emit(conn, "request.create")
    other_type = await emit(conn, "problem.create", key_id=bound_key)
    assert counts(await route(db)) == {via_bound: 2, via_unbound: 2, without_key: 2, other_type: 1}
    assert await targets(conn, via_bound) == sorted([bound, subscriber])
    assert await targets(conn, via_unbound) == sorted([default, subscriber])
    assert await targets(conn, without_key) == sorted([default, subscriber])
    assert await targets(conn, other_type) == [bound]


async def test_no_default_and_no_binding_routes_by_patterns_only(conn: asyncpg.Connection, db: Database) -> None:
    """Without a default webhook and an unbound key, only pattern matches receive the event; webhooks without
    patterns get nothing."""
    await webhook(conn, [])
    subscriber = await webhook(conn, ["request.create"])
    key = await token(conn)
    event = await emit(conn, "request.create", key_id=key)
    assert counts(await route(db)) == {event: 1}
    assert await targets(conn, event) == [subscriber]


async def test_other_organisations_webhooks_never_match(conn: asyncpg.Connection, db: Database) -> None:
    """Another organisation's webhooks (with `*`, as its default, bound to its key) receive none of this
    organisation's events, and vice versa."""
    ours = await webhook(conn, ["request.create"])
    theirs = await webhook(conn, ["*"], organisation="globex")
    their_default = await webhook(conn, [], organisation="globex")
    await set_default(conn, their_default, "globex")
    their_key = await token(conn, theirs, organisation="globex")
    our_event = await emit(conn, "request.create")
    their_keyed = await emit(conn, "request.create", organisation="globex", key_id=their_key)
    their_unkeyed = await emit(conn, "request.create", organisation="globex")
    assert counts(await route(db)) == {our_event: 1, their_keyed: 1, their_unkeyed: 2}
    assert await targets(conn, our_event) == [ours]
    assert await targets(conn, their_keyed) == [theirs]
    assert await targets(conn, their_unkeyed) == sorted([theirs, their_default])


# ---- webhook states ----------------------------------------------------------------------------------------------


async def test_deactivated_webhooks_receive_nothing(conn: asyncpg.Connection, db: Database) -> None:
    """A deactivated webhook gets no delivery through its patterns, as the organisation default or through a
    key binding; an event reaching only such webhooks is dispatched with zero deliveries."""
    hook = await webhook(conn, ["*"], state="deactivated")
    default = await webhook(conn, ["*"], state="deactivated")
    await set_default(conn, default)
    key = await token(conn, hook)
    keyed = await emit(conn, "request.create", key_id=key)
    unkeyed = await emit(conn, "request.create")
    assert counts(await route(db)) == {keyed: 0, unkeyed: 0}
    assert await conn.fetchval("SELECT count(*) FROM delivery") == 0


async def test_deleted_webhooks_receive_nothing(conn: asyncpg.Connection, db: Database) -> None:
    """A deleted webhook (deleted_at set) gets no delivery through its patterns, as the default or through a
    key binding, while a live webhook with the same pattern does."""
    deleted = await webhook(conn, ["*"], deleted=True)
    live = await webhook(conn, ["request.create"])
    await set_default(conn, deleted)
    key = await token(conn, deleted)
    keyed = await emit(conn, "request.create", key_id=key)
    unkeyed = await emit(conn, "request.create")
    assert counts(await route(db)) == {keyed: 1, unkeyed: 1}
    assert await targets(conn, keyed) == [live]
    assert await targets(conn, unkeyed) == [live]


@pytest.mark.parametrize("via", ["pattern", "default", "key"])
@pytest.mark.parametrize(
    "state, paused, expected",
    [
        ("new", False, "pending"),
        ("valid", False, "pending"),
        ("invalid", False, "held"),
        ("new", True, "held"),
        ("valid", True, "held"),
        ("invalid", True, "held"),
    ],
)
async def test_invalid_or_paused_webhooks_get_held_deliveries(
    conn: asyncpg.Connection, db: Database, via: str, state: str, paused: bool, expected: str
) -> None:
    """New and valid webhooks get pending deliveries; invalid or paused ones get held deliveries with
    held_since set at routing time, whichever way (pattern, default, key binding) they were reached."""
    hook = await webhook(conn, ["request.create"] if via == "pattern" else [], state=state, paused=paused)
    key = None
    if via == "default":
        await set_default(conn, hook)
    elif via == "key":
        key = await token(conn, hook)
    event = await emit(conn, "request.create", key_id=key)
    before = await conn.fetchval("SELECT clock_timestamp()")
    assert counts(await route(db)) == {event: 1}
    after = await conn.fetchval("SELECT clock_timestamp()")
    d = await delivery(conn, event)
    assert (d["webhook_id"], d["state"], d["kind"], d["max_attempts"]) == (hook, expected, "original", MAX_ATTEMPTS)
    if expected == "held":
        assert d["held_since"] is not None and before <= d["held_since"] <= after
    else:
        assert d["held_since"] is None


# ---- targeted events ---------------------------------------------------------------------------------------------


async def test_targeted_test_event_goes_to_its_webhook_only(conn: asyncpg.Connection, db: Database) -> None:
    """A targeted event (webhook_id set, kind test) goes to that webhook only, as a 'test' delivery with one
    attempt, even when other webhooks match its type, it is the default's organisation, and its key is bound
    elsewhere."""
    target = await webhook(conn, [])
    star = await webhook(conn, ["*"])
    exact = await webhook(conn, ["webhook.test"])
    await set_default(conn, star)
    key = await token(conn, exact)
    event = await emit(conn, "webhook.test", webhook_id=target, kind="test", key_id=key)
    rows = await route(db)
    assert counts(rows) == {event: 1}
    d = await delivery(conn, event)
    assert (d["webhook_id"], d["kind"], d["state"], d["max_attempts"]) == (target, "test", "pending", 1)


@pytest.mark.parametrize("state", ["new", "invalid", "deactivated"])
async def test_tests_are_sent_whatever_the_webhook_state(conn: asyncpg.Connection, db: Database, state: str) -> None:
    """A test of a new, invalid or deactivated webhook is a pending delivery (SPEC §7: a test is how such a
    webhook becomes valid again, and a deactivated webhook's test is sent and recorded)."""
    target = await webhook(conn, ["*"], state=state)
    event = await emit(conn, "webhook.test", webhook_id=target, kind="test")
    assert counts(await route(db)) == {event: 1}
    d = await delivery(conn, event)
    assert (d["webhook_id"], d["kind"], d["state"], d["max_attempts"]) == (target, "test", "pending", 1)


async def test_targeted_event_to_a_deleted_webhook_is_routed_to_nobody(conn: asyncpg.Connection, db: Database) -> None:
    """A test of a webhook deleted before routing makes no delivery (and nothing else instead)."""
    target = await webhook(conn, [], deleted=True)
    await webhook(conn, ["*"])
    event = await emit(conn, "webhook.test", webhook_id=target, kind="test")
    assert counts(await route(db)) == {event: 0}
    assert await conn.fetchval("SELECT count(*) FROM delivery") == 0


# ---- dispatch bookkeeping ----------------------------------------------------------------------------------------


async def test_event_routed_to_nobody_is_marked_dispatched(conn: asyncpg.Connection, db: Database) -> None:
    """An event no webhook wants is marked dispatched with delivery_count 0 (no error) and stays in the table."""
    await webhook(conn, ["problem.*"])
    event = await emit(conn, "request.create")
    rows = await route(db)
    assert [(r.id, r.delivery_count) for r in rows] == [(event, 0)]
    row = await event_row(conn, event)
    assert row["dispatched_at"] is not None
    assert row["delivery_count"] == 0
    assert row["dispatch_error"] is None
    assert await conn.fetchval("SELECT count(*) FROM delivery") == 0


async def test_routing_is_idempotent(conn: asyncpg.Connection, db: Database) -> None:
    """A second call routes nothing more and leaves deliveries and dispatch times as they were; asking for an
    already routed event by id does nothing either; a later event is routed on its own."""
    await webhook(conn, ["*"])
    first = await emit(conn, "request.create")
    assert counts(await route(db)) == {first: 1}
    dispatched_at = (await event_row(conn, first))["dispatched_at"]
    assert await route(db) == []
    assert await route(db, event_id=first) == []
    assert await conn.fetchval("SELECT count(*) FROM delivery") == 1
    assert (await event_row(conn, first))["dispatched_at"] == dispatched_at
    later = await emit(conn, "request.create")
    assert counts(await route(db)) == {later: 1}
    assert await conn.fetchval("SELECT count(*) FROM delivery") == 2


async def test_limit_takes_the_oldest_events_first(conn: asyncpg.Connection, db: Database) -> None:
    """The limit bounds the events taken per call, oldest (smallest UUIDv7) first; the rest wait undispatched
    for the next call."""
    await webhook(conn, ["*"])
    events = []
    for _ in range(5):
        events.append(await emit(conn, "request.create"))
        await asyncio.sleep(0.002)
    assert sorted(counts(await route(db, limit=2))) == events[:2]
    assert await conn.fetchval("SELECT count(*) FROM events WHERE dispatched_at IS NULL") == 3
    assert sorted(counts(await route(db, limit=2))) == events[2:4]
    assert sorted(counts(await route(db, limit=2))) == events[4:]


async def test_single_event_argument_routes_only_that_event(conn: asyncpg.Connection, db: Database) -> None:
    """With an event id, route_events routes that event only, even when older events are waiting."""
    await webhook(conn, ["*"])
    older = await emit(conn, "request.create")
    chosen = await emit(conn, "request.create")
    assert counts(await route(db, event_id=chosen)) == {chosen: 1}
    assert (await event_row(conn, older))["dispatched_at"] is None
    assert await targets(conn, older) == []


async def test_a_batch_is_one_statement(conn: asyncpg.Connection, db: Database) -> None:
    """A burst of 250 events is routed in three statements of up to 100, one delivery per event."""
    hook = await webhook(conn, ["*"])
    await emit_many(conn, 250)
    sizes = []
    while rows := await route(db):
        assert all(r.delivery_count == 1 for r in rows)
        sizes.append(len(rows))
    assert sizes == [100, 100, 50]
    assert db.round_trips == 4
    assert (
        await conn.fetchval(
            "SELECT count(DISTINCT event_id) FROM delivery WHERE webhook_id = $1 AND kind = 'original'", hook
        )
        == 250
    )


async def test_concurrent_routers_route_each_event_once(dsn: str, conn: asyncpg.Connection) -> None:
    """Four routing loops racing on the same queue (as several daemons would) return each event exactly once
    and make exactly one delivery per event and webhook."""
    first = await webhook(conn, ["*"])
    second = await webhook(conn, ["request.*"])
    await emit_many(conn, 2000)
    pools = [Database(await asyncpg.create_pool(dsn, min_size=1, max_size=1)) for _ in range(4)]

    async def loop(database: Database) -> list[uuid.UUID]:
        seen: list[uuid.UUID] = []
        while rows := await database.route_events(limit=50, max_attempts=MAX_ATTEMPTS):
            seen += [r.id for r in rows]
            assert all(r.delivery_count == 2 for r in rows)
        return seen

    try:
        results = await asyncio.gather(*(loop(d) for d in pools))
    finally:
        for d in pools:
            await d.close()
    routed = [event for result in results for event in result]
    assert len(routed) == 2000
    assert len(set(routed)) == 2000
    per_webhook = {
        r["webhook_id"]: r["count"]
        for r in await conn.fetch("SELECT webhook_id, count(*) FROM delivery GROUP BY webhook_id")
    }
    assert per_webhook == {first: 2000, second: 2000}


# ---- per-event isolation -----------------------------------------------------------------------------------------


POISON = """
CREATE TABLE poison (event_id uuid PRIMARY KEY);
CREATE FUNCTION refuse_poisoned_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM poison WHERE event_id = NEW.event_id) THEN
        RAISE EXCEPTION 'delivery for event % refused by the test', NEW.event_id;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER refuse_poisoned_delivery BEFORE INSERT ON delivery
    FOR EACH ROW EXECUTE FUNCTION refuse_poisoned_delivery();
"""


def make_router(db: Database, batch_size: int = 100) -> tuple[Router, asyncio.Event]:
    """A Router as the daemon builds it; returns it with its `routed` event (set when deliveries were made)."""
    routed = asyncio.Event()
    router = Router(db, batch_size=batch_size, max_attempts=MAX_ATTEMPTS, wake=asyncio.Event(), routed=routed)
    return router, routed


async def test_router_routes_a_clean_batch_in_one_statement(conn: asyncpg.Connection, db: Database) -> None:
    """Without failures, route_batch routes the whole batch with one statement and rings `routed`."""
    await webhook(conn, ["*"])
    await emit_many(conn, 30)
    router, routed = make_router(db)
    assert await router.route_batch() == 30
    assert db.round_trips == 1
    assert router.events_routed == 30
    assert routed.is_set()
    assert await conn.fetchval("SELECT count(*) FROM delivery") == 30


async def test_one_bad_event_never_blocks_the_others(conn: asyncpg.Connection, db: Database) -> None:
    """When routing one event fails (here a trigger refuses its delivery), route_batch still routes every other
    event of the batch, and sets the bad one aside: dispatched, delivery_count 0, dispatch_error saying why,
    no delivery; the next batch finds nothing left."""
    hook = await webhook(conn, ["*"])
    events = []
    for n in range(5):
        events.append(await emit(conn, "request.create" if n % 2 else "problem.create"))
    bad = events[2]
    await conn.execute(POISON)
    await conn.execute("INSERT INTO poison VALUES ($1)", bad)
    router, routed = make_router(db)
    assert await router.route_batch() == 5
    assert router.events_routed == 4
    assert routed.is_set()
    for event in events:
        row = await event_row(conn, event)
        assert row["dispatched_at"] is not None, event
        if event == bad:
            assert row["delivery_count"] == 0
            assert row["dispatch_error"] is not None and "refused by the test" in row["dispatch_error"]
            assert await targets(conn, event) == []
        else:
            assert row["delivery_count"] == 1 and row["dispatch_error"] is None
            assert await targets(conn, event) == [hook]
    assert await router.route_batch() == 0


async def test_bad_event_beyond_the_first_batch_is_set_aside_in_its_turn(
    conn: asyncpg.Connection, db: Database
) -> None:
    """With a batch smaller than the queue, batches before the bad event route normally, the batch holding it
    routes its other events, and later batches go on; every event ends dispatched."""
    await webhook(conn, ["*"])
    events = []
    for _ in range(7):
        events.append(await emit(conn, "request.create"))
        await asyncio.sleep(0.002)
    bad = events[4]
    await conn.execute(POISON)
    await conn.execute("INSERT INTO poison VALUES ($1)", bad)
    router, _ = make_router(db, batch_size=3)
    taken = [await router.route_batch() for _ in range(4)]
    assert taken == [3, 3, 1, 0]
    assert router.events_routed == 6
    rows = await conn.fetch("SELECT id, delivery_count, dispatch_error FROM events ORDER BY id")
    assert [r["id"] for r in rows] == events
    assert [r["delivery_count"] for r in rows] == [1, 1, 1, 1, 0, 1, 1]
    assert [r["dispatch_error"] is not None for r in rows] == [False] * 4 + [True] + [False] * 2
