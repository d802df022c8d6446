"""Unit tests for dispatcher.secretbox: golden values under a fixed key and nonce, clear values passing through,
unknown and damaged values refused with their key id, keys checked, re-sealing for rotation."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from dispatcher import secretbox
from dispatcher.delivery import live_secrets
from dispatcher.secretbox import CLEAR, Keyring, Undecryptable, UnknownKey

KEY = base64.b64encode(bytes(range(32))).decode()  # AAECAwQF...Hh8=
OTHER = base64.b64encode(bytes(range(32, 64))).decode()
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
GOLDEN = "enc:v1:630dcd29:AAAAAAAAAAAAAAAAedTGu9ZzzttD+ZBHIGvawKMxAiRC1DBruNf/05+2MmQCPqrdeYXd5EM2c06vqpX5FEnZnzfB"


def test_key_id_is_a_short_sha256() -> None:
    """The key id is the first 8 hex digits of the key's SHA-256 (of bytes 0..31: 630dcd29...)."""
    assert secretbox.key_id(bytes(range(32))) == "630dcd29"


def test_seal_with_a_fixed_nonce_gives_the_golden_value() -> None:
    """AES-256-GCM with the tag header as associated data, stored as enc:v1:<key id>:<base64 nonce+ciphertext>."""
    assert Keyring.of(KEY).seal(SECRET, nonce=bytes(12)) == GOLDEN


def test_the_golden_value_opens() -> None:
    """The golden value opens to the secret under its key, also when that key is only an old one."""
    assert Keyring.of(KEY).open(GOLDEN) == SECRET
    assert Keyring.of(OTHER, [KEY]).open(GOLDEN) == SECRET


def test_fresh_nonces_differ_and_round_trip() -> None:
    """Two seals of one value differ (random nonces) and both open."""
    keys = Keyring.of(KEY)
    first, second = keys.seal(SECRET), keys.seal(SECRET)
    assert first != second
    assert keys.open(first) == keys.open(second) == SECRET


def test_clear_values_pass_through() -> None:
    """A value without the enc: tag (no key configured, or written before one was) opens as itself; without a key
    seal stores in clear."""
    assert Keyring.of(KEY).open(SECRET) == SECRET
    assert CLEAR.open(SECRET) == SECRET
    assert CLEAR.seal(SECRET) == SECRET
    assert not CLEAR.encrypting


def test_unknown_key_id_is_refused_naming_it() -> None:
    """A value under a key that is not configured raises UnknownKey naming the key id, never the value."""
    with pytest.raises(UnknownKey, match="key id 630dcd29") as caught:
        Keyring.of(OTHER).open(GOLDEN)
    assert SECRET not in str(caught.value)
    with pytest.raises(UnknownKey):
        CLEAR.open(GOLDEN)


def test_damaged_or_moved_values_are_refused() -> None:
    """A flipped byte, a truncated value, bad base64 or an unknown version do not open."""
    keys = Keyring.of(KEY)
    raw = bytearray(base64.b64decode(GOLDEN.split(":")[3]))
    raw[-1] ^= 1
    flipped = "enc:v1:630dcd29:" + base64.b64encode(bytes(raw)).decode()
    for bad in (flipped, "enc:v1:630dcd29:AAAA", "enc:v1:630dcd29:***", "enc:v9:630dcd29:AAAA", "enc:"):
        with pytest.raises(Undecryptable):
            keys.open(bad)


@pytest.mark.parametrize(
    "text", ["k3y", "", base64.b64encode(bytes(16)).decode(), base64.b64encode(bytes(33)).decode(), "!!!!"]
)
def test_malformed_keys_are_refused(text: str) -> None:
    """A key is the base64 of exactly 32 bytes; the message says how to make one and never repeats the text."""
    with pytest.raises(ValueError, match="openssl rand -base64 32") as caught:
        secretbox.parse_key(text)
    if text:
        assert text not in str(caught.value)


def test_url_safe_keys_and_make_key_are_accepted() -> None:
    """The URL-safe alphabet reads the same key; make_key makes a key parse_key accepts."""
    urlsafe = base64.urlsafe_b64encode(bytes(range(200, 232))).decode()
    assert secretbox.parse_key(urlsafe) == bytes(range(200, 232))
    assert len(secretbox.parse_key(secretbox.make_key())) == 32


def test_reseal_moves_values_under_the_current_key() -> None:
    """reseal re-encrypts clear and old-key values under the current key and leaves current ones as they are."""
    keys = Keyring.of(OTHER, [KEY])
    header = keys.current_header()
    assert header is not None and header.startswith("enc:v1:")
    for stored in (SECRET, GOLDEN):
        assert not keys.is_current(stored)
        moved = keys.reseal(stored)
        assert moved.startswith(header) and keys.is_current(moved)
        assert keys.open(moved) == SECRET
        assert keys.reseal(moved) == moved


def test_live_secrets_open_only_live_entries() -> None:
    """The claim opens the live secrets; an expired entry under an unknown key is never decrypted."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    stored = [
        {"secret": GOLDEN, "expires_at": None},
        {"secret": "enc:v1:deadbeef:AAAA", "expires_at": "2025-12-31T00:00:00+00:00"},
        {"secret": SECRET, "expires_at": "2026-01-02T00:00:00+00:00"},
    ]
    assert live_secrets(stored, now, Keyring.of(KEY)) == (SECRET, SECRET)
