"""Producer logins: a PostgreSQL login that may insert events of one organisation only (`dispatcher producer
create`). The binding is enforced by the events table's row trigger (event_organisation_not_allowed)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from dispatcher.resources import organisations
from dispatcher.resources.errors import Conflict, Forbidden, Invalid
from dispatcher.resources.scope import Context

# A role name that needs no quoting anywhere (psql, pg_hba.conf, a DSN); pg_ names are reserved by PostgreSQL.
_LOGIN = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SCRAM_ITERATIONS = 4096  # PostgreSQL's default scram_iterations


@dataclass(frozen=True, slots=True)
class ProducerLogin:
    """A login just made: its password is shown this once (the database keeps only a SCRAM verifier)."""

    login: str
    organisation: str
    password: str
    dsn: str


def default_login(organisation: str) -> str:
    """producer_<organisation>_<6 random hex digits>, within PostgreSQL's 63 characters."""
    return f"producer_{organisation.replace('-', '_')}"[:55] + "_" + secrets.token_hex(3)


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = _SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802, RFC 7677): given to CREATE ROLE
    instead of the password, so that no clear text reaches the server or its logs."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def producer_dsn(dsn: str, login: str, password: str) -> str:
    """`dsn` (a postgresql:// URL or libpq's key=value form) with the producer's login and password."""
    parts = urlsplit(dsn)
    if parts.scheme in ("postgres", "postgresql"):
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{quote(login, safe='')}:{quote(password, safe='')}@{host}"
        return urlunsplit(parts._replace(netloc=netloc))
    # key=value: later keywords override earlier ones
    return f"{dsn} user={login} password={password}"


async def create(ctx: Context, organisation: str, *, dsn: str, name: str | None = None) -> ProducerLogin:
    """A new login (member of dispatcher_producer, random password) bound to `organisation`, and the DSN to give
    its producer, made from `dsn` (the daemon's). Refuses an unknown organisation, a name taken by any role, and
    says what to grant when the database user may not create roles."""
    await organisations.require(ctx, organisation)
    login = name if name is not None else default_login(organisation)
    if not _LOGIN.match(login) or login.startswith("pg_"):
        raise Invalid("name", f"{login!r} is not a login name: a lower-case letter, then letters, digits and _ (at"
                      " most 63), not starting with pg_")  # fmt: skip
    password = secrets.token_urlsafe(24)
    outcome = await ctx.db.create_producer_login(
        login=login, organisation=organisation, password=scram_verifier(password)
    )
    if outcome == "exists":
        raise Conflict(f"a PostgreSQL role {login!r} exists already; choose another --name", field="name")
    if outcome == "no_createrole":
        raise Forbidden(
            "the database user may not create logins: grant it CREATEROLE (ALTER ROLE ... CREATEROLE; on"
            " PostgreSQL 16 and later also GRANT dispatcher_producer TO it WITH ADMIN OPTION), or run this with"
            " a user that may"
        )
    return ProducerLogin(login, organisation, password, producer_dsn(dsn, login, password))
