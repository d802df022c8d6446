"""What an operation can refuse, each naming the input at fault. The dialects choose the status codes."""

from __future__ import annotations

from dispatcher.errors import DispatcherError


class ResourceError(DispatcherError):
    """The operation cannot be done."""

    code = "error"

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = str(self)
        self.field = field


class NotFound(ResourceError):
    """No such record in this organisation."""

    code = "not_found"

    def __init__(self, what: str) -> None:
        super().__init__(f"no such {what}")
        self.what = what


class Invalid(ResourceError):
    """A value is not acceptable; `field` names it."""

    code = "invalid_field"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, field=field)


class Rejected(ResourceError):
    """The database refused the record: `code` is the constraint, `hint` what to do."""

    def __init__(self, constraint: str, message: str, *, field: str | None, hint: str | None = None) -> None:
        super().__init__(message, field=field)
        self.code = constraint
        self.hint = hint


class Conflict(ResourceError):
    """The record exists already, or is in a state that does not allow this."""

    code = "conflict"


class Forbidden(ResourceError):
    """The caller's role may not do this."""

    code = "forbidden"


class RateLimited(ResourceError):
    """Too many requests of this kind; try again after `retry_after` seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Busy(ResourceError):
    """The operation kept racing with the daemon; try again."""

    code = "busy"
