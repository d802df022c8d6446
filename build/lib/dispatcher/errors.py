"""The error hierarchy: each class's docstring is its default message."""

from __future__ import annotations


class DispatcherError(Exception):
    """dispatcher failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
