"""Pure: webhook secrets and policy keys encrypted at rest with AES-256-GCM, each value tagged with its key's id.

A stored value is ``enc:v1:<key id>:<base64 of nonce (12 bytes) + ciphertext + tag>``; the key id is the first
8 hex digits of the SHA-256 of the key, and the text before the base64 (``enc:v1:<key id>:``) is the associated
data, so a value cannot be moved under another id. A value without the ``enc:`` tag is one stored in clear (no key
configured, or written before one was) and opens as itself. Keys are ``[secrets] encryption_key`` (new values are
sealed under it) and ``[secrets] old_keys`` (still opened, until ``dispatcher secrets rotate`` re-seals them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TAG: Final = "enc:"
VERSION: Final = "v1"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
MAKE_KEY_HINT: Final = "make one with: openssl rand -base64 32"


class SecretboxError(Exception):
    """A stored secret cannot be opened."""


class UnknownKey(SecretboxError):
    """The value is encrypted under a key that is neither [secrets] encryption_key nor one of [secrets] old_keys."""


class Undecryptable(SecretboxError):
    """The value does not decrypt: damaged, or malformed."""


def parse_key(text: str) -> bytes:
    """The 32 bytes a key's text (base64, standard or URL-safe alphabet) stands for; ValueError otherwise (the
    message never repeats the text: it is a secret)."""
    compact = "".join(text.split())
    try:
        raw = base64.b64decode(compact.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"expected the base64 of {KEY_BYTES} random bytes; {MAKE_KEY_HINT}") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"expected the base64 of {KEY_BYTES} random bytes, got {len(raw)} bytes; {MAKE_KEY_HINT}")
    return raw


def key_id(key: bytes) -> str:
    """A short public name for a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def make_key() -> str:
    """A new random key, as the base64 text ``[secrets] encryption_key`` takes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def is_sealed(stored: str) -> bool:
    """Whether a stored value is encrypted (carries the ``enc:`` tag)."""
    return stored.startswith(TAG)


def _header(kid: str) -> str:
    return f"{TAG}{VERSION}:{kid}:"


@dataclass(frozen=True, slots=True)
class Keyring:
    """The current key (None: values are stored in clear) and every key values may still be sealed under, by id."""

    current_id: str | None
    _ciphers: Mapping[str, AESGCM] = field(repr=False)

    @classmethod
    def of(cls, current: str | None, old: Sequence[str] = ()) -> Keyring:
        """From ``[secrets] encryption_key`` and ``old_keys`` (base64 texts, checked by the configuration)."""
        ciphers: dict[str, AESGCM] = {}
        for text in old:
            key = parse_key(text)
            ciphers[key_id(key)] = AESGCM(key)
        current_id = None
        if current is not None:
            key = parse_key(current)
            current_id = key_id(key)
            ciphers[current_id] = AESGCM(key)
        return cls(current_id, ciphers)

    @property
    def encrypting(self) -> bool:
        """Whether new values are sealed (a current key is set)."""
        return self.current_id is not None

    def seal(self, plain: str, *, nonce: bytes | None = None) -> str:
        """``plain`` as it is stored: sealed under the current key, or unchanged when there is none. ``nonce`` is
        for golden tests only (a fresh random one otherwise: never reuse a nonce under one key)."""
        if self.current_id is None:
            return plain
        header = _header(self.current_id)
        nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
        sealed = self._ciphers[self.current_id].encrypt(nonce, plain.encode("utf-8"), header.encode("ascii"))
        return header + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, stored: str) -> str:
        """The clear text of a stored value; a value without the ``enc:`` tag is returned unchanged. Raises
        UnknownKey or Undecryptable (their messages name the key id, never the value)."""
        if not stored.startswith(TAG):
            return stored
        parts = stored.split(":", 3)
        if len(parts) != 4 or parts[1] != VERSION:
            raise Undecryptable(f"not a value this version can read (expected {TAG}{VERSION}:<key id>:<data>)")
        kid, data = parts[2], parts[3]
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise UnknownKey(
                f"encrypted under key id {kid}, which is neither [secrets] encryption_key nor one of "
                "[secrets] old_keys: add the key it was encrypted with to old_keys"
            )
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise Undecryptable(f"damaged value under key id {kid}: not base64") from None
        if len(raw) < NONCE_BYTES + 16:
            raise Undecryptable(f"damaged value under key id {kid}: too short")
        try:
            plain = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _header(kid).encode("ascii"))
        except InvalidTag:
            raise Undecryptable(f"value under key id {kid} does not decrypt: damaged") from None
        return plain.decode("utf-8")

    def is_current(self, stored: str) -> bool:
        """Whether a stored value is as ``seal`` would store it now: under the current key, or in clear when none."""
        if self.current_id is None:
            return not stored.startswith(TAG)
        return stored.startswith(_header(self.current_id))

    def reseal(self, stored: str) -> str:
        """A stored value re-sealed under the current key (unchanged when it already is)."""
        return stored if self.is_current(stored) else self.seal(self.open(stored))

    def current_header(self) -> str | None:
        """The prefix of every value sealed under the current key (None: no key)."""
        return None if self.current_id is None else _header(self.current_id)


CLEAR: Final = Keyring(None, {})
"""No keys: values are stored in clear and sealed ones cannot be opened."""
