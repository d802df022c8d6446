"""Secrets at rest (issue 14, item 4): with `[secrets] encryption_key` no webhook secret and no policy private key
is in the database in clear, yet deliveries still verify (standardwebhooks, PyJWT); `dispatcher secrets rotate`
moves everything, rows stored in clear included, under a new key, resumably; a value under a key that is not
configured fails its attempt (request_build) instead of a stage; a malformed key fails `config check` with its
line; without a key the daemon warns once.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import pytest
from standardwebhooks.webhooks import Webhook

from dispatcher.config import load_config
from dispatcher.db import Database
from dispatcher.resources import Context, Scope, policies, secrets, webhooks
from dispatcher.secretbox import Keyring, key_id
from dispatcher.vocab import Role, WebhookFormat
from tests.support.cli import run_cli
from tests.support.daemon import start_daemon, write_config
from tests.support.factories import make_webhook
from tests.support.receivers import Receiver
from tests.support.waits import wait_db

pytestmark = pytest.mark.db

ISSUER = "https://dispatcher.example.test"
K1 = base64.b64encode(os.urandom(32)).decode()
K2 = base64.b64encode(os.urandom(32)).decode()
ACME = Scope("acme", Role.ADMIN)


def header(key: str) -> str:
    return f"enc:v1:{key_id(base64.b64decode(key))}:"


async def dump(conn: asyncpg.Connection) -> str:
    """Every row of every table of the public schema, as text: what a pg_dump of the data would hold."""
    tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    parts = []
    for table in tables:
        rows = await conn.fetch(f'SELECT t::text AS row FROM public."{table["tablename"]}" t')  # names from pg_tables
        parts += [row["row"] for row in rows]
    return "\n".join(parts)


async def stored_values(conn: asyncpg.Connection) -> list[str]:
    """Every stored webhook secret and policy key."""
    secrets_ = await conn.fetch("SELECT s->>'secret' AS v FROM webhook, jsonb_array_elements(secrets) s")
    keys = await conn.fetch("SELECT signing_key AS v FROM webhook_policy")
    return [row["v"] for row in [*secrets_, *keys]]


async def make_hooks(ctx: Context, receiver: Receiver) -> dict[str, Any]:
    """Through the operations: a plain webhook, one under an rs256 policy, one under an hs256 policy; returns
    what their creators were shown, by receiver path."""
    shown: dict[str, Any] = {}
    plain = await webhooks.create(ctx, ACME, url=f"{receiver.url}/plain", events=["*"], format=WebhookFormat.STANDARD)
    shown["/plain"] = {"secret": plain.secret}
    for alg in ("rs256", "hs256"):
        policy = await policies.create(ctx, ACME, jwt_alg=alg)
        made = await webhooks.create(
            ctx, ACME, url=f"{receiver.url}/{alg}", events=["*"], format=WebhookFormat.STANDARD,
            policy_id=policy.policy.id,
        )  # fmt: skip
        shown[f"/{alg}"] = {"secret": made.secret, "key": policy.shown_key, "alg": alg}
    return shown


def verify(receiver: Receiver, shown: dict[str, Any], secret_of: dict[str, list[str]] | None = None) -> int:
    """Every arrival verifies with standardwebhooks (any of the path's secrets) and, under a policy, with PyJWT and
    the key its creator was shown; returns how many were checked."""
    for arrival in receiver.arrivals:
        path = "/" + arrival.path.rsplit("/", 1)[-1]  # the receiver's URL has a path of its own
        meta = shown[path]
        candidates = (secret_of or {}).get(path, [meta["secret"]])
        errors = []
        for secret in candidates:
            try:
                Webhook(secret).verify(arrival.body, arrival.headers)
                break
            except Exception as exc:
                errors.append(exc)
        else:
            raise AssertionError(f"{path}: no secret verifies: {errors}")
        if "key" in meta:
            token = arrival.json["jwt"]
            jwt.decode(token, meta["key"], algorithms=[meta["alg"].upper()], issuer=ISSUER)
    return len(receiver.arrivals)


async def emit(conn: asyncpg.Connection, object_id: str) -> None:
    await conn.execute(
        "INSERT INTO events (organisation, type, object_id, payload) VALUES ('acme', 'request.create', $1, '{}')",
        object_id,
    )


@pytest.fixture
async def acme(conn: asyncpg.Connection) -> None:
    """The organisation the webhooks belong to."""
    await conn.execute("INSERT INTO organisation (id, name) VALUES ('acme', 'acme')")


async def test_nothing_in_clear_and_deliveries_verify(
    dsn: str, conn: asyncpg.Connection, db: Database, receiver: Receiver, daemon_factory: Any, acme: None
) -> None:
    """Created under a key, the whole database's data holds no webhook secret, no private key and no hs256
    shared key; every stored value is tagged with the key's id; the daemon signs so that standardwebhooks and
    PyJWT verify, and logs no secrets_in_clear warning."""
    daemon = daemon_factory(dsn, secrets={"encryption_key": K1}, api={"public_url": ISSUER, "listen": "127.0.0.1:0"})
    ctx = Context(db, load_config(daemon.config, environ={}))
    shown = await make_hooks(ctx, receiver)
    text = await dump(conn)
    for meta in shown.values():
        assert meta["secret"] not in text
        assert meta["secret"].removeprefix("whsec_") not in text
    assert shown["/hs256"]["key"] not in text
    assert "PRIVATE KEY" not in text
    values = await stored_values(conn)
    assert len(values) == 5 and all(v.startswith(header(K1)) for v in values)

    daemon.start()
    await daemon.wait_ready()
    await emit(conn, "1")
    await receiver.wait_count(6)  # a test and the event for each
    assert verify(receiver, shown) >= 6
    assert daemon.find("dispatcher.secrets_in_clear") is None


@pytest.mark.timeout(40)
async def test_rotate_moves_everything_under_the_new_key(
    dsn: str, conn: asyncpg.Connection, db: Database, receiver: Receiver, daemon_factory: Any, acme: None,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Values under K1 and a webhook stored in clear before any key: `secrets rotate` with K2 (K1 in old_keys)
    re-encrypts all of them under K2, prints the counts, and a second run finds nothing left; signing then still
    verifies. A rotation cut into batches of 2 rows resumes where it stopped."""
    old = write_config(tmp_path / "old.toml", dsn, {"secrets": {"encryption_key": K1}, "api": {"public_url": ISSUER}})
    shown = await make_hooks(Context(db, load_config(old, environ={})), receiver)
    clear_id, clear_secret = await make_webhook(conn, f"{receiver.url}/clear", events=["*"])
    shown["/clear"] = {"secret": clear_secret}
    rotated = await webhooks.rotate_secret(Context(db, load_config(old, environ={})), ACME, clear_id)
    # The clear webhook now has a sealed current secret and its old one still in clear, both live.
    both = {"/clear": [rotated.secret, clear_secret]}

    new_settings = {"secrets": {"encryption_key": K2, "old_keys": [K1]}, "api": {"public_url": ISSUER}}
    new = write_config(tmp_path / "new.toml", dsn, new_settings)
    # A rotation stopped after its first batch of 2 webhooks (committed) ...
    keys = secrets.keyring(load_config(new, environ={}))
    async with db.transaction() as tx:
        rows = await tx.secrets_webhooks_to_reseal(header=header(K2), after=0, limit=2)
        resealed = [[{**e, "secret": keys.reseal(e["secret"])} for e in json.loads(text)] for _, text in rows]
        await tx.secrets_set_webhooks(ids=[i for i, _ in rows], secrets=[json.dumps(r) for r in resealed])
    # ... is resumed by running it again: only what is left is re-encrypted.
    first = await secrets.rotate(Context(db, load_config(new, environ={})), batch=2)
    assert (first.webhooks, first.policies) == (2, 2) and not first.failed_webhooks

    # Back under K1 (K2 old), to run the CLI on all of it again.
    back_settings = {"secrets": {"encryption_key": K1, "old_keys": [K2]}}
    back = write_config(tmp_path / "back.toml", dsn, back_settings)
    again = await secrets.rotate(Context(db, load_config(back, environ={})), batch=500)
    assert (again.webhooks, again.policies) == (4, 2)
    code, out, err = await run_cli("secrets", "rotate", config=new)
    assert code == 0, err
    assert "re-encrypted 4 webhook(s) and 2 policy key(s)" in out
    code, out, err = await run_cli("secrets", "rotate", config=new)
    assert code == 0 and "re-encrypted 0 webhook(s) and 0 policy key(s)" in out, (out, err)
    values = await stored_values(conn)
    assert len(values) == 7 and all(v.startswith(header(K2)) for v in values)
    text = await dump(conn)
    assert clear_secret not in text and rotated.secret not in text and "PRIVATE KEY" not in text

    daemon = await start_daemon(
        daemon_factory, dsn, secrets={"encryption_key": K2}, api={"public_url": ISSUER, "listen": "127.0.0.1:0"}
    )
    await emit(conn, "2")
    await receiver.wait_count(7)  # a test for each of the three made through the operations, the event for all four
    assert verify(receiver, shown, both) >= 7
    assert daemon.find("dispatcher.secrets_in_clear") is None


async def test_a_value_under_an_unknown_key_fails_the_attempt(
    dsn: str, conn: asyncpg.Connection, db: Database, receiver: Receiver, daemon_factory: Any, acme: None,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A secret sealed under a key the daemon does not have costs a failed attempt of class request_build that
    names the key id, and the daemon stays up and delivers to the other webhooks."""
    old = write_config(tmp_path / "old.toml", dsn, {"secrets": {"encryption_key": K1}})
    lost = await webhooks.create(
        Context(db, load_config(old, environ={})), ACME, url=f"{receiver.url}/lost", events=["*"],
        format=WebhookFormat.STANDARD,
    )  # fmt: skip
    _, fine_secret = await make_webhook(conn, f"{receiver.url}/fine", events=["*"])
    daemon = await start_daemon(daemon_factory, dsn, secrets={"encryption_key": K2})
    await emit(conn, "3")
    kid = key_id(base64.b64decode(K1))
    await wait_db(
        conn,
        "SELECT count(*) > 0 FROM attempt a JOIN delivery d ON d.id = a.delivery_id"
        " WHERE d.webhook_id = $1 AND a.error_class = 'request_build' AND a.error LIKE '%' || $2 || '%'",
        True,
        lost.webhook.id,
        f"key id {kid}",
    )
    await receiver.wait_for(lambda: any(a.path.endswith("/fine") for a in receiver.arrivals))
    assert all(a.path.endswith("/fine") for a in receiver.arrivals)
    Webhook(fine_secret).verify(receiver.arrivals[0].body, receiver.arrivals[0].headers)
    assert daemon.alive()


async def test_malformed_key_fails_config_check_with_its_line(tmp_path: Path, dsn: str) -> None:
    """`config check` refuses a key that is not the base64 of 32 bytes, and a bad item of old_keys, naming the
    file, the line and the key, without echoing the key; a good pair passes."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[secrets]\nencryption_key = "not-a-key"\n')
    code, _, err = await run_cli("config", "check", config=bad)
    assert code != 0
    assert f"{bad}:2: [secrets] encryption_key: expected the base64 of 32 random bytes" in err
    assert "not-a-key" not in err
    short = base64.b64encode(bytes(16)).decode()
    bad.write_text(f'[secrets]\nencryption_key = "{K1}"\n\nold_keys = ["{K2}", "{short}"]\n')
    code, _, err = await run_cli("config", "check", config=bad)
    assert code != 0 and f"{bad}:4: [secrets] old_keys: item 2: expected the base64 of 32 random bytes" in err
    good = write_config(tmp_path / "good.toml", dsn, {"secrets": {"encryption_key": K1, "old_keys": [K2]}})
    code, _, err = await run_cli("config", "check", config=good)
    assert code == 0, err


async def test_without_a_key_the_daemon_warns_once(dsn: str, daemon_factory: Any) -> None:
    """No [secrets] encryption_key: one dispatcher.secrets_in_clear warning at start."""
    daemon = await start_daemon(daemon_factory, dsn)
    lines = [line for line in daemon.lines() if line.get("event") == "dispatcher.secrets_in_clear"]
    assert len(lines) == 1 and lines[0]["level"] == "warning"


def test_keyring_of_the_settings() -> None:
    """secrets.keyring reads [secrets]: the current key seals, old keys only open."""
    config = load_config(None, environ={"DISPATCHER_SECRETS__ENCRYPTION_KEY": K2,
                                        "DISPATCHER_SECRETS__OLD_KEYS": f'["{K1}"]'})  # fmt: skip
    keys = secrets.keyring(config)
    assert isinstance(keys, Keyring) and keys.current_header() == header(K2)
    assert keys.open(Keyring.of(K1).seal("x")) == "x"
