"""Pure: receiver text made inert before it is stored, logged or shown.

A receiver chooses its response body and reason phrase; they are kept for the delivery log, printed by the CLI
and shown in the console. Control characters (C0 but tab and newline, DEL, C1: terminal escape sequences among
them) and bidirectional overrides (text that reads differently from what it is) are replaced with U+FFFD.
"""

from __future__ import annotations

import re

# What a stored excerpt keeps: 4 KiB of the body, decoded.
MAX_TEXT = 4096

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def inert(text: str, limit: int = MAX_TEXT) -> str:
    """`text` with every control character and bidi override replaced by U+FFFD, at most `limit` characters."""
    return _UNSAFE.sub("\ufffd", text[:limit])


def excerpt(body: bytes, limit: int = MAX_TEXT) -> str:
    """A response body as stored text: at most `limit` bytes decoded as UTF-8 (errors replaced), made inert."""
    return inert(body[:limit].decode("utf-8", "replace"), limit)
