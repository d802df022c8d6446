"""Webhook health end to end (SPEC §7, mail of §9): the daemon as a subprocess, real receivers on 127.0.0.1, a
real SMTP server (aiosmtpd) on 127.0.0.1, the CLI as a user runs it. Counted at the receiver, the SMTP server
and in the database, never from the daemon's own counters."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from dispatcher.config import load_config
from dispatcher.db import Database
from dispatcher.resources import Context, Scope, tasks, webhooks
from dispatcher.tokens import new_token
from dispatcher.vocab import Role
from tests.support.cli import run_cli
from tests.support.daemon import Daemon, start_daemon, write_config
from tests.support.factories import emit_many, insert_held, make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import caught_up, wait_db, wait_until

pytestmark = pytest.mark.db

ORG = "acme"
SCOPE = Scope(ORG, Role.ADMIN)


# ---- helpers ---------------------------------------------------------------------------------------------------


def context(db: Database) -> Context:
    """What the operators' operations (tests, deactivate, renew) run with beside the daemon: its database."""
    return Context(db, load_config(environ={}))


def state_changes(daemon: Daemon, webhook_id: int) -> list[tuple[str, str]]:
    """The daemon's webhook.state_changed log lines for `webhook_id`, as (old, new)."""
    return [
        (line["old_state"], line["new_state"])
        for line in daemon.lines()
        if line.get("event") == "webhook.state_changed" and line.get("webhook_id") == webhook_id
    ]


async def webhook_row(conn: asyncpg.Connection, webhook_id: int) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM webhook WHERE id = $1", webhook_id)
    assert row is not None
    return row


async def respond(status: int) -> web.Response:
    return web.Response(status=status)


class Mailbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 OK"

    def messages(self) -> list[email.message.EmailMessage]:
        return [
            email.message_from_bytes(e.original_content or b"", policy=email.policy.default)  # type: ignore[misc]
            for e in self.envelopes
        ]


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Mailbox, int]]:
    """A real SMTP server (aiosmtpd) on 127.0.0.1:<free port> in the test's event loop; yields (mailbox, port)."""
    mailbox = Mailbox()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(mailbox, hostname="localhost", ident="test-smtp"), "127.0.0.1", 0
    )
    yield mailbox, server.sockets[0].getsockname()[1]
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)


# ---- 1. create queues a test; the test decides new -> valid | invalid ---------------------------------------


async def test_cli_create_queues_a_test_that_decides_the_state(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, marker: Receiver, daemon_factory: Any, tmp_path: Path
) -> None:
    """`webhook create` makes a webhook in state new with a pending test task. Once a daemon runs, the test
    (type webhook.test, one attempt) reaches the receiver: a 200 makes the webhook valid and the task
    succeeded; a 404 makes it invalid with last_error "404 Not Found" and the task failed, after exactly one
    attempt (no retry). `webhook test ID --wait` then prints the task's outcome (exit 0 / 1). One state-change
    log line each."""

    async def answer(request: web.Request, n: int) -> web.Response:
        return await respond(404 if request.path.endswith("/missing") else 200)

    receiver.behaviour = answer
    config = write_config(tmp_path / "cli.toml", dsn, {})
    await conn.execute("INSERT INTO organisation (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", ORG)
    created: dict[str, dict[str, Any]] = {}
    for name, url in (("good", receiver.url), ("missing", receiver.url + "/missing")):
        code, out, err = await run_cli(
            "webhook", "create", "--organisation", ORG, "--url", url, "--event", "request.create", config=config
        )
        assert code == 0, err
        created[name] = json.loads(out)
        assert created[name]["state"] == "new"
    tasks = {r["webhook_id"]: r for r in await conn.fetch("SELECT * FROM task")}
    good, missing = created["good"]["id"], created["missing"]["id"]
    assert {str(tasks[good]["id"]), str(tasks[missing]["id"])} == {c["test_task"] for c in created.values()}
    assert all(t["state"] == "pending" for t in tasks.values())

    daemon = await start_daemon(daemon_factory, dsn)
    await wait_db(conn, "SELECT count(*) FROM task WHERE state <> 'pending'", 2)

    assert (await webhook_row(conn, good))["state"] == "valid"
    task = await conn.fetchrow("SELECT * FROM task WHERE webhook_id = $1", good)
    assert task["state"] == "succeeded" and json.loads(task["result"]) == {"status": 200, "error": None}
    [arrival] = [a for a in receiver.arrivals if a.path == "/hook"]
    assert arrival.json["type"] == "webhook.test"
    assert arrival.message_id == str(task["event_id"])

    hook = await webhook_row(conn, missing)
    assert (hook["state"], hook["last_error"]) == ("invalid", "404 Not Found")
    task = await conn.fetchrow("SELECT * FROM task WHERE webhook_id = $1", missing)
    assert task["state"] == "failed" and json.loads(task["result"]) == {"status": 404, "error": "404 Not Found"}
    # A retry would be due one 200 ms slot after the attempt: once that is past by the server's clock, a marker
    # event handled after it shows that the daemon has claimed whatever was due by then.
    await wait_db(conn, "SELECT now() > max(finished_at) + interval '200 ms' FROM attempt", True)
    await caught_up(conn, marker)
    assert len([a for a in receiver.arrivals if a.path == "/hook/missing"]) == 1
    deliveries = await conn.fetch("SELECT kind, state, attempts, max_attempts FROM delivery WHERE webhook_id = $1",
                                  missing)  # fmt: skip
    assert [tuple(d.values()) for d in deliveries] == [("test", "failed", 1, 1)]
    assert state_changes(daemon, good) == [("new", "valid")]
    assert state_changes(daemon, missing) == [("new", "invalid")]

    code, out, _ = await run_cli("webhook", "test", str(good), "--wait", "10", config=config)
    assert code == 0 and json.loads(out)["state"] == "succeeded"
    code, out, _ = await run_cli("webhook", "test", str(missing), "--wait", "10", config=config)
    printed = json.loads(out)
    assert code == 1 and printed["state"] == "failed" and printed["result"]["error"] == "404 Not Found"
    assert len([a for a in receiver.arrivals if a.path == "/hook/missing"]) == 2


# ---- 2. test types per format -----------------------------------------------------------------------------


async def test_each_format_gets_its_own_test(
    conn: asyncpg.Connection, dsn: str, db: Database, receiver: Receiver, daemon_factory: Any
) -> None:
    """ricloud: type webhook_config.test (event resource webhook_config/test) whose data is the webhook's config
    resource, URL credentials masked, without any secret. 4me with a single exact event: that event, object_id
    12345, empty payload; 4me with a pattern: webhook.test. Standard: webhook.test with empty data. Every task
    succeeds and every webhook becomes valid."""
    base = f"http://user:pw@127.0.0.1:{receiver.port}/hook"
    ricloud, ricloud_secret = await make_webhook(conn, base + "/ricloud", format="ricloud", state="new",
                                                 events=["poll.completed"])  # fmt: skip
    single, _ = await make_webhook(conn, base + "/single", format="4me", state="new", events=["request.create"])
    pattern, _ = await make_webhook(conn, base + "/pattern", format="4me", state="new", events=["request.*"])
    standard, _ = await make_webhook(conn, base + "/standard", state="new", events=["request.create"])
    hooks = (ricloud, single, pattern, standard)
    queued = {w: await tasks.request_test(context(db), SCOPE, w) for w in hooks}
    await start_daemon(daemon_factory, dsn)
    await receiver.wait_count(4)
    await wait_db(conn, "SELECT count(*) FROM task WHERE state = 'succeeded'", 4)
    await wait_db(conn, "SELECT count(*) FROM webhook WHERE state = 'valid'", 4)
    by_path = {a.path.split("/")[2]: a for a in receiver.arrivals}

    got = by_path["ricloud"]
    assert got.path == f"/hook/ricloud/{queued[ricloud].event_id}"
    body = got.json
    assert (body["resource"], body["type"], body["action"]) == ("event", "webhook_config", "test")
    data = body["data"]
    assert (data["id"], data["resource"], data["organisation"]) == (ricloud, "webhook_config", ORG)
    assert data["url"] == f"http://***@127.0.0.1:{receiver.port}/hook/ricloud"
    assert data["state"] == "new" and data["date_created"].endswith("Z")
    assert not {"secret", "secrets"} & set(data)
    assert ricloud_secret not in got.body.decode() and "pw@" not in got.body.decode()

    body = by_path["single"].json
    assert (body["event"], body["object_id"], body["payload"], body["webhook_id"]) == (
        "request.create", 12345, {}, single)  # fmt: skip
    body = by_path["pattern"].json
    assert (body["event"], body["object_id"], body["payload"]) == ("webhook.test", 12345, {})
    body = by_path["standard"].json
    assert (body["type"], body["data"], body["id"]) == ("webhook.test", {}, str(queued[standard].event_id))


# ---- 5. the failure streak -----------------------------------------------------------------------------------


async def test_a_streak_of_failures_invalidates_and_holds(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, marker: Receiver, daemon_factory: Any
) -> None:
    """[health] disable_after_failures 3, min_failing_period 0, a receiver answering 500: one event's first three
    attempts fail and the webhook turns invalid with last_error "500 Internal Server Error" (one
    webhook.state_changed line); the delivery, which had a fourth attempt left, is held, and so are later
    events: none of them is sent."""
    receiver.behaviour = lambda request, n: respond(500)
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.*"])
    daemon = await start_daemon(daemon_factory, dsn, health={"disable_after_failures": 3, "min_failing_period": "0s",
                                                             "probe_interval": "1h"})  # fmt: skip
    await emit_many(conn, 1)
    await wait_db(conn, "SELECT count(*) FROM delivery WHERE state IN ('held', 'failed')", 1, timeout=15)
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["last_error"]) == ("invalid", "500 Internal Server Error")
    assert await conn.fetchval("SELECT state FROM delivery") == "held"
    before = await conn.fetchval(
        "SELECT count(*) FROM attempt a JOIN webhook w ON true WHERE a.finished_at <= w.state_changed_at"
    )
    assert before == 3

    sent = len(receiver.arrivals)
    await emit_many(conn, 3)
    await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'held'", 4)
    await caught_up(conn, marker)  # claims, sends and results handled after the four were held
    assert len(receiver.arrivals) <= sent + 1, "held deliveries were sent (beyond one probe)"
    assert state_changes(daemon, webhook_id) == [("valid", "invalid")]


async def test_a_streak_shorter_than_min_failing_period_keeps_the_webhook_valid(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any
) -> None:
    """With min_failing_period 1 h, four failed attempts within a second (disable_after 3) leave the webhook
    valid, with the streak of 4 counted: the period, not a lost count, keeps it valid."""
    receiver.behaviour = lambda request, n: respond(500)
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.*"])
    daemon = await start_daemon(daemon_factory, dsn, health={"disable_after_failures": 3, "min_failing_period": "1h"})
    await emit_many(conn, 1)
    await wait_db(conn, "SELECT state FROM delivery", "failed", timeout=15)
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["last_error"]) == ("valid", "500 Internal Server Error")
    assert hook["failure_count"] == 4
    assert state_changes(daemon, webhook_id) == []


async def test_429s_do_not_count(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, marker: Receiver, daemon_factory: Any
) -> None:
    """Six events answered 429 (disable_after 3, min_failing_period 0) leave the webhook valid with no streak;
    last_error shows the 429."""
    receiver.behaviour = lambda request, n: respond(429)
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.*"])
    daemon = await start_daemon(daemon_factory, dsn, health={"disable_after_failures": 3, "min_failing_period": "0s"})
    await emit_many(conn, 6)
    await wait_db(conn, "SELECT count(*) FROM attempt", 6)
    await caught_up(conn, marker)  # results written after the six (and their log lines) are in
    hook = await webhook_row(conn, webhook_id)
    assert (hook["state"], hook["failure_count"], hook["last_error"]) == ("valid", 0, "429 Too Many Requests")
    assert state_changes(daemon, webhook_id) == []


# ---- 6. receiver down and back: nothing lost ----------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_receiver_down_and_back_loses_nothing(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any
) -> None:
    """A valid webhook's receiver answers 503 while 200 events are inserted: the webhook turns invalid
    (disable_after 5, min_failing_period 0), its deliveries are held (none exhausts its attempts) and probes
    keep failing. The receiver comes back: a probe makes the webhook valid, held deliveries are released, and
    every one of the 200 events arrives with a 200; in the database all 200 are delivered, none failed or
    cancelled. Prints the figures (run with -s)."""
    events = 200
    up = False
    accepted: Counter[str] = Counter()

    async def answer(request: web.Request, n: int) -> web.Response:
        if not up:
            return await respond(503)
        accepted[request.headers["webhook-id"]] += 1
        return await respond(200)

    receiver.behaviour = answer
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.create"])
    daemon = await start_daemon(
        daemon_factory,
        dsn,
        health={"disable_after_failures": 5, "min_failing_period": "0s", "probe_interval": "1s"},
        retry={"schedule": ["1s", "1s", "1s", "1s", "1s"]},
    )
    held_peak = 0

    async def sample() -> asyncpg.Record:
        nonlocal held_peak
        row = await conn.fetchrow(
            "SELECT w.state, w.state_changed_at,"
            " (SELECT count(*) FROM delivery WHERE state = 'held') AS held,"
            " (SELECT count(*) FROM delivery WHERE state IN ('failed', 'cancelled')) AS lost,"
            " (SELECT count(*) FROM attempt a WHERE a.started_at > w.state_changed_at) AS since_change"
            " FROM webhook w WHERE w.id = $1",
            webhook_id,
        )
        held_peak = max(held_peak, row["held"])
        return row

    down_at = time.monotonic()
    await emit_many(conn, events)

    async def all_held_and_probed() -> bool:
        row = await sample()
        assert row["lost"] == 0, "a delivery failed while the receiver was down"
        probed = any(line.get("event") == "webhook.probe" for line in daemon.lines())
        return row["state"] == "invalid" and held_peak == events and row["since_change"] >= 2 and probed

    await wait_until(all_held_and_probed, "webhook invalid, every delivery held, probes sent", timeout=60)
    while_down = len(receiver.arrivals)

    up = True
    back_at = time.monotonic()

    async def valid_again() -> bool:
        return (await sample())["state"] == "valid"

    await wait_until(valid_again, "a probe re-validates the webhook", timeout=30)
    revalidated_at = time.monotonic()
    ids = {str(r["id"]) for r in await conn.fetch("SELECT id FROM events")}

    async def all_arrived() -> bool:
        await sample()
        return set(accepted) >= ids

    await wait_until(all_arrived, "every event arrives", timeout=90)
    drained_at = time.monotonic()
    await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'delivered'", events)
    states = dict(await conn.fetch("SELECT state, count(*) FROM delivery GROUP BY state"))
    delivered = len(set(accepted) & ids)
    duplicates = sum(n - 1 for n in accepted.values())
    print(
        f"\n[down-and-back] events sent: {events}; held peak: {held_peak}; delivered: {delivered}; "
        f"lost: {events - delivered}; duplicates: {duplicates}; requests refused while down: {while_down}; "
        f"down for {back_at - down_at:.1f} s; re-validated {revalidated_at - back_at:.1f} s after the receiver came "
        f"back; all delivered {drained_at - revalidated_at:.1f} s after that; delivery states: {states}"
    )
    assert delivered == events and set(accepted) == ids
    assert states == {"delivered": events}
    assert duplicates == 0
    assert state_changes(daemon, webhook_id) == [("valid", "invalid"), ("invalid", "valid")]
    assert any(line.get("event") == "webhook.probe" for line in daemon.lines())


# ---- 7. pause and resume -------------------------------------------------------------------------------------


async def test_pause_holds_new_deliveries_and_resume_releases_them(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, marker: Receiver, daemon_factory: Any
) -> None:
    """`webhook pause`: new events to the webhook are held, not sent; a test to it is still sent and succeeds;
    `webhook resume`: the held deliveries are released and arrive."""
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.*"])
    daemon = await start_daemon(daemon_factory, dsn)
    code, out, err = await run_cli("webhook", "pause", str(webhook_id), config=daemon.config)
    assert code == 0, err
    assert await conn.fetchval("SELECT paused FROM webhook") is True
    await emit_many(conn, 3)
    await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'held'", 3)
    code, out, err = await run_cli("webhook", "test", str(webhook_id), "--wait", "10", config=daemon.config)
    assert code == 0, err
    assert json.loads(out)["state"] == "succeeded"
    assert [a.json["type"] for a in receiver.arrivals] == ["webhook.test"]
    await caught_up(conn, marker)  # claims after the held rows and the test: held rows would have been taken
    assert len(receiver.arrivals) == 1
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'held'") == 3

    code, _, err = await run_cli("webhook", "resume", str(webhook_id), config=daemon.config)
    assert code == 0, err
    # (The marker's event and delivery are of another organisation and webhook.)
    ids = {str(r["id"]) for r in await conn.fetch("SELECT id FROM events WHERE kind = 'event' AND organisation = $1",
                                                  ORG)}  # fmt: skip
    await receiver.wait_for(lambda: receiver.ids() >= ids, timeout=15)
    await wait_db(conn, "SELECT count(*) FROM delivery WHERE state = 'delivered' AND webhook_id = $1", 4, webhook_id)
    assert (await webhook_row(conn, webhook_id))["state"] == "valid"


# ---- 8. deactivate and re-enable ------------------------------------------------------------------------------


async def test_deactivate_then_re_enable(
    conn: asyncpg.Connection, dsn: str, db: Database, receiver: Receiver, daemon_factory: Any
) -> None:
    """Deactivating cancels the webhook's pending and held deliveries; new events are not routed to it; a test
    of it is sent and recorded but it stays deactivated. Re-enabling (renew) makes it new with a test, which
    makes it valid, and events reach it again."""
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.*"])
    await emit_many(conn, 2)
    await db.route_events(limit=100, max_attempts=4)
    await conn.execute(
        "UPDATE delivery SET state = 'held', held_since = now()"
        " WHERE id = (SELECT id FROM delivery ORDER BY id LIMIT 1)"
    )
    assert sorted(r["state"] for r in await conn.fetch("SELECT state FROM delivery")) == ["held", "pending"]
    change = await webhooks.deactivate(context(db), SCOPE, webhook_id)
    assert (change.old_state, change.new_state) == ("valid", "deactivated")
    assert [r["state"] for r in await conn.fetch("SELECT state FROM delivery")] == ["cancelled", "cancelled"]

    daemon = await start_daemon(daemon_factory, dsn)
    lonely = await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create', '{}')")
    await wait_db(conn, f"SELECT delivery_count FROM events WHERE id = '{lonely}' AND dispatched_at IS NOT NULL", 0)

    task = await tasks.request_test(context(db), SCOPE, webhook_id)
    done = await tasks.wait(context(db), SCOPE, task.id, 15)
    assert done is not None and done.state == "succeeded"
    assert [a.message_id for a in receiver.arrivals] == [str(task.event_id)]
    assert await conn.fetchval("SELECT count(*) FROM attempt a JOIN delivery d ON d.id = a.delivery_id"
                               " WHERE d.event_id = $1 AND a.status = 200", task.event_id) == 1  # fmt: skip
    assert (await webhook_row(conn, webhook_id))["state"] == "deactivated"

    change = await webhooks.renew(context(db), SCOPE, webhook_id)
    assert (change.old_state, change.new_state) == ("deactivated", "new")
    retest = await conn.fetchrow("SELECT * FROM task ORDER BY created_at DESC LIMIT 1")
    assert retest["id"] != task.id
    assert retest["webhook_version"] == (await webhook_row(conn, webhook_id))["version"]
    done = await tasks.wait(context(db), SCOPE, retest["id"], 15)
    assert done is not None and done.state == "succeeded"
    await wait_db(conn, f"SELECT state FROM webhook WHERE id = {webhook_id}", "valid")
    event_id = await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create', '{}')")
    await receiver.wait_for(lambda: str(event_id) in receiver.ids(), timeout=15)
    assert state_changes(daemon, webhook_id) == [("new", "valid")]


# ---- 12. a dead webhook's backlog costs a healthy webhook nothing -------------------------------------------


async def test_fifty_thousand_held_do_not_slow_a_healthy_webhook(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any
) -> None:
    """With 50,000 held deliveries of an invalid webhook, each of three events to a healthy webhook arrives
    within 5 poll intervals (poll 1 s); the backlog stays held."""
    dead, _ = await make_webhook(conn, "http://127.0.0.1:9/dead", name="dead", state="invalid")
    await make_webhook(conn, receiver.url, events=["request.create"], name="healthy")
    await insert_held(conn, dead, 50_000)
    await conn.execute("ANALYZE delivery")
    await start_daemon(daemon_factory, dsn, worker={"poll_interval": "1s"}, health={"probe_interval": "1h"})
    latencies = []
    for _ in range(3):
        started = time.monotonic()
        event_id = await conn.fetchval("SELECT dispatcher_emit('acme', 'request.create', '{}')")
        await receiver.wait_for(lambda e=str(event_id): e in receiver.ids(), timeout=5.0)
        latencies.append(time.monotonic() - started)
    print(f"\n[50,000 held] healthy webhook latencies: {', '.join(f'{s * 1000:.0f} ms' for s in latencies)}")
    assert await conn.fetchval("SELECT count(*) FROM delivery WHERE webhook_id = $1 AND state = 'held'", dead) >= (
        49_999  # one may be out on its probe
    )


# ---- 13. failure mail over real SMTP -------------------------------------------------------------------------


async def test_failure_mail_reaches_smtp_without_secrets(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any, smtp: tuple[Mailbox, int]
) -> None:
    """With [mail] pointing at a real SMTP server and the organisation's contact_emails set, a webhook (URL with
    credentials, a key bound to it) whose delivery fails (500), then is gone (410, invalid at once) produces a
    "failing" and an "invalid" mail that arrive at the server, from [mail] from to the contacts; they name the
    webhook and last_error, show the URL masked, and contain no secret, no URL credentials and no token."""
    mailbox, port = smtp
    receiver.behaviour = lambda request, n: respond(500 if n == 0 else 410)
    url = f"http://mailuser:mailpw@127.0.0.1:{receiver.port}/hook"
    webhook_id, secret = await make_webhook(conn, url, events=["request.*"])
    await conn.execute("UPDATE organisation SET contact_emails = '{ops@acme.test,oncall@acme.test}'")
    token, digest = new_token()
    await conn.execute(
        "INSERT INTO token (organisation, role, digest, webhook_id) VALUES ('acme', 'producer', $1, $2)",
        digest, webhook_id,
    )  # fmt: skip
    await start_daemon(
        daemon_factory,
        dsn,
        mail={"host": "127.0.0.1", "port": port, "from": "dispatcher@example.test"},
        health={"disable_after_failures": 3, "min_failing_period": "0s", "probe_interval": "1h"},
    )
    await emit_many(conn, 1)
    await wait_db(conn, f"SELECT state FROM webhook WHERE id = {webhook_id}", "invalid")
    await wait_db(conn, "SELECT count(*) FROM mail_outbox WHERE sent_at IS NOT NULL", 2)

    async def two_mails() -> bool:
        return len(mailbox.envelopes) >= 2

    await wait_until(two_mails, "two mails at the SMTP server", timeout=15)

    assert len(mailbox.envelopes) == 2
    for envelope in mailbox.envelopes:
        assert envelope.mail_from == "dispatcher@example.test"
        assert sorted(envelope.rcpt_tos) == ["oncall@acme.test", "ops@acme.test"]
    subjects = sorted(m["Subject"] for m in mailbox.messages())
    assert subjects == [f"Webhook {webhook_id} of acme is failing", f"Webhook {webhook_id} of acme is now invalid"]
    for message in mailbox.messages():
        body = message.get_content()
        assert f"http://***@127.0.0.1:{receiver.port}/hook" in body
        assert "500 Internal Server Error" in body or "410 Gone" in body
    raw = "\n".join((e.original_content or b"").decode("utf-8", "replace") for e in mailbox.envelopes)
    for leak in (secret, "whsec_", "mailuser", "mailpw", token, "dsp_"):
        assert leak not in raw, f"{leak[:10]}... appears in a mail"


async def test_a_passing_test_sends_no_mail(
    conn: asyncpg.Connection,
    dsn: str,
    db: Database,
    receiver: Receiver,
    marker: Receiver,
    daemon_factory: Any,
    smtp: tuple[Mailbox, int],
) -> None:
    """A new webhook whose test passes becomes valid and no mail is queued for it (nothing is failing)."""
    _, port = smtp
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.*"], state="new")
    await conn.execute("UPDATE organisation SET contact_emails = '{ops@acme.test}'")
    await start_daemon(daemon_factory, dsn, mail={"host": "127.0.0.1", "port": port})
    task = await tasks.request_test(context(db), SCOPE, webhook_id)
    done = await tasks.wait(context(db), SCOPE, task.id, 15)
    assert done is not None and done.state == "succeeded"
    await wait_db(conn, f"SELECT state FROM webhook WHERE id = {webhook_id}", "valid")
    await caught_up(conn, marker)  # mail is queued in the step that records the result; results written since
    assert await conn.fetch("SELECT reason, subject FROM mail_outbox") == []
