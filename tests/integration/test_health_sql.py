"""Webhook health at the SQL level (SPEC §7 and the mail of §9): test tasks (coalescing, supersession, versions,
the 60 s expiry), the failure streak of record_results, probes, the ramped release, max_hold, delete, the claim
plan under a dead webhook's backlog, and failure mail throttled on a clock the test controls."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from dispatcher.config import load_config
from dispatcher.db import Database
from dispatcher.db.rows import ClaimRow, RoutedRow, TaskRow, WebhookOutcome
from dispatcher.maintenance import Maintenance
from dispatcher.resources import Context, NotFound, Scope, tasks, webhooks
from dispatcher.tokens import new_token
from dispatcher.vocab import Role
from tests.support.claims import claim, claim_statement
from tests.support.daemon import write_config
from tests.support.factories import direct_deliveries, insert_held, make_webhook

pytestmark = pytest.mark.db

URL = "http://127.0.0.1:9/hook"
ORG = "acme"
SCOPE = Scope(ORG, Role.ADMIN)

# The streak rules hold for new and valid webhooks alike; `valid` shows the reset bug.
STREAK_STATES = ["new", "valid"]


# ---- helpers ---------------------------------------------------------------------------------------------------


def context(db: Database) -> Context:
    """What the operators' operations run with: this test's database, and a configuration whose SSRF guard lets
    the loopback URLs of these tests through."""
    return Context(db, load_config(environ={"DISPATCHER_DELIVERY__ALLOW_NETWORKS": '["127.0.0.0/8"]'}))


def result(
    row: ClaimRow, status: int | None, *, state: str | None = None, finished_at: datetime | None = None
) -> dict[str, Any]:
    """The result of an attempt at claimed `row` answered with `status` (None: connection refused). The
    delivery's next state is what the daemon would write: delivered on 2xx, else failed for a test and
    pending for anything else (unless `state` says otherwise)."""
    delivered = status is not None and 200 <= status <= 299
    if state is None:
        state = "delivered" if delivered else "failed" if row.kind == "test" else "pending"
    if delivered:
        error = None
    elif status is None:
        error = "connection refused"
    else:
        error = f"{status} {HTTPStatus(status).phrase}"
    finished = finished_at or datetime.now(UTC)
    return {
        "id": row.id,
        "token": row.lease_token,
        "state": state,
        "status": status,
        "error": error,
        "error_class": None if delivered else "http_status",
        "started_at": finished - timedelta(milliseconds=20),
        "finished_at": finished,
    }


async def record(
    db: Database, results: list[dict[str, Any]], *, disable_after: int = 3, min_failing_period: float = 0.0
) -> list[WebhookOutcome]:
    """Run record_results as the recorder does; returns its webhook rows (state changes and new failures)."""
    keys = ("id", "token", "state", "next_attempt_at", "status", "error_class", "error", "started_at",
            "finished_at", "duration_ms", "response")  # fmt: skip
    defaults = {"next_attempt_at": None, "duration_ms": 20, "response": ""}
    columns: list[list[Any]] = [[r.get(k, defaults.get(k)) for r in results] for k in keys]
    batch = await db.record_results(
        delivery_ids=columns[0], lease_tokens=columns[1], states=columns[2], next_attempt_ats=columns[3],
        statuses=columns[4], error_classes=columns[5], errors=columns[6], started_ats=columns[7],
        finished_ats=columns[8], durations_ms=columns[9], responses=columns[10],
        disable_after_failures=disable_after, min_failing_seconds=min_failing_period,
    )  # fmt: skip
    assert len(batch.applied) == len(results), "a result was discarded"
    return list(batch.webhooks)


async def route(db: Database) -> list[RoutedRow]:
    """The daemon's routing statement once (4 attempts for an original)."""
    return await db.route_events(limit=1000, max_attempts=4)


async def webhook_row(conn: asyncpg.Connection, webhook_id: int) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM webhook WHERE id = $1", webhook_id)
    assert row is not None
    return row


async def task_row(conn: asyncpg.Connection, task_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM task WHERE id = $1", task_id)
    assert row is not None
    return row


async def claim_test_of(db: Database, task: TaskRow) -> ClaimRow:
    """Route everything, then lease the test delivery of `task` (and only it)."""
    await route(db)
    rows = [r for r in await claim(db) if r.event_id == task.event_id]
    assert len(rows) == 1, "the test delivery was not claimable"
    return rows[0]


# ---- tests: coalescing, supersession, versions, expiry --------------------------------------------------------


async def test_a_test_asked_for_while_one_is_pending_is_that_one(conn: asyncpg.Connection, db: Database) -> None:
    """request_test twice, and then five times at once on separate connections, while a test is pending
    returns the same task every time; one task, one test event (targeted, kind test) exist."""
    webhook_id, _ = await make_webhook(conn, URL, events=["request.create"], state="new")
    first = await tasks.request_test(context(db), SCOPE, webhook_id)
    second = await tasks.request_test(context(db), SCOPE, webhook_id)
    assert second.id == first.id
    assert first.state == "pending" and first.webhook_version == 1
    together = await asyncio.gather(*(tasks.request_test(context(db), SCOPE, webhook_id) for _ in range(5)))
    assert {t.id for t in together} == {first.id}
    assert await conn.fetchval("SELECT count(*) FROM task") == 1
    event = await conn.fetchrow("SELECT * FROM events")
    assert (event["id"], event["kind"], event["webhook_id"]) == (first.event_id, "test", webhook_id)


async def test_a_test_of_an_unknown_webhook_raises(conn: asyncpg.Connection, db: Database) -> None:
    """request_test of a webhook of another organisation (or none) raises NotFound and queues nothing."""
    webhook_id, _ = await make_webhook(conn, URL, organisation="other")
    with pytest.raises(NotFound):
        await tasks.request_test(context(db), SCOPE, webhook_id)
    with pytest.raises(NotFound):
        await tasks.request_test(context(db), SCOPE, 999_999)
    assert await conn.fetchval("SELECT count(*) FROM task") == 0


async def test_a_url_change_supersedes_the_pending_test(conn: asyncpg.Connection, db: Database) -> None:
    """set_url while a test is pending fails that task with a "superseded" error and queues a new test of the
    new version; the webhook is new at version 2."""
    webhook_id, _ = await make_webhook(conn, URL, state="valid")
    old = await tasks.request_test(context(db), SCOPE, webhook_id)
    change = await webhooks.set_url(context(db), SCOPE, webhook_id, URL + "/v2")
    assert (change.old_state, change.new_state) == ("valid", "new")

    superseded = await task_row(conn, old.id)
    assert superseded["state"] == "failed"
    assert "superseded" in json.loads(superseded["result"])["error"]
    assert superseded["completed_at"] is not None
    new = await conn.fetchrow("SELECT * FROM task WHERE state = 'pending'")
    assert new is not None and new["id"] != old.id
    assert new["webhook_version"] == 2
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["version"], hook["url"]) == ("new", 2, URL + "/v2")
    assert await conn.fetchval("SELECT count(*) FROM events WHERE kind = 'test' AND id = $1", new["event_id"]) == 1


@pytest.mark.parametrize("status", [200, 404])
async def test_a_result_for_an_older_version_does_not_apply(
    conn: asyncpg.Connection, db: Database, status: int
) -> None:
    """A test claimed for version 1 whose result (success or failure) is recorded after the URL changed
    (version 2) leaves the webhook new, its last_error untouched and the new test pending; the old task
    stays failed as superseded."""
    webhook_id, _ = await make_webhook(conn, URL, state="new")
    old = await tasks.request_test(context(db), SCOPE, webhook_id)
    leased = await claim_test_of(db, old)
    await webhooks.set_url(context(db), SCOPE, webhook_id, URL + "/v2")
    await record(db, [result(leased, status)])

    hook = await webhook_row(conn, webhook_id)
    assert hook["state"] == "new"
    assert hook["version"] == 2
    assert hook["last_error"] is None
    assert (await task_row(conn, old.id))["state"] == "failed"
    assert await conn.fetchval("SELECT count(*) FROM task WHERE state = 'pending' AND webhook_version = 2") == 1


async def test_a_result_for_the_current_version_applies(conn: asyncpg.Connection, db: Database) -> None:
    """The counterpart: a test of the current version that fails with 404 makes the webhook invalid with
    last_error "404 Not Found" and completes its task as failed with status and error; a later successful
    test makes it valid and clears last_error."""
    webhook_id, _ = await make_webhook(conn, URL, state="new")
    task = await tasks.request_test(context(db), SCOPE, webhook_id)
    rows = await record(db, [result(await claim_test_of(db, task), 404)])
    assert [(r.webhook_id, r.old_state, r.new_state) for r in rows] == [(webhook_id, "new", "invalid")]
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["last_error"]) == ("invalid", "404 Not Found")
    done = await task_row(conn, task.id)
    assert done["state"] == "failed"
    assert json.loads(done["result"]) == {"status": 404, "error": "404 Not Found"}

    again = await tasks.request_test(context(db), SCOPE, webhook_id)
    assert again.id != task.id
    await record(db, [result(await claim_test_of(db, again), 200)])
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["last_error"]) == ("valid", None)
    assert (await task_row(conn, again.id))["state"] == "succeeded"


async def test_a_task_pending_for_a_minute_fails_as_no_dispatcher_running(
    conn: asyncpg.Connection, db: Database
) -> None:
    """Reading (tasks.find) a task pending for 61 s returns it failed with "no dispatcher is running"; one pending for
    59 s is still pending."""
    stale_hook, _ = await make_webhook(conn, URL, name="stale")
    fresh_hook, _ = await make_webhook(conn, URL, name="fresh")
    stale = await tasks.request_test(context(db), SCOPE, stale_hook)
    fresh = await tasks.request_test(context(db), SCOPE, fresh_hook)
    await conn.execute("UPDATE task SET created_at = created_at - interval '61 seconds' WHERE id = $1", stale.id)
    await conn.execute("UPDATE task SET created_at = created_at - interval '59 seconds' WHERE id = $1", fresh.id)

    got = await tasks.find(context(db), SCOPE, stale.id)
    assert got is not None and got.state == "failed" and got.result is not None
    assert json.loads(got.result) == {"status": None, "error": "no dispatcher is running"}
    assert got.completed_at is not None
    kept = await tasks.find(context(db), SCOPE, fresh.id)
    assert kept is not None and kept.state == "pending"
    assert await tasks.find(context(db), Scope("other", Role.ADMIN), stale.id) is None
    # The expired task no longer blocks a new test.
    assert (await tasks.request_test(context(db), SCOPE, stale_hook)).id != stale.id


async def test_waiting_for_a_task_gives_up_after_its_timeout(conn: asyncpg.Connection, db: Database) -> None:
    """Waiting (tasks.wait) for a task nobody runs returns it still pending once the timeout passes, not before."""
    webhook_id, _ = await make_webhook(conn, URL)
    task = await tasks.request_test(context(db), SCOPE, webhook_id)
    started = asyncio.get_running_loop().time()
    got = await tasks.wait(context(db), SCOPE, task.id, 0.5)
    waited = asyncio.get_running_loop().time() - started
    assert got is not None and got.state == "pending"
    assert 0.45 <= waited < 5.0


# ---- tests: the failure streak ----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", STREAK_STATES)
async def test_streak_of_failures_invalidates_the_webhook(conn: asyncpg.Connection, db: Database, state: str) -> None:
    """With disable_after 3 and min_failing_period 0, two failed batches of one failure each keep a new or valid
    webhook in its state with the streak counted, the third failure makes it invalid with last_error; the rows
    returned say so."""
    webhook_id, _ = await make_webhook(conn, URL, events=["request.create"], state=state)
    await direct_deliveries(conn, webhook_id, 3)
    leased = await claim(db)
    for n, row in enumerate(leased[:2], start=1):
        rows = await record(db, [result(row, 500)])
        assert [(r.old_state, r.new_state, r.failure_count) for r in rows] == [(state, state, n)]
    rows = await record(db, [result(leased[2], 503)])
    assert [(r.old_state, r.new_state, r.failure_count) for r in rows] == [(state, "invalid", 3)]
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["last_error"], hook["failure_count"]) == ("invalid", "503 Service Unavailable", 3)
    assert hook["failing_since"] is not None and hook["last_error_at"] is not None


async def test_429s_do_not_count_toward_the_streak(conn: asyncpg.Connection, db: Database) -> None:
    """Five 429s with disable_after 3 and min_failing_period 0 leave the webhook valid with no streak (and
    no webhook row returned: nothing to mail); they do record last_error."""
    webhook_id, _ = await make_webhook(conn, URL)
    await direct_deliveries(conn, webhook_id, 5)
    rows = await record(db, [result(row, 429) for row in await claim(db)])
    assert rows == []
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["failure_count"], hook["failing_since"]) == ("valid", 0, None)
    assert hook["last_error"] == "429 Too Many Requests"


@pytest.mark.parametrize("state", STREAK_STATES)
async def test_failed_tests_do_not_count_toward_the_streak(conn: asyncpg.Connection, db: Database, state: str) -> None:
    """A webhook two failures into a streak of 3 keeps its state and a streak of 2 after a failed test that no
    longer applies (its version was superseded); a failed test of the current version makes it invalid by the
    test rule, still with a streak of 2."""
    webhook_id, _ = await make_webhook(conn, URL, state=state)
    await direct_deliveries(conn, webhook_id, 2)
    await record(db, [result(row, 500) for row in await claim(db)])
    assert (await webhook_row(conn, webhook_id))["failure_count"] == 2

    stale = await tasks.request_test(context(db), SCOPE, webhook_id)
    leased = await claim_test_of(db, stale)
    await conn.execute("UPDATE webhook SET version = version + 1 WHERE id = $1", webhook_id)
    await conn.execute("UPDATE task SET state = 'failed' WHERE id = $1", stale.id)
    await record(db, [result(leased, 500)])
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["failure_count"]) == (state, 2)

    current = await tasks.request_test(context(db), SCOPE, webhook_id)
    await record(db, [result(await claim_test_of(db, current), 500)])
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["failure_count"]) == ("invalid", 2)


@pytest.mark.parametrize("state", STREAK_STATES)
async def test_the_streak_must_span_min_failing_period(conn: asyncpg.Connection, db: Database, state: str) -> None:
    """With min_failing_period 1 h, failures 0, 10 and 30 minutes apart (a streak of 3 spanning 30 min) keep the
    webhook in its state; a fourth failure 61 minutes after the first makes it invalid."""
    webhook_id, _ = await make_webhook(conn, URL, state=state)
    await direct_deliveries(conn, webhook_id, 4)
    leased = await claim(db)
    t0 = datetime.now(UTC) - timedelta(hours=2)
    for row, minutes in zip(leased[:3], (0, 10, 30), strict=True):
        await record(db, [result(row, 500, finished_at=t0 + timedelta(minutes=minutes))], min_failing_period=3600)
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["failure_count"], hook["failing_since"]) == (state, 3, t0)
    await record(db, [result(leased[3], 500, finished_at=t0 + timedelta(minutes=61))], min_failing_period=3600)
    assert (await webhook_row(conn, webhook_id))["state"] == "invalid"


@pytest.mark.parametrize("state", STREAK_STATES)
async def test_a_success_resets_the_streak(conn: asyncpg.Connection, db: Database, state: str) -> None:
    """Two failures, a success, two failures (disable_after 3): the state kept throughout, the streak back to 2
    and failing_since at the first failure after the success; a batch of failure, success, failure counts 1."""
    webhook_id, _ = await make_webhook(conn, URL, state=state)
    await direct_deliveries(conn, webhook_id, 8)
    leased = await claim(db)
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    at = [t0 + timedelta(seconds=s) for s in range(8)]
    await record(db, [result(leased[i], 500, finished_at=at[i]) for i in (0, 1)])
    await record(db, [result(leased[2], 200, finished_at=at[2])])
    await record(db, [result(leased[i], 500, finished_at=at[i]) for i in (3, 4)])
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["failure_count"], hook["failing_since"]) == (state, 2, at[3])
    await record(db, [result(leased[5], 500, finished_at=at[5]), result(leased[6], 200, finished_at=at[6]),
                      result(leased[7], 500, finished_at=at[7])])  # fmt: skip
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["failure_count"], hook["failing_since"]) == (state, 1, at[7])


async def test_a_deactivated_webhook_keeps_its_state(conn: asyncpg.Connection, db: Database) -> None:
    """Failures, a 410 and a failed test of the current version leave a deactivated webhook deactivated."""
    webhook_id, _ = await make_webhook(conn, URL, state="deactivated")
    await direct_deliveries(conn, webhook_id, 4)
    await record(db, [result(row, 410 if i == 0 else 500) for i, row in enumerate(await claim(db))])
    task = await tasks.request_test(context(db), SCOPE, webhook_id)
    await record(db, [result(await claim_test_of(db, task), 404)])
    assert (await webhook_row(conn, webhook_id))["state"] == "deactivated"
    assert (await task_row(conn, task.id))["state"] == "failed"


async def test_a_success_makes_an_invalid_webhook_valid(conn: asyncpg.Connection, db: Database) -> None:
    """A delivered original (a probe) to an invalid webhook makes it valid, resets the streak, clears
    last_error and stamps state_changed_at (the release ramp starts there)."""
    webhook_id, _ = await make_webhook(conn, URL, state="invalid")
    await conn.execute(
        "UPDATE webhook SET last_error = '503 Service Unavailable', failure_count = 7,"
        " failing_since = now() - interval '1 hour', state_changed_at = now() - interval '1 hour' WHERE id = $1",
        webhook_id,
    )
    await direct_deliveries(conn, webhook_id, 1)
    rows = await record(db, [result(row, 200) for row in await claim(db)])
    assert [(r.old_state, r.new_state) for r in rows] == [("invalid", "valid")]
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["failure_count"], hook["failing_since"], hook["last_error"]) == (
        "valid", 0, None, None)  # fmt: skip
    assert await conn.fetchval("SELECT now() - state_changed_at < interval '1 minute' FROM webhook") is True


# ---- tests: probes, release, max_hold ---------------------------------------------------------------------------


async def test_probe_takes_the_oldest_held_delivery_once_per_interval(conn: asyncpg.Connection, db: Database) -> None:
    """probe_invalid_webhooks makes the oldest held delivery of each invalid webhook due now for one more
    attempt, at most once per interval; paused invalid and valid webhooks are not probed."""
    invalid, _ = await make_webhook(conn, URL, state="invalid", name="invalid")
    paused, _ = await make_webhook(conn, URL, state="invalid", name="paused")
    valid, _ = await make_webhook(conn, URL, state="valid", name="valid")
    await conn.execute("UPDATE webhook SET paused = true WHERE id = $1", paused)
    for webhook_id in (invalid, paused, valid):
        await direct_deliveries(conn, webhook_id, 3, state="held", max_attempts=1, attempts=1)
    oldest = await conn.fetch("SELECT id FROM delivery WHERE webhook_id = $1 ORDER BY held_since, id LIMIT 2", invalid)

    probed = await db.probe_invalid_webhooks(interval_seconds=60.0)
    assert [(r.id, r.webhook_id) for r in probed] == [(oldest[0]["id"], invalid)]
    row = await conn.fetchrow("SELECT * FROM delivery WHERE id = $1", oldest[0]["id"])
    assert row["state"] == "pending" and row["max_attempts"] == 2
    assert await db.probe_invalid_webhooks(interval_seconds=60.0) == []
    await conn.execute("UPDATE webhook SET probed_at = now() - interval '61 seconds' WHERE id = $1", invalid)
    assert [r.id for r in await db.probe_invalid_webhooks(interval_seconds=60.0)] == [oldest[1]["id"]]
    counts = dict(await conn.fetch("SELECT webhook_id, count(*) FROM delivery WHERE state = 'held' GROUP BY 1"))
    assert counts == {invalid: 1, paused: 3, valid: 3}


async def test_release_of_held_deliveries_is_ramped(conn: asyncpg.Connection, db: Database) -> None:
    """100 held deliveries of a webhook that has just become valid: release_held frees the 10 oldest, then 20
    once its state is 6 s old, 40 at 11 s, the rest at 16 s; released rows are pending, due now, no longer held,
    and have an attempt left. Invalid and paused webhooks' held rows stay held."""
    webhook_id, _ = await make_webhook(conn, URL, state="valid")
    invalid, _ = await make_webhook(conn, URL, state="invalid", name="invalid")
    paused, _ = await make_webhook(conn, URL, state="valid", name="paused")
    await conn.execute("UPDATE webhook SET paused = true WHERE id = $1", paused)
    for other in (invalid, paused):
        await direct_deliveries(conn, other, 5, state="held")
    await direct_deliveries(conn, webhook_id, 100, state="held", max_attempts=4, attempts=4)
    order = [r["id"] for r in await conn.fetch(
        "SELECT id FROM delivery WHERE webhook_id = $1 ORDER BY held_since, id", webhook_id)]  # fmt: skip

    async def release() -> list[int]:
        """The webhook of each delivery released."""
        return await db.release_held()

    first = await release()
    assert len(first) == 10 and set(first) == {webhook_id}
    freed = await conn.fetch(
        "SELECT id, state, held_since, max_attempts, attempts, next_attempt_at <= now() AS due FROM delivery"
        " WHERE webhook_id = $1 AND state <> 'held'",
        webhook_id,
    )
    assert {r["id"] for r in freed} == set(order[:10])
    assert all(r["state"] == "pending" and r["held_since"] is None and r["due"] for r in freed)
    assert all(r["max_attempts"] == 5 for r in freed)
    assert len(await release()) == 10, "a second call inside the first 5 s releases 10 more"
    held = "SELECT count(*) FROM delivery WHERE webhook_id = $1 AND state = 'held'"
    assert await conn.fetchval(held, webhook_id) == 80

    sizes = []
    for age in (6, 11, 16):
        await conn.execute(
            "UPDATE webhook SET state_changed_at = now() - make_interval(secs => $2) WHERE id = $1", webhook_id, age
        )
        sizes.append(len(await release()))
    assert sizes == [20, 40, 20]
    assert await release() == []
    counts = dict(await conn.fetch("SELECT webhook_id, count(*) FROM delivery WHERE state = 'held' GROUP BY 1"))
    assert counts == {invalid: 5, paused: 5}


async def test_deliveries_held_longer_than_max_hold_fail(conn: asyncpg.Connection, db: Database, dsn: str,
                                                          tmp_path: Path) -> None:  # fmt: skip
    """Maintenance.run_once with [health] max_hold = "1h" fails held deliveries held for more than an hour
    (last_error naming max_hold, finished_at set, no longer held) and leaves those held for less."""
    config = load_config(write_config(tmp_path / "dispatcher.toml", dsn, {"health": {"max_hold": "1h"}}))
    assert config.health.max_hold == 3600.0
    webhook_id, _ = await make_webhook(conn, URL, state="valid")
    await conn.execute("UPDATE webhook SET paused = true WHERE id = $1", webhook_id)  # nothing else touches them
    old = await direct_deliveries(conn, webhook_id, 3, state="held")
    young = await direct_deliveries(conn, webhook_id, 2, state="held")
    await conn.execute("UPDATE delivery SET held_since = now() - interval '61 minutes' WHERE id = ANY($1)", old)
    await conn.execute("UPDATE delivery SET held_since = now() - interval '59 minutes' WHERE id = ANY($1)", young)

    await Maintenance(db, config, wake_deliverer=asyncio.Event()).run_once()

    rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM delivery")}
    for delivery_id in old:
        row = rows[delivery_id]
        assert row["state"] == "failed"
        assert "max_hold" in row["last_error"]
        assert row["finished_at"] is not None and row["held_since"] is None
    assert all(rows[d]["state"] == "held" for d in young)


async def test_pause_holds_pending_but_not_tests_and_resume_leaves_release_to_maintenance(
    conn: asyncpg.Connection, db: Database
) -> None:
    """set_paused(true) holds the webhook's pending originals but not its pending test, and routing holds new
    events to it; set_paused(false) unpauses without touching rows, and release_held then frees them."""
    webhook_id, _ = await make_webhook(conn, URL, events=["request.create"])
    original = await direct_deliveries(conn, webhook_id, 2)
    [test] = await direct_deliveries(conn, webhook_id, 1, kind="test", max_attempts=1)
    await webhooks.set_paused(context(db), SCOPE, webhook_id, True)
    states = dict(await conn.fetch("SELECT id, state FROM delivery"))
    assert [states[d] for d in original] == ["held", "held"] and states[test] == "pending"
    event_id = await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create', '{}')")
    await route(db)
    assert await conn.fetchval("SELECT state FROM delivery WHERE event_id = $1", event_id) == "held"
    assert [r.id for r in await claim(db)] == [test]

    await webhooks.set_paused(context(db), SCOPE, webhook_id, False)
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'held'") == 3
    assert len(await db.release_held()) == 3
    with pytest.raises(NotFound):
        await webhooks.set_paused(context(db), Scope("other", Role.ADMIN), webhook_id, True)


# ---- tests: deactivate and delete -------------------------------------------------------------------------------


async def test_delete_cancels_keeps_attempts_and_clears_bindings(conn: asyncpg.Connection, db: Database) -> None:
    """delete cancels the webhook's pending and held deliveries (delivered ones and every attempt kept), clears
    the key bindings and the organisation default that name it, hides it, and routes nothing more to it;
    another webhook's deliveries are untouched; deleting it again raises NotFound."""
    webhook_id, _ = await make_webhook(conn, URL, events=["request.create"])
    other, _ = await make_webhook(conn, URL, events=["request.create"], name="other")
    await conn.execute("UPDATE organisation SET default_webhook_id = $1 WHERE id = $2", webhook_id, ORG)
    _, digest = new_token()
    token_id = await conn.fetchval(
        "INSERT INTO token (organisation, role, digest, webhook_id) VALUES ($1, 'producer', $2, $3) RETURNING id",
        ORG, digest, webhook_id,
    )  # fmt: skip
    await direct_deliveries(conn, webhook_id, 2)
    leased = await claim(db)
    await record(db, [result(leased[0], 200), result(leased[1], 500)], disable_after=100)
    pending = await direct_deliveries(conn, webhook_id, 2, due=-timedelta(hours=1))
    held = await direct_deliveries(conn, webhook_id, 2, state="held")
    others = await direct_deliveries(conn, other, 2)
    attempts_before = await conn.fetchval("SELECT count(*) FROM attempt")
    assert attempts_before == 2

    await webhooks.delete(context(db), SCOPE, webhook_id)

    states = {r["id"]: r for r in await conn.fetch("SELECT * FROM delivery")}
    assert states[leased[0].id]["state"] == "delivered"
    assert states[leased[1].id]["state"] == "cancelled", "a delivery waiting for its retry is cancelled"
    for delivery_id in [*pending, *held]:
        assert states[delivery_id]["state"] == "cancelled"
        assert "deleted" in states[delivery_id]["last_error"]
        assert states[delivery_id]["held_since"] is None
    assert all(states[d]["state"] == "pending" for d in others)
    assert await conn.fetchval("SELECT count(*) FROM attempt") == attempts_before
    assert await conn.fetchval("SELECT webhook_id FROM token WHERE id = $1", token_id) is None
    assert await conn.fetchval("SELECT default_webhook_id FROM organisation WHERE id = $1", ORG) is None
    assert await db.get_webhook(webhook_id=webhook_id, organisation=ORG) is None
    await conn.execute("SELECT dispatcher_emit('acme', 'request.create', '{}', key_id => $1)", token_id)
    await route(db)
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE webhook_id = $1 AND state = 'pending'",
                               webhook_id) == 0  # fmt: skip
    with pytest.raises(NotFound):
        await webhooks.delete(context(db), SCOPE, webhook_id)


async def test_deactivate_cancels_pending_and_held(conn: asyncpg.Connection, db: Database) -> None:
    """deactivate cancels pending and held deliveries, bumps the version, reports valid -> deactivated, and
    routes nothing more to the webhook (the event is dispatched to nobody)."""
    webhook_id, _ = await make_webhook(conn, URL, events=["request.create"])
    pending = await direct_deliveries(conn, webhook_id, 2)
    held = await direct_deliveries(conn, webhook_id, 2, state="held")
    change = await webhooks.deactivate(context(db), SCOPE, webhook_id)
    assert (change.old_state, change.new_state) == ("valid", "deactivated")
    rows = await conn.fetch("SELECT state, last_error FROM delivery WHERE id = ANY($1)", [*pending, *held])
    assert [r["state"] for r in rows] == ["cancelled"] * 4
    assert all("deactivated" in r["last_error"] for r in rows)
    assert (await webhook_row(conn, webhook_id))["version"] == 2
    event_id = await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create', '{}')")
    await route(db)
    assert await conn.fetchval("SELECT delivery_count FROM events WHERE id = $1", event_id) == 0


async def test_a_test_asked_for_after_deactivation_is_sent(conn: asyncpg.Connection, db: Database) -> None:
    """A webhook whose test was routed but not yet sent is deactivated; a test asked for then (SPEC §7: a test
    of a deactivated webhook is sent and recorded) has a delivery that can still be sent."""
    webhook_id, _ = await make_webhook(conn, URL, state="new")
    await tasks.request_test(context(db), SCOPE, webhook_id)
    await route(db)
    await webhooks.deactivate(context(db), SCOPE, webhook_id)
    task = await tasks.request_test(context(db), SCOPE, webhook_id)
    await route(db)
    state = await conn.fetchval("SELECT state FROM delivery WHERE event_id = $1", task.event_id)
    assert state == "pending"


# ---- tests: a dead webhook's backlog is off the claim path -------------------------------------------------------


async def test_claim_plan_ignores_fifty_thousand_held_rows(conn: asyncpg.Connection, db: Database) -> None:
    """With 50,000 held deliveries of an invalid webhook and 3 due ones of a healthy webhook, the analysed claim
    statement reads pending rows through the partial index delivery_due (no sequential scan for them), and
    the claim leases exactly the healthy webhook's 3."""
    dead, _ = await make_webhook(conn, URL, state="invalid", name="dead")
    healthy, _ = await make_webhook(conn, URL, name="healthy")
    await insert_held(conn, dead, 50_000)
    due = await direct_deliveries(conn, healthy, 3)
    await conn.execute("ANALYZE")
    sql = await claim_statement(conn)
    plan_text = await conn.fetchval(
        "EXPLAIN (FORMAT JSON) " + sql, 10, 3, 1, 300.0, "owner", [5.0], 0.0, 300.0, [], [], [dead, healthy]
    )
    assert "delivery_due" in plan_text, plan_text
    seq_scans = [
        node for node in _nodes(json.loads(plan_text)[0]["Plan"])
        if node.get("Relation Name") == "delivery" and node["Node Type"] == "Seq Scan"
    ]  # fmt: skip
    assert seq_scans == [], f"sequential scans of delivery: {seq_scans}"
    assert sorted(r.id for r in await claim(db, batch=100, per_webhook=100)) == sorted(due)
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'held'") == 50_000


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        out += _nodes(child)
    return out


# ---- tests: mail ------------------------------------------------------------------------------------------------


async def test_failing_mail_is_throttled_to_one_per_twenty_minutes(conn: asyncpg.Connection, db: Database) -> None:
    """On the test's clock: queue_failing_mail at t0 queues one mail, at t0 + 10 min none, at t0 + 21 min
    another (and the throttle is per webhook: another webhook at t0 + 10 min gets one)."""
    webhook_id, _ = await make_webhook(conn, URL)
    second, _ = await make_webhook(conn, URL, name="second")
    await conn.execute("UPDATE organisation SET contact_emails = '{ops@acme.test}'")
    t0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    async def failing(ids: list[int], at: datetime) -> list[int]:
        return [r.webhook_id for r in await db.queue_failing_mail(webhook_ids=ids, at=at)]

    assert await failing([webhook_id], t0) == [webhook_id]
    assert await failing([webhook_id], t0 + timedelta(minutes=10)) == []
    assert await failing([webhook_id, second], t0 + timedelta(minutes=10)) == [second]
    assert await failing([webhook_id], t0 + timedelta(minutes=19, seconds=59)) == []
    assert await failing([webhook_id], t0 + timedelta(minutes=21)) == [webhook_id]
    assert await failing([webhook_id], t0 + timedelta(minutes=30)) == []
    rows = await conn.fetch("SELECT reason, created_at FROM mail_outbox WHERE webhook_id = $1 ORDER BY id", webhook_id)
    assert [(r["reason"], r["created_at"]) for r in rows] == [
        ("failing", t0), ("failing", t0 + timedelta(minutes=21))]  # fmt: skip


async def test_invalid_mail_is_not_throttled(conn: asyncpg.Connection, db: Database) -> None:
    """queue_invalid_mail queues a mail every time a webhook turns invalid, even right after a failing mail."""
    webhook_id, _ = await make_webhook(conn, URL, state="invalid")
    await conn.execute("UPDATE organisation SET contact_emails = '{ops@acme.test}'")
    await db.queue_failing_mail(webhook_ids=[webhook_id], at=datetime.now(UTC))
    for _ in range(3):
        mails = await db.queue_invalid_mail(webhook_ids=[webhook_id])
        queued_for = await conn.fetch("SELECT webhook_id FROM mail_outbox WHERE id = ANY($1::bigint[])", mails)
        assert [r["webhook_id"] for r in queued_for] == [webhook_id]
    reasons = [r["reason"] for r in await conn.fetch("SELECT reason FROM mail_outbox ORDER BY id")]
    assert reasons == ["failing", "invalid", "invalid", "invalid"]


async def test_mail_recipients(conn: asyncpg.Connection, db: Database) -> None:
    """Recipients are the webhook's mail_exceptions_to (comma-separated, trimmed) when set, else the
    organisation's contact_emails; with neither, no mail of either kind is queued."""
    exceptions, _ = await make_webhook(conn, URL, name="exceptions")
    contacts, _ = await make_webhook(conn, URL, name="contacts")
    nobody, _ = await make_webhook(conn, URL, organisation="quiet")
    await conn.execute("UPDATE webhook SET mail_exceptions_to = 'a@x.test, b@x.test' WHERE id = $1", exceptions)
    await conn.execute("UPDATE organisation SET contact_emails = '{ops@acme.test,boss@acme.test}' WHERE id = $1", ORG)
    ids = [exceptions, contacts, nobody]
    await db.queue_failing_mail(webhook_ids=ids, at=datetime.now(UTC))
    await db.queue_invalid_mail(webhook_ids=ids)
    rows = await conn.fetch("SELECT webhook_id, reason, recipients FROM mail_outbox ORDER BY id")
    assert sorted((r["webhook_id"], r["reason"], list(r["recipients"])) for r in rows) == sorted([
        (exceptions, "failing", ["a@x.test", "b@x.test"]),
        (contacts, "failing", ["ops@acme.test", "boss@acme.test"]),
        (exceptions, "invalid", ["a@x.test", "b@x.test"]),
        (contacts, "invalid", ["ops@acme.test", "boss@acme.test"]),
    ])  # fmt: skip
    assert await conn.fetchval("SELECT count(*) FROM mail_throttle WHERE webhook_id = $1", nobody) == 0


async def test_mail_bodies_carry_no_secret_or_url_credentials(conn: asyncpg.Connection, db: Database) -> None:
    """Both mails name the webhook, its organisation and last_error, show the URL with its credentials masked,
    and contain neither the secret nor the URL's user or password; claim_mail hands each out once."""
    webhook_id, secret = await make_webhook(conn, "http://alice:s3cr3tpw@127.0.0.1:9/hook?x=1")
    await conn.execute(
        "UPDATE webhook SET last_error = '500 Internal Server Error', failure_count = 4 WHERE id = $1", webhook_id
    )
    await conn.execute("UPDATE organisation SET contact_emails = '{ops@acme.test}'")
    await db.queue_failing_mail(webhook_ids=[webhook_id], at=datetime.now(UTC))
    await db.queue_invalid_mail(webhook_ids=[webhook_id])
    mails = await db.claim_mail(limit=20, retry_seconds=300.0)
    assert len(mails) == 2
    for mail in mails:
        text = mail.subject + "\n" + mail.body
        assert str(webhook_id) in mail.subject and ORG in mail.subject
        assert "500 Internal Server Error" in mail.body
        assert "http://***@127.0.0.1:9/hook" in mail.body
        for leak in (secret, "alice", "s3cr3tpw", "whsec_"):
            assert leak not in text
    assert await db.claim_mail(limit=20, retry_seconds=300.0) == []
