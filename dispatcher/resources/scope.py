"""Who an operation runs for, and what it runs with."""

from __future__ import annotations

from dataclasses import dataclass

from dispatcher.config import Config
from dispatcher.db import Database
from dispatcher.vocab import Role


@dataclass(frozen=True, slots=True)
class Scope:
    """The caller: its organisation and role; the token (None for the CLI, which has the database itself)."""

    organisation: str
    role: Role
    token_id: int | None = None
    webhook_id: int | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What operations need: the database (the API's own pool, or the CLI's) and the configuration."""

    db: Database
    config: Config
