"""The database package: the only place that knows SQL by name.

`core` holds the pool, migrations and the embedded server; `queries` one typed method per named query;
`rows` the frozen values they return.
"""

from dispatcher.db.core import (
    LATEST_VERSION,
    SQL_DIR,
    ConstraintViolation,
    SchemaTooNew,
    connect_pool,
    embedded_dsn,
    embedded_running,
    is_transient,
    load_queries,
    migrate,
    migrate_dsn,
    migrations,
    schema_version,
    stop_embedded,
)
from dispatcher.db.queries import Database, Queries, Transaction

__all__ = [
    "LATEST_VERSION",
    "SQL_DIR",
    "ConstraintViolation",
    "Database",
    "Queries",
    "SchemaTooNew",
    "Transaction",
    "connect_pool",
    "embedded_dsn",
    "embedded_running",
    "is_transient",
    "load_queries",
    "migrate",
    "migrate_dsn",
    "migrations",
    "schema_version",
    "stop_embedded",
]
