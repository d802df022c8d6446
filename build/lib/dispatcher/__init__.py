"""dispatcher: a webhook event-dispatch daemon fed by a Postgres queue table."""

__version__ = "0.1.0"
