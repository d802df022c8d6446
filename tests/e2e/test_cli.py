"""The `dispatcher` command as a user runs it: a subprocess against this test's database."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from dispatcher.db import migrations
from dispatcher.tokens import digest
from tests.support.cli import run_cli
from tests.support.daemon import start_daemon, write_config
from tests.support.receivers import Receiver

pytestmark = pytest.mark.db


@pytest.fixture
def config(dsn: str, tmp_path: Path) -> Path:
    return write_config(tmp_path / "dispatcher.toml", dsn, {})


async def test_token_create_prints_the_token_last_and_stores_only_its_digest(conn, config) -> None:
    """`token create` makes the organisation if missing, prints the token alone on the last line, and the
    database holds its SHA-256 digest, never the token."""
    code, out, _ = await run_cli("token", "create", "--organisation", "newco", "--role", "producer", config=config)
    assert code == 0
    token = out.strip().splitlines()[-1]
    assert token.startswith("dsp_") and " " not in token
    row = await conn.fetchrow("SELECT organisation, role, digest FROM token")
    assert (row["organisation"], row["role"], bytes(row["digest"])) == ("newco", "producer", digest(token))
    assert await conn.fetchval("SELECT count(*) FROM organisation WHERE id = 'newco'") == 1


async def test_webhook_create_emit_and_delivery(conn, dsn, config, receiver: Receiver, daemon_factory) -> None:
    """`webhook create` prints one JSON object with id and secret; `emit` prints the event id; the running
    daemon delivers that event to that webhook; `webhook list` shows it without its secret."""
    code, _, err = await run_cli("org", "create", "acme", config=config)
    assert code == 0, err
    code, out, err = await run_cli(
        "webhook", "create", "--organisation", "acme", "--url", receiver.url, "--event", "request.*", config=config
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["request.*"]
    assert created["state"] == "new"
    await start_daemon(daemon_factory, dsn)
    code, out, _ = await run_cli(
        "emit", "--organisation", "acme", "request.create", "--payload", '{"n": 7}', config=config
    )
    assert code == 0
    event_id = out.strip()
    await receiver.wait_for(lambda: event_id in receiver.ids())
    [arrival] = [a for a in receiver.arrivals if a.message_id == event_id]
    assert arrival.json["data"] == {"n": 7}
    code, out, _ = await run_cli("webhook", "list", "--organisation", "acme", config=config)
    listed = json.loads(out.splitlines()[0])
    assert listed["id"] == created["id"] and "secret" not in listed


async def test_webhook_create_rejects_bad_input(conn, config) -> None:
    """A non-http URL, an address the SSRF guard refuses and an unknown event type are refused with a
    message naming the option; nothing is created."""
    await conn.execute("INSERT INTO organisation (id, name) VALUES ('acme', 'acme')")
    code, _, err = await run_cli("webhook", "create", "--organisation", "acme", "--url", "ftp://x.test/", config=config)
    assert code == 1 and "--url" in err
    code, _, err = await run_cli(
        "webhook", "create", "--organisation", "acme", "--url", "http://10.0.0.1/", config=config
    )
    assert code == 1 and "--url" in err and "private" in err
    code, _, err = await run_cli(
        "webhook", "create", "--organisation", "acme", "--url", "https://x.test/", "--event", "nope.nothing",
        config=config,
    )  # fmt: skip
    assert code == 1 and "nope.nothing" in err


async def test_unknown_organisations_are_refused_and_org_create_makes_them(conn, config) -> None:
    """`webhook create`, `webhook list` and `emit` refuse an organisation that does not exist, naming it and
    how to create it (a typo no longer makes a new organisation); `org create` makes it, a second time is a
    conflict; `org list` shows it."""
    for args in (
        ("webhook", "create", "--organisation", "acne", "--url", "https://x.test/"),
        ("webhook", "list", "--organisation", "acne"),
        ("emit", "--organisation", "acne", "request.create"),
    ):
        code, _, err = await run_cli(*args, config=config)
        assert code == 1 and "no organisation 'acne'" in err and "dispatcher org create acne" in err, err
    assert await conn.fetchval("SELECT count(*) FROM organisation") == 0
    code, out, err = await run_cli("org", "create", "acme", "--name", "Acme Ltd", config=config)
    assert code == 0 and "dispatcher token create --organisation acme" in out, err
    code, _, err = await run_cli("org", "create", "acme", config=config)
    assert code == 1 and "exists already" in err
    code, _, err = await run_cli("org", "create", "Not An Id", config=config)
    assert code == 1 and "is not an organisation id" in err
    code, out, _ = await run_cli("org", "list", config=config)
    assert [json.loads(line)["name"] for line in out.splitlines()] == ["Acme Ltd"]


async def test_emit_of_an_unknown_type_names_the_constraint(conn, config) -> None:
    """`emit` of a type outside the catalogue fails with the constraint name and inserts nothing."""
    await conn.execute("INSERT INTO organisation (id) VALUES ('acme')")
    code, _, err = await run_cli("emit", "--organisation", "acme", "no.such_type", config=config)
    assert code == 1
    assert "event_type_unknown" in err
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_bad_config_fails_check_and_startup_with_line_and_key(tmp_path: Path) -> None:
    """An unknown key or a bad duration fails `config check` and `run` with the file, line and key."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[worker]\nconcurrency = 10\npoll_interval = "fast"\n')
    for command in (("config", "check"), ("run",)):
        code, _, err = await run_cli(*command, config=bad)
        assert code == 2
        assert f"{bad}:3" in err and "poll_interval" in err
    bad.write_text("[delivery]\ntimeout = 5\nretries = 3\n")
    code, _, err = await run_cli("config", "check", config=bad)
    assert code == 2 and f"{bad}:3" in err and "retries" in err


async def test_config_show_masks_the_dsn_password(tmp_path: Path) -> None:
    """`config show` prints every section with the DSN's password masked."""
    path = tmp_path / "d.toml"
    path.write_text('[database]\ndsn = "postgresql://app:hunter2@db.internal/dispatcher"\n')
    code, out, _ = await run_cli("config", "show", config=path)
    assert code == 0
    assert "hunter2" not in out
    assert "[retry]" in out and "dispatcher_producer" in out


async def test_migrate_is_idempotent_from_the_cli(empty_dsn: str, tmp_path: Path) -> None:
    """`dispatcher migrate` applies the migrations once and reports an up-to-date schema the second time."""
    config = write_config(tmp_path / "m.toml", empty_dsn, {})
    code, out, _ = await run_cli("migrate", config=config)
    known = [m.name for m in migrations()]
    assert code == 0 and all(name in out for name in known), out
    code, out, _ = await run_cli("migrate", config=config)
    assert code == 0 and "up to date" in out
    conn = await asyncpg.connect(empty_dsn)
    try:
        applied = [r["name"] for r in await conn.fetch("SELECT name FROM dispatcher_migration ORDER BY version")]
        assert applied == known
    finally:
        await conn.close()
