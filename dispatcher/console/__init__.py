"""The operator console: a static single-page application at /console that speaks the documented JSON API, and
the sign-in routes that keep its token in an HttpOnly cookie (see `dispatcher.console.app`)."""

from dispatcher.console.app import mount

__all__ = ["mount"]
