"""Producers confined to their organisation (issue 14, item 5): a login bound in producer_login may insert events
of its organisation only, by INSERT or dispatcher_emit; unbound logins are unaffected; `dispatcher producer
create` makes such a login; an idempotency key never yields another organisation's event id.

Roles are cluster-wide: each test names its own uniquely and drops it at the end."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from dispatcher.config import load_config
from dispatcher.db import Database, connect_pool
from dispatcher.resources import Conflict, Context, Forbidden, Invalid, NotFound, producers
from tests.support.cli import run_cli
from tests.support.daemon import write_config

pytestmark = pytest.mark.db

NOT_ALLOWED = "event_organisation_not_allowed"
INSERT = "INSERT INTO events (organisation, type, payload) VALUES ($1, 'request.create', '{}')"
EMIT = "SELECT dispatcher_emit($1, 'request.create', '{}'::jsonb, idempotency_key => $2)"

Connect = Callable[[str], Awaitable[asyncpg.Connection]]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def dsn_as(dsn: str, user: str) -> str:
    """The same DSN with another user (the embedded server trusts local connections)."""
    replaced, n = re.subn(r"^(postgresql://)[^:@/]*(:[^@/]*)?@", rf"\g<1>{user}@", dsn)
    assert n == 1, dsn
    return replaced


@pytest.fixture
async def orgs(conn: asyncpg.Connection) -> None:
    """Organisations acme and globex."""
    await conn.execute("INSERT INTO organisation (id, name) VALUES ('acme', 'Acme'), ('globex', 'Globex')")


@pytest.fixture
async def roles(conn: asyncpg.Connection) -> AsyncIterator[list[str]]:
    """Names of roles the test makes: their privileges here and the roles themselves are dropped afterwards."""
    made: list[str] = []
    yield made
    for role in made:
        if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            await conn.execute(f"DROP OWNED BY {role}")
            await conn.execute(f"DROP ROLE {role}")


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """asyncpg.connect, closing every connection at the end (before the roles are dropped)."""
    opened: list[asyncpg.Connection] = []

    async def open_one(dsn: str) -> asyncpg.Connection:
        connection = await asyncpg.connect(dsn)
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        await connection.close()


@pytest.fixture
def ctx(db: Database) -> Context:
    return Context(db, load_config(None))


async def bound_login(
    ctx: Context, dsn: str, organisation: str, roles: list[str], connect: Connect
) -> asyncpg.Connection:
    """A connection as a new login bound to `organisation`, made by the operation itself."""
    made = await producers.create(ctx, organisation, dsn=dsn, name=unique("producer"))
    roles.append(made.login)
    producer = await connect(made.dsn)
    assert await producer.fetchval("SELECT session_user") == made.login
    return producer


async def assert_refused(statement: Awaitable[object]) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await statement
    assert refused.value.constraint_name == NOT_ALLOWED
    assert refused.value.hint and "dispatcher producer create" in refused.value.hint


async def test_bound_login_emits_into_its_organisation_only(
    dsn: str, conn: asyncpg.Connection, orgs: None, ctx: Context, roles: list[str], connect: Connect
) -> None:
    """A login bound to acme inserts acme's events by plain INSERT, the idempotent INSERT and dispatcher_emit;
    each of the three is refused for globex with a check_violation named event_organisation_not_allowed."""
    producer = await bound_login(ctx, dsn, "acme", roles, connect)
    await producer.execute(INSERT, "acme")
    await producer.execute(
        "INSERT INTO events (organisation, type, payload, idempotency_key)"
        " VALUES ('acme', 'problem.update', '{}', 'problem-42-v7') ON CONFLICT DO NOTHING"
    )
    assert isinstance(await producer.fetchval(EMIT, "acme", None), uuid.UUID)

    await assert_refused(producer.execute(INSERT, "globex"))
    await assert_refused(
        producer.execute(
            "INSERT INTO events (organisation, type, payload, idempotency_key)"
            " VALUES ('globex', 'problem.update', '{}', 'problem-42-v7') ON CONFLICT DO NOTHING"
        )
    )
    await assert_refused(producer.fetchval(EMIT, "globex", None))
    counts = dict(await conn.fetch("SELECT organisation, count(*) FROM events GROUP BY organisation"))
    assert counts == {"acme": 3}


async def test_unbound_logins_are_unaffected(
    dsn: str, conn: asyncpg.Connection, orgs: None, ctx: Context, roles: list[str], connect: Connect
) -> None:
    """A producer login with no binding (granted dispatcher_producer by hand) and the superuser still emit into
    any organisation, while a bound login exists."""
    await bound_login(ctx, dsn, "acme", roles, connect)
    role = unique("unbound")
    await conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE dispatcher_producer")
    roles.append(role)
    unbound = await connect(dsn_as(dsn, role))
    for organisation in ("acme", "globex"):
        await unbound.execute(INSERT, organisation)
        await unbound.fetchval(EMIT, organisation, None)
        await conn.execute(INSERT, organisation)
    assert await conn.fetchval("SELECT count(*) FROM events") == 6


async def test_idempotency_key_never_yields_another_organisations_event(
    dsn: str, conn: asyncpg.Connection, orgs: None, ctx: Context, roles: list[str], connect: Connect
) -> None:
    """An idempotency key acme used: globex's producer reusing it gets a new event of its own, and naming acme
    to fish for acme's id is refused instead of answered."""
    acme_id = await conn.fetchval(EMIT, "acme", "order-1")
    globex = await bound_login(ctx, dsn, "globex", roles, connect)

    globex_id = await globex.fetchval(EMIT, "globex", "order-1")
    assert globex_id != acme_id
    assert await globex.fetchval(EMIT, "globex", "order-1") == globex_id  # its own repeat: its own id
    await assert_refused(globex.fetchval(EMIT, "acme", "order-1"))
    rows = await conn.fetch("SELECT id, organisation FROM events WHERE idempotency_key = 'order-1' ORDER BY 2")
    assert [(r["id"], r["organisation"]) for r in rows] == [(acme_id, "acme"), (globex_id, "globex")]


async def test_create_refuses_what_it_cannot_do(
    dsn: str, conn: asyncpg.Connection, orgs: None, ctx: Context, roles: list[str]
) -> None:
    """The operation refuses an unknown organisation, a name that is not a plain login name, a name any role has
    already (nothing bound), and a database user without CREATEROLE (saying what to grant)."""
    with pytest.raises(NotFound):
        await producers.create(ctx, "nobody", dsn=dsn, name=unique("producer"))
    for bad in ("Shop", "shop-1", "pg_shop", "1shop", "shop; DROP TABLE events", "x" * 64):
        with pytest.raises(Invalid) as invalid:
            await producers.create(ctx, "acme", dsn=dsn, name=bad)
        assert invalid.value.field == "name"

    taken = unique("taken")
    await conn.execute(f"CREATE ROLE {taken} NOLOGIN")
    roles.append(taken)
    with pytest.raises(Conflict):
        await producers.create(ctx, "acme", dsn=dsn, name=taken)
    assert await conn.fetchval("SELECT count(*) FROM producer_login") == 0

    weak = unique("nocreaterole")
    await conn.execute(f"CREATE ROLE {weak} LOGIN")
    roles.append(weak)
    await conn.execute(f"GRANT SELECT ON organisation TO {weak}")
    weak_db = Database(await connect_pool(dsn_as(dsn, weak), 1))
    try:
        with pytest.raises(Forbidden, match="CREATEROLE"):
            await producers.create(Context(weak_db, ctx.config), "acme", dsn=dsn, name=unique("producer"))
    finally:
        await weak_db.close()


async def test_password_is_stored_as_the_scram_verifier_postgresql_makes(
    conn: asyncpg.Connection, roles: list[str]
) -> None:
    """scram_verifier computes what PostgreSQL stores for a password (same salt): the server keeps it as given,
    so the clear password never reaches it."""
    role = unique("scram")
    await conn.execute("SET password_encryption = 'scram-sha-256'")
    await conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'correct horse'")
    roles.append(role)
    stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
    _, iterations, salt = re.split(r"[$:]", stored)[:3]
    assert producers.scram_verifier("correct horse", base64.b64decode(salt), int(iterations)) == stored


async def test_cli_producer_create_prints_a_dsn_that_connects_confined(
    dsn: str, conn: asyncpg.Connection, orgs: None, roles: list[str], tmp_path: Path, connect: Connect
) -> None:
    """`dispatcher producer create` prints a DSN last; a connection with it is the new login, its password is
    stored as a SCRAM verifier, it emits into its organisation and is refused another's. An unknown
    organisation and a taken name fail with exit code 1 and a message."""
    config = write_config(tmp_path / "dispatcher.toml", dsn, {})
    login = unique("producer")
    roles.append(login)
    code, out, err = await run_cli("producer", "create", "--organisation", "acme", "--name", login, config=config)
    assert code == 0, err
    printed = out.strip().splitlines()[-1]
    producer = await connect(printed)
    assert await producer.fetchval("SELECT session_user") == login
    stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", login)
    assert stored.startswith("SCRAM-SHA-256$")
    assert (await conn.fetchval("SELECT organisation FROM producer_login WHERE role_name = $1", login)) == "acme"
    await producer.execute(INSERT, "acme")
    await assert_refused(producer.execute(INSERT, "globex"))

    code, _, err = await run_cli("producer", "create", "--organisation", "acme", "--name", login, config=config)
    assert code == 1
    assert "exists already" in err
    code, _, err = await run_cli("producer", "create", "--organisation", "nobody", config=config)
    assert code == 1
    assert "no organisation 'nobody'" in err
