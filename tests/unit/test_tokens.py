"""Tokens: what new_token() makes is well formed; anything else is refused before a query."""

from __future__ import annotations

import pytest

from dispatcher.tokens import PREFIX, digest, new_token, well_formed


def test_new_tokens_are_well_formed_and_their_digest_is_sha256() -> None:
    """Every new token has the shape authenticate() accepts; the digest is SHA-256 of its text (32 bytes)."""
    for _ in range(50):
        token, stored = new_token()
        assert well_formed(token) and token.startswith(PREFIX) and len(token) == 47
        assert stored == digest(token) and len(stored) == 32


@pytest.mark.parametrize(
    "token",
    [
        "",
        "dsp_",
        "dsp_" + "a" * 42,
        "dsp_" + "a" * 44,
        "xyz_" + "a" * 43,
        "dsp_" + "a" * 42 + "!",
        "dsp_" + "é" * 43,
        "dsp_" + "a" * 43 + "\n",
        "' OR 1=1 --",
    ],
)
def test_malformed_tokens_are_refused(token: str) -> None:
    """Wrong prefix, wrong length, characters outside URL-safe base64 (a trailing newline included)."""
    assert not well_formed(token)
