"""Bad input at every door, between two halves of a burst of good events: producers' INSERTs, API bodies (types,
sizes, unknown fields, injection strings, URLs and schemes), configuration files and environment values. Each is
refused with an error that names what is wrong; nothing queued is lost or changed, and no bad input leaves a row.

The inputs tried are data (the lists below), so that the report can list them."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import asyncpg
import pytest

from tests.support import REPO
from tests.support.api import add_token, call
from tests.support.chaos import Row, RssWatch, Tally, chaos_n, expected_deliveries, record, scaled, wait_settled
from tests.support.factories import emit_many, make_webhook
from tests.support.receivers import Receiver

pytestmark = [pytest.mark.chaos, pytest.mark.db]

# (what, statement, arguments, a word the error must name). The other organisation "other" and its token and
# webhook exist.
PRODUCER_INSERTS: list[tuple[str, str, tuple[Any, ...], str]] = [
    ("unknown type", "INSERT INTO events (organisation, type) VALUES ('acme', 'no.such')", (), "event_type_unknown"),
    ("unknown organisation", "INSERT INTO events (organisation, type) VALUES ('nobody', 'request.create')", (),
     "event_organisation_unknown"),
    ("payload over the limit", "INSERT INTO events (organisation, type, payload) VALUES ('acme', 'request.create',"
     " jsonb_build_object('s', repeat('x', 300000)))", (), "event_payload_too_large"),
    ("object_id of 256 characters", "INSERT INTO events (organisation, type, object_id) VALUES ('acme',"
     " 'request.create', repeat('o', 256))", (), "event_object_id_length"),
    ("actor not an object", "INSERT INTO events (organisation, type, actor) VALUES ('acme', 'request.create',"
     " '[1]')", (), "event_actor_object"),
    ("idempotency key of 300 characters", "INSERT INTO events (organisation, type, idempotency_key) VALUES ('acme',"
     " 'request.create', repeat('k', 300))", (), "event_idempotency_key_length"),
    ("key of another organisation", "INSERT INTO events (organisation, type, key_id) VALUES ('acme',"
     " 'request.create', (SELECT id FROM token WHERE organisation = 'other' LIMIT 1))", (),
     "event_key_not_in_organisation"),
    ("webhook of another organisation", "INSERT INTO events (organisation, type, webhook_id) VALUES ('acme',"
     " 'request.create', (SELECT id FROM webhook WHERE organisation = 'other' LIMIT 1))", (),
     "event_webhook_not_in_organisation"),
    ("payload not JSON", "INSERT INTO events (organisation, type, payload) VALUES ('acme', 'request.create', $1)",
     ("{not json",), "json"),
    ("no type", "INSERT INTO events (organisation, type) VALUES ('acme', NULL)", (), "type"),
    ("injection string as type", "SELECT dispatcher_emit('acme', $1, '{}')", ("x'); DROP TABLE events; --",),
     "event_type_unknown"),
    ("dispatcher_emit into an unknown organisation", "SELECT dispatcher_emit('nobody', 'request.create', '{}')", (),
     "event_organisation_unknown"),
]  # fmt: skip

NESTED = b'{"type": "request.create", "payload": ' + b"[" * 2000 + b"]" * 2000 + b"}"
# (what, method, path, JSON body or raw bytes, a word the error must name). Sent with the organisation's admin token.
API_BODIES: list[tuple[str, str, str, Any, str]] = [
    ("javascript: URL", "POST", "/configs/webhook", {"url": "javascript:alert(1)"}, "url"),
    ("ftp: URL", "POST", "/configs/webhook", {"url": "ftp://example.com/x"}, "url"),
    ("file: URL", "POST", "/configs/webhook", {"url": "file:///etc/passwd"}, "url"),
    ("metadata address", "POST", "/configs/webhook", {"url": "http://169.254.169.254/latest/meta-data"}, "url"),
    ("IPv6 loopback", "POST", "/configs/webhook", {"url": "http://[::1]:8080/"}, "url"),
    ("private address, decimal form", "POST", "/configs/webhook", {"url": "http://167772161/"}, "url"),
    ("URL that is a number", "POST", "/configs/webhook", {"url": 5}, "url"),
    ("URL that does not parse", "POST", "/configs/webhook", {"url": "http://[evil/"}, "url"),
    ("4me uri with a gopher: scheme", "POST", "/webhooks", {"uri": "gopher://example.com/", "event": "request.create"},
     "uri"),
    ("4me unknown event", "POST", "/webhooks", {"uri": "https://example.com/", "event": "no.such.type"}, "event"),
    ("injection string as type", "POST", "/events", {"type": "'; DROP TABLE events; --", "payload": {}}, "type"),
    ("object_id of 300 characters", "POST", "/events", {"type": "request.create", "payload": {},
     "object_id": "x" * 300}, "object_id"),
    ("payload over the limit", "POST", "/events", {"type": "request.create", "payload": {"s": "x" * 300000}},
     "payload"),
    ("idempotency key a number", "POST", "/events", {"type": "request.create", "payload": {},
     "idempotency_key": 5}, "idempotency_key"),
    ("NaN", "POST", "/events", b'{"type": "request.create", "payload": {"n": NaN}}', "NaN"),
    ("nesting 2,000 deep", "POST", "/events", NESTED, "nest"),
    ("not JSON", "POST", "/events", b"\xff\xfe{not json", "JSON"),
    ("2 MiB body", "POST", "/events", b'{"type": "request.create", "payload": {"s": "' + b"x" * (2 << 20) + b'"}}',
     "bytes"),
    ("token role unknown", "POST", "/tokens", {"role": "root"}, "role"),
    ("contact_emails a string", "PATCH", "/organisation_settings", {"contact_emails": "ops@example.com"},
     "contact_emails"),
    ("event type name with spaces", "POST", "/event_types", {"name": "Bad Name!"}, "name"),
    ("unknown field", "POST", "/events", {"type": "request.create", "payload": {}, "surprise": 1}, "surprise"),
]  # fmt: skip

# Accepted on purpose (an event is made); each must at least not fail the server (no 5xx). A payload may be any
# JSON value, as a producer's INSERT may store one and Standard Webhooks' `data` allows.
API_BODIES_ACCEPTED: list[tuple[str, str, str, Any, str]] = [
    ("payload a string", "POST", "/events", {"type": "request.create", "payload": "not an object"}, "payload"),
]

# (what, TOML text, a word the error must name), checked by `dispatcher config check`.
CONFIG_FILES: list[tuple[str, str, str]] = [
    ("not TOML", "[worker\n", "TOML"),
    ("unknown section", "[nosuch]\nx = 1\n", "nosuch"),
    ("unknown key", "[worker]\nbogus = 1\n", "bogus"),
    ("integer as text", '[worker]\nconcurrency = "many"\n', "concurrency"),
    ("negative integer", "[worker]\nconcurrency = -5\n", "concurrency"),
    ("duration in parsecs", '[delivery]\ntimeout = "5 parsecs"\n', "timeout"),
    ("network that is not a CIDR", '[delivery]\nallow_networks = ["not-a-cidr"]\n', "allow_networks"),
    ("encryption key too short", '[secrets]\nencryption_key = "c2hvcnQ="\n', "encryption_key"),
    ("listen address without a port", '[api]\nlisten = "nowhere"\n', "listen"),
    ("log level unknown", '[log]\nlevel = "loud"\n', "level"),
]
# (what, variable, value, a word the error must name), with an otherwise empty configuration.
ENVIRONMENT: list[tuple[str, str, str, str]] = [
    ("integer as text", "DISPATCHER_WORKER__CONCURRENCY", "abc", "concurrency"),
    ("negative duration", "DISPATCHER_DELIVERY__TIMEOUT", "-1s", "timeout"),
    ("unknown section", "DISPATCHER_NOSUCH__KEY", "1", "nosuch"),
    ("log level unknown", "DISPATCHER_LOG__LEVEL", "loud", "level"),
    ("idle timeout forever", "DISPATCHER_API__IDLE_TIMEOUT", "forever", "idle_timeout"),
    ("encryption key not base64", "DISPATCHER_SECRETS__ENCRYPTION_KEY", "!!!", "encryption_key"),
]


async def config_check(path: Any, env: dict[str, str]) -> tuple[int, str]:
    """`dispatcher config check --config PATH` with `env` added; (exit code, stderr)."""
    import os

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dispatcher", "--config", str(path), "config", "check",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO, env={**os.environ, **env},
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.mark.timeout(scaled(120))
async def test_bad_input_at_every_door(
    conn: asyncpg.Connection, dsn: str, receiver: Receiver, daemon_factory: Any, tmp_path: Any
) -> None:
    """Every input of PRODUCER_INSERTS, API_BODIES, CONFIG_FILES and ENVIRONMENT is refused with an error naming
    its word (API errors are 4xx, never 5xx); N good events, half before and half after, all arrive once, their
    rows unchanged, and the bad inputs left no event, webhook, token or event type behind."""
    webhook_id, _ = await make_webhook(conn, receiver.url, events=["request.*"])
    await make_webhook(conn, receiver.url + "/other", organisation="other", events=["no.match"])
    await add_token(conn, "other", "producer")
    _, admin = await add_token(conn, "acme", "admin")
    daemon = await daemon_factory(dsn).start().wait_ready()
    counts = "SELECT (SELECT count(*) FROM webhook), (SELECT count(*) FROM token), (SELECT count(*) FROM event_type)"
    before = tuple(await conn.fetchrow(counts))
    n = chaos_n(100)
    watch = RssWatch()
    wrong: list[str] = []
    async with watch.following(lambda: [daemon]):
        await emit_many(conn, n // 2, payload='{"good": true}')
        first_half = [tuple(r) for r in await conn.fetch("SELECT id, payload::text, object_id FROM events ORDER BY id")]

        for what, sql, args, word in PRODUCER_INSERTS:
            try:
                await conn.execute(sql, *args)
                wrong.append(f"INSERT {what}: accepted")
            except asyncpg.PostgresError as exc:
                said = f"{getattr(exc, 'constraint_name', '')} {getattr(exc, 'column_name', '')} {exc}"
                if word.lower() not in said.lower():
                    wrong.append(f"INSERT {what}: {said!r} does not name {word}")
        api = daemon.api_address()
        for what, method, path, body, word in API_BODIES:
            kwargs = {"data": body} if isinstance(body, bytes) else {"json_body": body}
            reply = await call(api, method, path, token=admin, **kwargs)
            if not 400 <= reply.status < 500 or word.lower() not in reply.text.lower():
                wrong.append(f"API {what}: {reply.status} {reply.text[:300]!r} does not name {word}")
        accepted = []
        for what, method, path, body, _word in API_BODIES_ACCEPTED:
            reply = await call(api, method, path, token=admin, json_body=body)
            if reply.status >= 500:
                wrong.append(f"API {what}: {reply.status} {reply.text[:300]!r}")
            elif reply.status < 300:
                accepted.append(reply.body["id"])
        for what, text, word in CONFIG_FILES:
            path_ = tmp_path / "bad.toml"
            path_.write_text(text)
            code, err = await config_check(path_, {})
            if code == 0 or word.lower() not in err.lower():
                wrong.append(f"config {what}: exit {code}, {err.strip()[:300]!r} does not name {word}")
        empty = tmp_path / "empty.toml"
        empty.write_text("")
        for what, variable, value, word in ENVIRONMENT:
            code, err = await config_check(empty, {variable: value})
            if code == 0 or word.lower() not in err.lower():
                wrong.append(f"env {what}: exit {code}, {err.strip()[:300]!r} does not name {word}")

        await emit_many(conn, n - n // 2, payload='{"good": true}')
        await wait_settled(conn, timeout=scaled(60))
    expected = await expected_deliveries(conn, {webhook_id: "/hook"})
    tally = Tally.of(receiver.arrivals, {k: v for k, v in expected.items() if k[1] not in accepted})
    after_first = [
        tuple(r)
        for r in await conn.fetch("SELECT id, payload::text, object_id FROM events WHERE id <= $1 ORDER BY id",
                                  first_half[-1][0])
    ]  # fmt: skip
    tried = len(PRODUCER_INSERTS) + len(API_BODIES) + len(CONFIG_FILES) + len(ENVIRONMENT)
    record(
        Row("Bad input at every door", f"{tried} inputs", tally.sent, tally.received, tally.lost, tally.duplicated,
            watch.peak_mib, tally.longest_delay_s, n,
            {"inserts": len(PRODUCER_INSERTS), "api_bodies": len(API_BODIES), "config_files": len(CONFIG_FILES),
             "environment": len(ENVIRONMENT), "not_named": len(wrong), "accepted": len(accepted)})
    )  # fmt: skip
    print("\n".join(wrong))
    assert wrong == []
    assert after_first == first_half
    assert await conn.fetchval("SELECT count(*) FROM events") == n + len(accepted)
    assert tuple(await conn.fetchrow(counts)) == before
    assert tally.lost == 0 and tally.duplicated == 0 and tally.sent == n
    assert daemon.alive()
