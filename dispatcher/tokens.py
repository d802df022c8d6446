"""API tokens: random secrets shown once; only their digest is stored."""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "dsp_"
# What new_token() makes: the prefix and 32 random bytes in URL-safe base64 without padding (43 characters).
_SHAPE = re.compile(r"^dsp_[A-Za-z0-9_-]{43}$")


def new_token() -> tuple[str, bytes]:
    """A fresh token and the digest to store for it."""
    token = PREFIX + secrets.token_urlsafe(32)
    return token, digest(token)


def digest(token: str) -> bytes:
    """The stored form of a token (SHA-256: tokens carry 256 random bits, so no slow hash is needed)."""
    return hashlib.sha256(token.encode()).digest()


def well_formed(token: str) -> bool:
    """Whether `token` could be one of ours at all (checked before any query, so junk costs no round trip)."""
    return _SHAPE.fullmatch(token) is not None
