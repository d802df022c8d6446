"""API tokens: random secrets shown once; only their digest is stored."""

from __future__ import annotations

import hashlib
import secrets

PREFIX = "dsp_"


def new_token() -> tuple[str, bytes]:
    """A fresh token and the digest to store for it."""
    token = PREFIX + secrets.token_urlsafe(32)
    return token, digest(token)


def digest(token: str) -> bytes:
    """The stored form of a token (SHA-256: tokens carry 256 random bits, so no slow hash is needed)."""
    return hashlib.sha256(token.encode()).digest()
