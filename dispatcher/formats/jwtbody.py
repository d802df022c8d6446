"""Pure: JWT bodies for webhooks under a 4me webhook policy (SPEC §6 "Webhook with a JWT policy").

The body a webhook's format builds (its envelope) becomes the `data` claim of a JWT signed with the policy's key,
and the request body is `{"jwt": "<token>"}`, as 4me sends. Claims: `data`, `jti` (the delivery id), `sub` (the
webhook id), `iss` (`[api] public_url`), `aud` (the policy's audience, when it has one), `iat`, `nbf`, and `exp`
only when the policy sets `jwt_claim_expires_in` (minutes). It is signed again on every attempt (the caller
passes the attempt's time), so `iat`/`exp` are always fresh. PyJWT signs; `cryptography` loads the keys.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import jwt
from cryptography.hazmat.primitives import serialization

from dispatcher.formats.base import dumps

ALGORITHMS: Final = {"rs256": "RS256", "es256": "ES256", "hs256": "HS256"}
"""A policy's `jwt_alg` and the JWT `alg` it signs with."""


class PolicyError(Exception):
    """The delivery cannot be signed under its policy (disabled, no issuer, a key that does not load)."""


@dataclass(frozen=True, slots=True)
class JwtPolicy:
    """What signing needs of a webhook policy: its id, state, algorithm, audience, expiry and key."""

    id: int
    disabled: bool
    alg: str
    audience: str | None
    expires_in_minutes: int | None
    key: str

    def __repr__(self) -> str:  # the key never appears in a log line or an error
        return f"JwtPolicy(id={self.id}, alg={self.alg!r}, disabled={self.disabled})"


@functools.lru_cache(maxsize=256)
def _private_key(alg: str, material: str) -> Any:
    """The key object PyJWT signs with: a parsed private key (parsing an RSA PEM costs milliseconds, so parsed keys
    are kept), or the hs256 shared key's bytes."""
    if alg == "hs256":
        return material.encode("utf-8")
    return serialization.load_pem_private_key(material.encode("ascii"), password=None)


def claims(
    envelope: bytes, policy: JwtPolicy, *, delivery_id: UUID, webhook_id: int, issuer: str, now: int
) -> dict[str, Any]:
    """The token's claims for one attempt at unix time `now`."""
    claim: dict[str, Any] = {
        "data": json.loads(envelope),
        "jti": str(delivery_id),
        "sub": str(webhook_id),
        "iss": issuer,
        "iat": now,
        "nbf": now,
    }
    if policy.audience:
        claim["aud"] = policy.audience
    if policy.expires_in_minutes:
        claim["exp"] = now + 60 * policy.expires_in_minutes
    return claim


def jwt_body(envelope: bytes, policy: JwtPolicy, *, delivery_id: UUID, webhook_id: int, issuer: str, now: int) -> bytes:
    """`{"jwt": "<token>"}` around `envelope`; PolicyError when the policy cannot sign (the caller makes that a
    failed attempt)."""
    if policy.disabled:
        raise PolicyError(f"webhook policy {policy.id} is disabled: its webhooks' deliveries are held, not sent")
    if not issuer:
        raise PolicyError("[api] public_url is not set: JWT bodies need it as their issuer (iss)")
    algorithm = ALGORITHMS.get(policy.alg)
    if algorithm is None:
        raise PolicyError(f"webhook policy {policy.id} has an unknown jwt_alg {policy.alg!r}")
    try:
        key = _private_key(policy.alg, policy.key)
    except (ValueError, TypeError):
        raise PolicyError(f"the key of webhook policy {policy.id} does not load") from None
    token = jwt.encode(
        claims(envelope, policy, delivery_id=delivery_id, webhook_id=webhook_id, issuer=issuer, now=now),
        key,
        algorithm=algorithm,
        headers={"typ": "JWT"},
    )
    return ('{"jwt":' + dumps(token) + "}").encode()
