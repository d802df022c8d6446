"""Claims, leases and results against a real PostgreSQL: claim_deliveries, record_results, rescue_leases and
release_owner_leases as the daemon runs them (SPEC §6 "Claims" and "Retries")."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from dispatcher.db import Database, connect_pool
from tests.support.claims import LEASE, SCHEDULE, claim, claim_statement
from tests.support.factories import direct_deliveries, emit_many, make_webhook
from tests.support.waits import wait_leases_expired

pytestmark = pytest.mark.db

URL = "http://127.0.0.1:9/x"
SLACK = timedelta(milliseconds=50)  # float rounding of intervals; clock readings bracket the statement


async def record(
    db: Database, results: list[dict[str, Any]], *, disable_after: int = 20, min_failing_period: float = 3600.0
) -> list[UUID]:
    """Run record_results on a list of results (missing fields filled in, health thresholds as [health]'s
    defaults); returns the ids of the deliveries updated."""
    now = datetime.now(UTC)
    columns: list[list[Any]] = [[] for _ in range(11)]
    for r in results:
        values = (
            r["id"],
            r["token"],
            r["state"],
            r.get("next_attempt_at"),
            r.get("status"),
            r.get("error_class"),
            r.get("error"),
            r.get("started_at", now - timedelta(milliseconds=20)),
            r.get("finished_at", now),
            r.get("duration_ms", 20),
            r.get("response", ""),
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    batch = await db.record_results(
        delivery_ids=columns[0], lease_tokens=columns[1], states=columns[2], next_attempt_ats=columns[3],
        statuses=columns[4], error_classes=columns[5], errors=columns[6], started_ats=columns[7],
        finished_ats=columns[8], durations_ms=columns[9], responses=columns[10],
        disable_after_failures=disable_after, min_failing_seconds=min_failing_period,
    )  # fmt: skip
    return sorted(batch.applied)


async def routed_deliveries(conn: asyncpg.Connection, db: Database, *, webhooks: int, events: int) -> list[int]:
    """`webhooks` webhooks subscribed to request.create and `events` events routed to each (pending, 8 attempts);
    returns the webhook ids."""
    ids = [(await make_webhook(conn, URL, events=["request.create"], name=f"w{i}"))[0] for i in range(webhooks)]
    await emit_many(conn, events)
    routed = await db.route_events(limit=1000, max_attempts=8)
    assert len(routed) == events
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'pending'") == webhooks * events
    return ids


async def delivery(conn: asyncpg.Connection, delivery_id: UUID) -> asyncpg.Record:
    """The delivery row as it is now."""
    row = await conn.fetchrow("SELECT * FROM delivery WHERE id = $1", delivery_id)
    assert row is not None
    return row


async def clock(conn: asyncpg.Connection) -> datetime:
    """The server's clock (readings before and after a statement bracket its now())."""
    value: datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value


# ---- 1. concurrency ------------------------------------------------------------------------------------------


async def test_concurrent_claimers_never_lease_the_same_delivery(
    dsn: str, conn: asyncpg.Connection, db: Database
) -> None:
    """Four claimers on their own connections, claiming at the same moment round after round, lease each of
    2,000 deliveries (20 webhooks x 100) exactly once: no id twice, none left out, fencing tokens unique, each
    row's lease owner is the claimer that got it, and each webhook leased by one claimer only, the webhooks
    shared out among them."""
    await routed_deliveries(conn, db, webhooks=20, events=100)
    everything = {r["id"] for r in await conn.fetch("SELECT id FROM delivery")}
    # Named as workers are, so that each claim takes its share of the webhooks nobody holds yet.
    claimers = [Database(await connect_pool(dsn, 1, application_name=f"dispatcher worker {i}")) for i in range(4)]
    try:
        got: list[tuple[str, UUID, int]] = []
        for _ in range(300):
            rounds = await asyncio.gather(
                *(claim(c, batch=37, per_webhook=1000, owner=f"claimer-{i}") for i, c in enumerate(claimers))
            )
            for i, rows in enumerate(rounds):
                got += [(f"claimer-{i}", r.id, r.lease_token) for r in rows]
            if not await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'pending'"):
                break
    finally:
        for c in claimers:
            await c.close()

    ids = [d for _, d, _ in got]
    duplicates = [d for d, n in Counter(ids).items() if n > 1]
    assert duplicates == [], f"{len(duplicates)} deliveries leased twice"
    assert set(ids) == everything
    assert len({t for _, _, t in got}) == len(got)
    owners = {r["id"]: r["lease_owner"] for r in await conn.fetch("SELECT id, lease_owner FROM delivery")}
    assert all(owners[d] == who for who, d, _ in got)
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'leased' AND attempts = 1") == 2000
    holders = await conn.fetch("SELECT webhook_id, count(DISTINCT lease_owner) AS n FROM delivery GROUP BY 1")
    assert {r["n"] for r in holders} == {1}, "a webhook leased by two claimers"
    assert len({who for who, _, _ in got}) > 1, "one claimer took every webhook"


# ---- 2. the attempt is counted and the retry booked at claim time ---------------------------------------------


async def test_claim_counts_the_attempt_and_books_the_retry(conn: asyncpg.Connection, db: Database) -> None:
    """A claim sets attempts 0 -> 1, state leased, a fencing token, leased_until = now + lease, retry_delay =
    schedule[0] (jitter 0) and next_attempt_at = now + retry_delay; the returned row says the same and carries
    the event and webhook."""
    [webhook_id] = await routed_deliveries(conn, db, webhooks=1, events=1)
    before = await clock(conn)
    [row] = await claim(db, lease=30.0, owner="me")
    after = await clock(conn)

    d = await delivery(conn, row.id)
    assert (d["state"], d["attempts"], d["lease_owner"]) == ("leased", 1, "me")
    assert d["lease_token"] is not None and d["lease_token"] == row.lease_token
    assert before + timedelta(seconds=30) - SLACK <= d["leased_until"] <= after + timedelta(seconds=30) + SLACK
    assert d["retry_delay"] == 5.0
    assert before + timedelta(seconds=5) - SLACK <= d["next_attempt_at"] <= after + timedelta(seconds=5) + SLACK
    assert (row.attempts, row.retry_delay, row.next_attempt_at) == (1, 5.0, d["next_attempt_at"])
    assert (row.webhook_id, row.url, row.type, row.organisation) == (
        webhook_id,
        URL,
        "request.create",
        "acme",
    )
    assert json.loads(row.payload) == {"n": 1}


async def test_claim_draws_the_delay_of_the_attempt_it_counts(conn: asyncpg.Connection, db: Database) -> None:
    """The delay booked is the schedule entry after the attempt being made, the last entry once the schedule runs
    out, and none (NULL, due now) on a delivery's last attempt; a second lease of the same row takes a new,
    larger fencing token."""
    webhook_id, _ = await make_webhook(conn, URL)
    [second] = await direct_deliveries(conn, webhook_id, 1, attempts=1)
    [sixth] = await direct_deliveries(conn, webhook_id, 1, attempts=5)
    [last] = await direct_deliveries(conn, webhook_id, 1, attempts=2, max_attempts=3)
    [only] = await direct_deliveries(conn, webhook_id, 1, max_attempts=1)
    before = await clock(conn)
    rows = {r.id: r for r in await claim(db)}
    after = await clock(conn)

    assert (rows[second].attempts, rows[second].retry_delay) == (2, 300.0)
    assert (rows[sixth].attempts, rows[sixth].retry_delay) == (6, 1800.0)
    for d in (last, only):
        row = await delivery(conn, d)
        assert row["state"] == "leased"
        assert row["attempts"] == row["max_attempts"]
        assert row["retry_delay"] is None and rows[d].retry_delay is None
        assert before - SLACK <= row["next_attempt_at"] <= after + SLACK

    first_token = rows[second].lease_token
    await conn.execute("UPDATE delivery SET state = 'pending', next_attempt_at = now() WHERE id = $1", second)
    [again] = await claim(db)
    assert again.id == second and again.attempts == 3 and again.lease_token > first_token


async def test_a_test_delivery_gets_the_test_lease(conn: asyncpg.Connection, db: Database) -> None:
    """A delivery of kind test is leased for the test lease ($8), an ordinary one for the normal lease ($4)."""
    webhook_id, _ = await make_webhook(conn, URL)
    [test] = await direct_deliveries(conn, webhook_id, 1, kind="test", max_attempts=1)
    [original] = await direct_deliveries(conn, webhook_id, 1)
    before = await clock(conn)
    assert len(await claim(db, lease=100.0, test_lease=20.0)) == 2
    after = await clock(conn)
    for d, seconds in ((test, 20), (original, 100)):
        leased_until = (await delivery(conn, d))["leased_until"]
        assert before + timedelta(seconds=seconds) - SLACK <= leased_until <= after + timedelta(seconds=seconds) + SLACK


async def test_claim_jitters_the_booked_delay_within_bounds(conn: asyncpg.Connection, db: Database) -> None:
    """With jitter 0.2 each booked delay lies within schedule[0] +/- 20 % and the delays are drawn per row."""
    webhook_id, _ = await make_webhook(conn, URL)
    await direct_deliveries(conn, webhook_id, 50)
    rows = await claim(db, jitter=0.2)
    delays = [r.retry_delay for r in rows if r.retry_delay is not None]
    assert len(delays) == 50
    assert all(4.0 - 1e-4 <= d <= 6.0 + 1e-4 for d in delays)
    assert len(set(delays)) > 1


# ---- 3. per-webhook cap and fairness --------------------------------------------------------------------------


async def test_claim_caps_each_webhook_at_its_free_slots(conn: asyncpg.Connection, db: Database) -> None:
    """With per_webhook 3, a webhook with 50 due deliveries gets 3 leased per claim and none more while those
    3 are leased, while another webhook's deliveries come in the same claims; when one lease ends, one slot
    frees."""
    busy, _ = await make_webhook(conn, URL, name="busy")
    other, _ = await make_webhook(conn, URL, name="other")
    await direct_deliveries(conn, busy, 50, due=timedelta(minutes=10))
    await direct_deliveries(conn, other, 2, due=timedelta(minutes=5))

    first = await claim(db, batch=10, per_webhook=3)
    assert Counter(r.webhook_id for r in first) == {busy: 3, other: 2}

    await direct_deliveries(conn, other, 2)
    second = await claim(db, batch=10, per_webhook=3)
    assert Counter(r.webhook_id for r in second) == {other: 1}, "other has 2 leased and 1 free slot"

    done = first[0]
    assert done.webhook_id == busy
    delivered = {"id": done.id, "token": done.lease_token, "state": "delivered", "status": 200}
    assert await record(db, [delivered]) == [done.id]
    third = await claim(db, batch=10, per_webhook=3)
    assert Counter(r.webhook_id for r in third) == {busy: 1}
    leased = dict(await conn.fetch("SELECT webhook_id, count(*) FROM delivery WHERE state = 'leased' GROUP BY 1"))
    assert leased == {busy: 3, other: 3}


async def test_answered_leases_leave_the_cap_but_stay_leased(conn: asyncpg.Connection, db: Database) -> None:
    """Leases the claimer says were answered (results not yet written) free their webhook's slots: with 3 of a
    webhook's 3 leases answered, the next claim leases 3 more; the answered ones stay leased until recorded, and
    the seven-argument claim of daemons before migration 002 still counts every lease."""
    webhook_id, _ = await make_webhook(conn, URL)
    await direct_deliveries(conn, webhook_id, 20)
    first = await claim(db, batch=10, per_webhook=3)
    assert len(first) == 3
    assert len(await claim(db, batch=10, per_webhook=3, answered=[first[0].id])) == 1
    legacy = await conn.fetch("SELECT * FROM dispatcher_claim(10, 4, 30, 'old-daemon', $1::float8[], 0, 30)", SCHEDULE)
    assert legacy == [], "4 leased, cap 4: the old claim counts every lease"
    answered = [r["id"] for r in await conn.fetch("SELECT id FROM delivery WHERE state = 'leased'")]
    assert len(answered) == 4
    again = await claim(db, batch=10, per_webhook=3, answered=answered)
    assert len(again) == 3
    leased = await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'leased'")
    assert leased == 7, "answered leases are not released by a claim"


async def test_a_backlogged_webhook_does_not_starve_a_newer_one(conn: asyncpg.Connection, db: Database) -> None:
    """Webhook A with 1,000 older due deliveries and webhook B with 3 newer ones, claims of 10 with per_webhook
    3: the first claim leases A's 3 slots and all of B; A never has more than 3 leased."""
    a, _ = await make_webhook(conn, URL, name="a")
    b, _ = await make_webhook(conn, URL, name="b")
    await direct_deliveries(conn, a, 1000, due=timedelta(hours=1))
    await direct_deliveries(conn, b, 3, due=timedelta(minutes=1))

    first = await claim(db, batch=10, per_webhook=3)
    assert Counter(r.webhook_id for r in first) == {a: 3, b: 3}
    assert await claim(db, batch=10, per_webhook=3) == []
    leased = dict(await conn.fetch("SELECT webhook_id, count(*) FROM delivery WHERE state = 'leased' GROUP BY 1"))
    assert leased == {a: 3, b: 3}


async def test_a_fast_draining_backlog_does_not_hide_a_newer_webhook(conn: asyncpg.Connection, db: Database) -> None:
    """A's backlog of 1,000 older deliveries drains fast (each claim's results recorded before the next claim):
    B's newer delivery still comes in the very first claim, not after A's backlog."""
    a, _ = await make_webhook(conn, URL, name="a")
    b, _ = await make_webhook(conn, URL, name="b")
    await direct_deliveries(conn, a, 1000, due=timedelta(hours=1))
    [newer] = await direct_deliveries(conn, b, 1, due=timedelta(minutes=1))
    served_at = None
    for n in range(1, 6):
        rows = await claim(db, batch=10, per_webhook=3)
        if any(r.id == newer for r in rows):
            served_at = n
            break
        await record(db, [{"id": r.id, "token": r.lease_token, "state": "delivered", "status": 200} for r in rows])
    assert served_at == 1


async def test_a_webhook_is_leased_by_one_process_at_a_time(conn: asyncpg.Connection, db: Database) -> None:
    """Two claims that overlap in time (the first not yet committed when the second starts, as two daemons'
    claims do) never both lease one webhook: the second skips the webhook the first has locked, at once rather
    than waiting; once the first has committed, another owner leases none of that webhook while the first holds
    leases of it, and the first tops its leases up to p_ahead times the cap."""
    webhook_id, _ = await make_webhook(conn, URL)
    await direct_deliveries(conn, webhook_id, 500)
    async with db.transaction() as first:
        assert len(await claim(first, batch=10, per_webhook=3, owner="first")) == 3
        assert await asyncio.wait_for(claim(db, batch=10, per_webhook=3, owner="second"), 10) == []
    assert await claim(db, batch=10, per_webhook=3, owner="second") == []
    assert len(await claim(db, batch=10, per_webhook=3, ahead=2, owner="first")) == 3
    owners = await conn.fetch("SELECT lease_owner, count(*) FROM delivery WHERE state = 'leased' GROUP BY 1")
    assert [(r["lease_owner"], r["count"]) for r in owners] == [("first", 6)]


async def test_an_open_claim_does_not_hold_up_another_webhooks_claim(conn: asyncpg.Connection, db: Database) -> None:
    """Nothing serialises claims of different webhooks: while one claim of a webhook is still open, another
    owner's claim leases the other webhook's deliveries at once."""
    one, _ = await make_webhook(conn, URL, name="one")
    await direct_deliveries(conn, one, 5)
    other, _ = await make_webhook(conn, URL, name="other")
    await direct_deliveries(conn, other, 5)
    async with db.transaction() as first:
        # A batch of one locks a single webhook: the one whose delivery has waited longest.
        [row] = await claim(first, batch=1, owner="first")
        assert row.webhook_id == one
        second = await asyncio.wait_for(claim(db, batch=10, owner="second"), 10)
        assert {r.webhook_id for r in second} == {other} and len(second) == 5


# ---- 4. rescue ------------------------------------------------------------------------------------------------


async def test_an_expired_lease_is_rescued_to_its_booked_retry(conn: asyncpg.Connection, db: Database) -> None:
    """After a lease runs out, rescue_leases returns the delivery to pending at the retry slot booked at claim
    (attempt still counted, lease cleared, last_error set) and fails one that was on its last attempt; a lease
    still running is left alone."""
    webhook_id, _ = await make_webhook(conn, URL)
    [retry] = await direct_deliveries(conn, webhook_id, 1)
    [last] = await direct_deliveries(conn, webhook_id, 1, attempts=7, max_attempts=8)
    short = await claim(db, lease=0.01)
    assert {r.id for r in short} == {retry, last}
    booked = (await delivery(conn, retry))["next_attempt_at"]
    [running] = await direct_deliveries(conn, webhook_id, 1)
    assert [r.id for r in await claim(db, lease=LEASE)] == [running]
    await wait_leases_expired(conn, [retry, last])

    rescued = {r.id: r.state for r in await db.rescue_leases()}
    assert rescued == {retry: "pending", last: "failed"}

    r = await delivery(conn, retry)
    assert (r["state"], r["attempts"], r["next_attempt_at"]) == ("pending", 1, booked)
    assert r["leased_until"] is None and r["lease_owner"] is None and r["finished_at"] is None
    assert r["last_error"]
    f = await delivery(conn, last)
    assert (f["state"], f["attempts"]) == ("failed", 8)
    assert f["finished_at"] is not None and f["last_error"]
    assert (await delivery(conn, running))["state"] == "leased"
    assert await db.rescue_leases() == []


# ---- 5. fencing -----------------------------------------------------------------------------------------------


async def test_a_stale_fencing_token_is_discarded(conn: asyncpg.Connection, db: Database) -> None:
    """A result carrying the token of an expired, rescued and re-claimed lease is not applied (nothing returned,
    still leased, no attempt row); the current token's result is applied with one attempt row numbered by the
    attempts counted."""
    webhook_id, _ = await make_webhook(conn, URL)
    [d] = await direct_deliveries(conn, webhook_id, 1)
    [old] = await claim(db, lease=0.01, owner="slow")
    await wait_leases_expired(conn, [d])
    assert [r.id for r in await db.rescue_leases()] == [d]
    await conn.execute("UPDATE delivery SET next_attempt_at = now() WHERE id = $1", d)
    [new] = await claim(db, owner="fast")
    assert new.lease_token != old.lease_token

    stale = await record(db, [{"id": d, "token": old.lease_token, "state": "delivered", "status": 200}])
    assert stale == []
    row = await delivery(conn, d)
    assert (row["state"], row["lease_owner"], row["last_status"]) == ("leased", "fast", None)
    assert await conn.fetchval("SELECT count(*) FROM attempt") == 0

    fresh = await record(db, [{"id": d, "token": new.lease_token, "state": "delivered", "status": 200}])
    assert fresh == [d]
    row = await delivery(conn, d)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 2, 200)
    assert [tuple(r) for r in await conn.fetch("SELECT delivery_id, number FROM attempt")] == [(d, 2)]
    assert await record(db, [{"id": d, "token": new.lease_token, "state": "failed", "status": 500}]) == []


async def test_a_result_for_a_rescued_but_unclaimed_delivery_is_discarded(
    conn: asyncpg.Connection, db: Database
) -> None:
    """A late result arriving after its lease was rescued (the delivery pending again) changes nothing."""
    webhook_id, _ = await make_webhook(conn, URL)
    [d] = await direct_deliveries(conn, webhook_id, 1)
    [leased] = await claim(db, lease=0.01)
    await wait_leases_expired(conn, [d])
    await db.rescue_leases()
    assert await record(db, [{"id": d, "token": leased.lease_token, "state": "delivered", "status": 200}]) == []
    assert (await delivery(conn, d))["state"] == "pending"
    assert await conn.fetchval("SELECT count(*) FROM attempt") == 0


# ---- 6. results -----------------------------------------------------------------------------------------------


async def test_record_results_writes_a_batch(conn: asyncpg.Connection, db: Database) -> None:
    """One record_results call applies delivered, pending (at the next_attempt_at given) and failed results:
    states, last status and error, one attempt row each with its details, finished_at only on the finished."""
    webhook_id, _ = await make_webhook(conn, URL)
    ok, retry, dead = await direct_deliveries(conn, webhook_id, 3)
    tokens = {r.id: r.lease_token for r in await claim(db)}
    later = datetime.now(UTC) + timedelta(minutes=7)
    finished = datetime.now(UTC)
    applied = await record(
        db,
        [
            {
                "id": ok,
                "token": tokens[ok],
                "state": "delivered",
                "status": 200,
                "response": "ok",
                "finished_at": finished,
            },
            {
                "id": retry,
                "token": tokens[retry],
                "state": "pending",
                "next_attempt_at": later,
                "status": 503,
                "error_class": "http",
                "error": "503 Service Unavailable",
                "finished_at": finished,
            },
            {
                "id": dead,
                "token": tokens[dead],
                "state": "failed",
                "status": None,
                "error_class": "connect",
                "error": "connection refused",
                "finished_at": finished,
                "duration_ms": 7,
            },
        ],
    )
    assert set(applied) == {ok, retry, dead}

    rows = {d: await delivery(conn, d) for d in (ok, retry, dead)}
    assert {d: r["state"] for d, r in rows.items()} == {ok: "delivered", retry: "pending", dead: "failed"}
    assert rows[ok]["finished_at"] == finished and rows[dead]["finished_at"] == finished
    assert rows[retry]["finished_at"] is None
    assert rows[retry]["next_attempt_at"] == later
    assert (rows[retry]["last_status"], rows[retry]["last_error"]) == (503, "503 Service Unavailable")
    assert (rows[dead]["last_status"], rows[dead]["last_error"]) == (None, "connection refused")
    assert all(r["leased_until"] is None and r["lease_owner"] is None for r in rows.values())
    attempts = {r["delivery_id"]: r for r in await conn.fetch("SELECT * FROM attempt")}
    assert set(attempts) == {ok, retry, dead}
    assert all(a["number"] == 1 and a["finished_at"] == finished for a in attempts.values())
    assert (attempts[ok]["status"], attempts[ok]["response"]) == (200, "ok")
    assert (attempts[dead]["error_class"], attempts[dead]["duration_ms"]) == ("connect", 7)


async def test_a_pending_result_without_a_time_keeps_the_slot_booked_at_claim(
    conn: asyncpg.Connection, db: Database
) -> None:
    """A pending result with no next_attempt_at leaves the delivery due at the retry slot drawn at claim."""
    webhook_id, _ = await make_webhook(conn, URL)
    [d] = await direct_deliveries(conn, webhook_id, 1)
    [row] = await claim(db)
    assert await record(db, [{"id": d, "token": row.lease_token, "state": "pending", "status": 500}]) == [d]
    assert (await delivery(conn, d))["next_attempt_at"] == row.next_attempt_at


async def test_a_410_invalidates_the_webhook_and_a_500_only_records_the_error(
    conn: asyncpg.Connection, db: Database
) -> None:
    """A 410 on an ordinary delivery makes its webhook invalid at once with last_error set; a 500 sets the
    other webhook's last_error but leaves it valid; a delivered result touches neither."""
    gone, _ = await make_webhook(conn, URL, name="gone")
    flaky, _ = await make_webhook(conn, URL, name="flaky")
    fine, _ = await make_webhook(conn, URL, name="fine")
    [g] = await direct_deliveries(conn, gone, 1)
    [f] = await direct_deliveries(conn, flaky, 1)
    [o] = await direct_deliveries(conn, fine, 1)
    tokens = {r.id: r.lease_token for r in await claim(db)}
    applied = await record(
        db,
        [
            {"id": g, "token": tokens[g], "state": "failed", "status": 410, "error": "410 Gone"},
            {"id": f, "token": tokens[f], "state": "pending", "status": 500, "error": "500 Internal Server Error"},
            {"id": o, "token": tokens[o], "state": "delivered", "status": 200},
        ],
    )
    assert set(applied) == {g, f, o}
    hooks = {r["id"]: r for r in await conn.fetch("SELECT id, state, last_error, last_error_at FROM webhook")}
    assert (hooks[gone]["state"], hooks[gone]["last_error"]) == ("invalid", "410 Gone")
    assert hooks[gone]["last_error_at"] is not None
    assert (hooks[flaky]["state"], hooks[flaky]["last_error"]) == ("valid", "500 Internal Server Error")
    assert (hooks[fine]["state"], hooks[fine]["last_error"]) == ("valid", None)


# ---- 7. release -----------------------------------------------------------------------------------------------


async def test_release_owner_leases_returns_only_that_owners_rows(conn: asyncpg.Connection, db: Database) -> None:
    """release_owner_leases(owner) makes that owner's leased deliveries pending and due now, lease cleared,
    and leaves another owner's leases as they were."""
    leaving_webhook, _ = await make_webhook(conn, URL, name="leaving")
    await direct_deliveries(conn, leaving_webhook, 4)
    mine = {r.id for r in await claim(db, owner="leaving")}
    staying_webhook, _ = await make_webhook(conn, URL, name="staying")
    await direct_deliveries(conn, staying_webhook, 2)
    theirs = {r.id for r in await claim(db, owner="staying")}
    assert len(mine) == 4 and len(theirs) == 2
    before = await clock(conn)
    released = set(await db.release_owner_leases(owner="leaving"))
    after = await clock(conn)
    assert released == mine
    for d in mine:
        row = await delivery(conn, d)
        assert row["state"] == "pending" and row["leased_until"] is None and row["lease_owner"] is None
        assert before <= row["next_attempt_at"] <= after
    for d in theirs:
        row = await delivery(conn, d)
        assert (row["state"], row["lease_owner"]) == ("leased", "staying")
    assert {r.id for r in await claim(db, owner="next")} == mine


# ---- 8. off the claim path ------------------------------------------------------------------------------------


async def test_only_due_pending_rows_are_claimed(conn: asyncpg.Connection, db: Database) -> None:
    """Held, delivered, failed and cancelled rows, leases (even expired ones not yet rescued) and pending rows
    not yet due are never claimed, however old their next_attempt_at; a due pending row is."""
    webhook_id, _ = await make_webhook(conn, URL)
    for state in ("held", "delivered", "failed", "cancelled"):
        await direct_deliveries(conn, webhook_id, 3, state=state, due=timedelta(days=1))
    await direct_deliveries(conn, webhook_id, 2, due=-timedelta(minutes=1))
    [expired] = await direct_deliveries(conn, webhook_id, 1, due=timedelta(days=1))
    assert [r.id for r in await claim(db, lease=0.01)] == [expired]
    await wait_leases_expired(conn, [expired])
    assert await claim(db) == []
    [due] = await direct_deliveries(conn, webhook_id, 1)
    assert [r.id for r in await claim(db)] == [due]
    assert (await delivery(conn, expired))["attempts"] == 1
    states = dict(await conn.fetch("SELECT state, count(*) FROM delivery WHERE attempts = 0 GROUP BY 1"))
    assert states == {"held": 3, "delivered": 3, "failed": 3, "cancelled": 3, "pending": 2}


# ---- 9. the plan ----------------------------------------------------------------------------------------------


async def test_claim_plan_uses_the_partial_due_index(conn: asyncpg.Connection, db: Database) -> None:
    """With 20,000 held and finished rows and a few due pending ones, the analysed claim statement reads
    pending rows through the partial index delivery_due rather than scanning the table."""
    webhook_id, _ = await make_webhook(conn, URL)
    for state in ("held", "delivered"):
        await direct_deliveries(conn, webhook_id, 10_000, state=state, due=timedelta(days=1))
    await direct_deliveries(conn, webhook_id, 5)
    await conn.execute("ANALYZE")
    sql = await claim_statement(conn)
    plan = await conn.fetchval(
        "EXPLAIN (FORMAT JSON) " + sql, 10, 3, 1, LEASE, "owner", SCHEDULE, 0.0, LEASE, [], [], [webhook_id]
    )
    assert "delivery_due" in plan, plan
    nodes = [n for n in _plan_nodes(json.loads(plan)[0]["Plan"]) if n.get("Relation Name") == "delivery"]
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan" and "Filter" in n and "pending" in n["Filter"]], (
        "pending rows found by a sequential scan"
    )
    assert len(await claim(db, batch=10, per_webhook=10)) == 5


async def test_claims_do_not_revisit_leases_finished_since_the_last_vacuum(
    conn: asyncpg.Connection, db: Database
) -> None:
    """20,000 deliveries leased and then delivered leave 20,000 dead entries in delivery_leased until VACUUM.
    Once one claim has met them, the next claim reads under 600 buffers (about 330): the lease count skips the
    entries it knows are dead, instead of fetching every heap page they point to on every claim (which is what
    the bitmap scan PostgreSQL chose did: about 1,000 buffers here, and growing with every finished lease)."""
    webhook_id, _ = await make_webhook(conn, URL)
    await conn.execute("ALTER TABLE delivery SET (autovacuum_enabled = off)")
    finished = await direct_deliveries(conn, webhook_id, 20_000, due=timedelta(minutes=1))
    await conn.execute(
        "UPDATE delivery SET state = 'leased', lease_token = 1, leased_until = now() + interval '1 minute'"
        " WHERE id = ANY($1::uuid[])",
        finished,
    )
    await conn.execute(
        "UPDATE delivery SET state = 'delivered', leased_until = NULL WHERE id = ANY($1::uuid[])", finished
    )
    await direct_deliveries(conn, webhook_id, 20)  # no ANALYZE: as in a drain, between autovacuum's visits

    async def buffers_of_a_claim() -> int:
        plan = await conn.fetchval(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)"
            " SELECT * FROM dispatcher_claim_owned($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            5, 1000, 1, LEASE, "owner-a", SCHEDULE, 0.0, LEASE, [], [],
        )  # fmt: skip
        top = json.loads(plan)[0]["Plan"]
        assert top["Actual Rows"] == 5
        return int(top["Shared Hit Blocks"] + top["Shared Read Blocks"])

    await buffers_of_a_claim()  # meets the dead entries first
    assert await buffers_of_a_claim() < 600


def _plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A plan node and all nodes below it."""
    out = [node]
    for child in node.get("Plans", []):
        out += _plan_nodes(child)
    return out


async def test_deliveries_of_deactivated_or_deleted_webhooks_are_not_claimed(
    conn: asyncpg.Connection, db: Database
) -> None:
    """A pending delivery of a webhook deactivated or deleted while it was in flight is not claimed again (tests
    still are), and maintenance's cancel_strays cancels it."""
    gone, _ = await make_webhook(conn, URL, name="gone")
    off, _ = await make_webhook(conn, URL, name="off")
    [for_gone] = await direct_deliveries(conn, gone, 1)
    [for_off] = await direct_deliveries(conn, off, 1)
    [test] = await direct_deliveries(conn, off, 1, kind="test")
    await conn.execute("UPDATE webhook SET deleted_at = now() WHERE id = $1", gone)
    await conn.execute("UPDATE webhook SET state = 'deactivated' WHERE id = $1", off)
    assert [r.id for r in await claim(db)] == [test]
    cancelled = set(await db.cancel_strays())
    assert cancelled == {for_gone, for_off}
