"""Every operation on the product's records, once: the API dialects, the CLI and the console call these.

Each operation takes a `Context` (database, configuration) and a `Scope` (organisation, role), validates its
input, raises `errors` that name the field, and returns frozen values. Nothing here knows HTTP or the CLI.
"""

from dispatcher.resources.errors import (
    Busy,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RateLimited,
    Rejected,
    ResourceError,
)
from dispatcher.resources.scope import Context, Scope

__all__ = [
    "Busy",
    "Conflict",
    "Context",
    "Forbidden",
    "Invalid",
    "NotFound",
    "RateLimited",
    "Rejected",
    "ResourceError",
    "Scope",
]
