"""Webhook signatures: Standard Webhooks and ``Ricloud-Signature`` (SPEC §6 "Signatures", "Secrets").

Pure functions: they take the secrets, the exact body bytes and a timestamp (or, to verify, the
current time as ``now``) and do no I/O and read no clock, so they are tested with golden vectors.

Both schemes are HMAC-SHA256 over the exact bytes sent, with the attempt's unix seconds:

* Standard Webhooks (every request): ``webhook-signature`` holds space-separated ``v1,<base64>``
  entries, one per live secret, over ``"<msg_id>.<timestamp>.<body>"``, keyed with the base64-decoded
  part of the secret after ``whsec_``. The ``standardwebhooks`` and ``svix`` libraries verify it.
* ``Ricloud-Signature`` (the ricloud envelope): ``t=<timestamp>,s=<base64>`` over
  ``"<timestamp>.<body>"``, keyed with the *whole* secret string, ``whsec_`` included, as UTF-8;
  ricloud-py 3.2.0's ``ricloud.signing.Signature`` verifies it (see :func:`ricloud_signature`).

The verification helpers are for receivers (and our own tests); they take a list of secrets so that
either side of a rotation verifies.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from secrets import token_bytes
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = [
    "MalformedHeaderError",
    "MissingHeaderError",
    "NoMatchingSignatureError",
    "PolicyKey",
    "SignatureError",
    "TimestampOutOfToleranceError",
    "generate_policy_key",
    "generate_secret",
    "ricloud_signature",
    "standard_headers",
    "standard_signature",
    "verify_jwt",
    "verify_ricloud",
    "verify_standard",
]

SECRET_PREFIX = "whsec_"
"""The prefix of every webhook secret; the rest is base64 of the Standard Webhooks key."""

SECRET_BYTES = 32
"""How many random bytes :func:`generate_secret` encodes."""

DEFAULT_TOLERANCE = 300
"""How far (seconds) a signature's timestamp may be from ``now``, either way, by default."""

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"
RICLOUD_HEADER = "Ricloud-Signature"


class SignatureError(Exception):
    """The signature does not verify."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class MissingHeaderError(SignatureError):
    """A signature header is missing."""


class MalformedHeaderError(SignatureError):
    """A signature header is not in the expected format."""


class TimestampOutOfToleranceError(SignatureError):
    """The signature's timestamp is too far from the current time."""


class NoMatchingSignatureError(SignatureError):
    """No signature matches the body under any of the secrets."""


def generate_secret() -> str:
    """Return a new webhook secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(token_bytes(SECRET_BYTES)).decode("ascii")


@dataclass(frozen=True, slots=True)
class PolicyKey:
    """A new webhook policy's key: `signing_key` stays in the database; `shown` is what its creator gets once (the
    public key PEM, or the shared key itself for hs256)."""

    signing_key: str
    shown: str

    def __repr__(self) -> str:
        return "PolicyKey(...)"


def generate_policy_key(alg: str) -> PolicyKey:
    """A key for a webhook policy of `jwt_alg` `alg`: RSA 2048 (rs256), P-256 (es256), or 32 random bytes in
    URL-safe base64 used as a UTF-8 string (hs256, as PyJWT and jose take a shared key)."""
    if alg == "hs256":
        shared = base64.urlsafe_b64encode(token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")
        return PolicyKey(shared, shared)
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if alg == "rs256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "es256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"unknown jwt_alg {alg!r}: rs256, es256 or hs256")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    public = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
    return PolicyKey(pem, public)


def verify_jwt(
    body: bytes | str,
    key: str | bytes,
    *,
    issuer: str | None = None,
    audience: str | None = None,
    now: int | None = None,
    leeway: int = 120,
) -> dict[str, Any]:
    """Check a JWT body (`{"jwt": "<token>"}`, or the token alone) as 4me's receivers do; return its claims.

    `key` is the policy's public key PEM (rs256, es256) or its shared key (hs256); the algorithm follows the key,
    never the token's header. `issuer` and `audience`, when given, must match. `exp` and `nbf` are checked with
    `leeway` seconds (4me suggests a couple of minutes of clock skew) against `now` (default: the clock). Raises
    :class:`SignatureError` when anything is wrong.
    """
    token = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if token.lstrip().startswith("{"):
        try:
            token = json.loads(token)["jwt"]
        except (ValueError, KeyError, TypeError):
            raise MalformedHeaderError('the body is not {"jwt": "<token>"}') from None
    if not isinstance(token, str):
        raise MalformedHeaderError('the body is not {"jwt": "<token>"}')
    text = key.decode("utf-8") if isinstance(key, bytes) else key
    verifying: Any
    if "-----BEGIN" in text:
        verifying = serialization.load_pem_public_key(text.encode("ascii"))
        algorithms = ["ES256"] if isinstance(verifying, ec.EllipticCurvePublicKey) else ["RS256"]
    else:
        verifying, algorithms = text.encode("utf-8"), ["HS256"]
    options: Any = {"require": ["iat", "nbf", "jti", "sub", "data"]}
    if audience is None:
        options["verify_aud"] = False
    try:
        if now is None:
            claims: dict[str, Any] = pyjwt.decode(
                token, verifying, algorithms=algorithms, audience=audience, issuer=issuer, leeway=leeway,
                options=options,
            )  # fmt: skip
        else:
            # PyJWT reads the clock itself: check exp/nbf against `now` here, the signature and the rest there.
            options.update(verify_exp=False, verify_nbf=False, verify_iat=False)
            claims = pyjwt.decode(
                token, verifying, algorithms=algorithms, audience=audience, issuer=issuer, options=options
            )
            if "exp" in claims and now > int(claims["exp"]) + leeway:
                raise TimestampOutOfToleranceError("the token has expired")
            if now < int(claims["nbf"]) - leeway:
                raise TimestampOutOfToleranceError("the token is not yet valid")
    except pyjwt.ExpiredSignatureError:
        raise TimestampOutOfToleranceError("the token has expired") from None
    except pyjwt.ImmatureSignatureError:
        raise TimestampOutOfToleranceError("the token is not yet valid") from None
    except pyjwt.InvalidSignatureError:
        raise NoMatchingSignatureError("the token's signature does not verify") from None
    except pyjwt.PyJWTError as exc:
        raise SignatureError(f"the token does not verify: {exc}") from None
    return claims


def standard_signature(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``webhook-signature`` value: one ``v1,<base64>`` entry per secret, space-separated.

    Each entry is HMAC-SHA256 over ``f"{msg_id}.{timestamp}.".encode() + body``, keyed with the
    base64-decoded part of the secret after ``whsec_`` (a secret without the prefix is accepted too).
    The entries are in the order of ``secrets``. Raises ``ValueError`` for no secrets or a secret that
    is not base64.
    """
    keys = _standard_keys(secrets)
    if not keys:
        raise ValueError("at least one secret is needed to sign")
    content = _standard_content(msg_id, timestamp, body)
    return " ".join("v1," + _b64(_hmac(key, content)) for key in keys)


def standard_headers(secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return the three Standard Webhooks headers for one request."""
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: standard_signature(secrets, msg_id, timestamp, body),
    }


def ricloud_signature(secret: str, timestamp: int, body: bytes) -> str:
    """Return the ``Ricloud-Signature`` value ``t=<timestamp>,s=<base64>`` for one request.

    The HMAC-SHA256 is over ``f"{timestamp}.".encode() + body``, keyed with the whole secret string
    (``whsec_`` included) encoded as UTF-8; the header holds one signature, so a rotation signs with
    one secret at a time.
    """
    # What ricloud-py 3.2.0 (ricloud/signing.py, class Signature) does, checked against its source:
    # - sign(data, secret): payload = ".".join([str(timestamp), want_text(data)]), i.e. the body is
    #   decoded as UTF-8 and the text "<t>.<body>" encoded back to UTF-8 before hashing. For a UTF-8
    #   body (our JSON envelopes always are) those are exactly the bytes f"{t}.".encode() + body; we
    #   hash the bytes sent as they are rather than round-tripping them through text.
    # - the key is want_bytes(secret): the secret string as given, UTF-8; ricloud-py knows nothing of
    #   "whsec_" or base64 keys.
    # - the digest is the raw 32-byte HMAC-SHA256, written with base64.b64encode (standard alphabet,
    #   padded; not hex, not URL-safe) as "t={timestamp},s={signature}", separated by a comma.
    # - verify: from_header splits on the first ",", drops two characters from each part, int()s the
    #   timestamp and b64decodes the rest; compares digests with hmac.compare_digest, and only then,
    #   if a delta is given, rejects a timestamp older than now - delta (it has no "too new" check).
    content = str(timestamp).encode("ascii") + b"." + body
    return f"t={timestamp},s={_b64(_hmac(secret.encode('utf-8'), content))}"


def verify_standard(
    secrets: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE,
) -> None:
    """Check a Standard Webhooks request; return if it verifies, raise :class:`SignatureError` if not.

    Header names are matched case-insensitively. The request is refused when a header is missing or
    malformed, when ``webhook-timestamp`` is more than ``tolerance`` seconds before or after ``now``,
    or when no ``v1`` entry of ``webhook-signature`` matches under any of ``secrets``. Entries of
    other versions are ignored.
    """
    keys = _standard_keys(secrets)
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = _required(lowered, HEADER_ID)
    timestamp = _parse_timestamp(_required(lowered, HEADER_TIMESTAMP), HEADER_TIMESTAMP)
    signature_header = _required(lowered, HEADER_SIGNATURE)
    _check_timestamp(timestamp, now=now, tolerance=tolerance)

    content = _standard_content(msg_id, timestamp, body)
    expected = [_hmac(key, content) for key in keys]
    for entry in signature_header.split():
        version, sep, encoded = entry.partition(",")
        if not sep or version != "v1":
            continue
        given = _b64decode(encoded)
        if given is not None and _matches_any(given, expected):
            return
    raise NoMatchingSignatureError("no signature matches")


def verify_ricloud(
    secrets: Sequence[str],
    header: str,
    body: bytes,
    *,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE,
) -> None:
    """Check a ``Ricloud-Signature`` header value; return if it verifies, raise :class:`SignatureError`.

    ``header`` is the header's value (empty when the header is absent). The request is refused when
    the header is empty or not ``t=<digits>,s=<base64>``, when its timestamp is more than
    ``tolerance`` seconds before or after ``now``, or when its signature matches under none of
    ``secrets`` (each keyed as a whole UTF-8 string, as :func:`ricloud_signature` signs).
    """
    _check_secrets_type(secrets)
    header = header.strip()
    if not header:
        raise MissingHeaderError(f"missing header {RICLOUD_HEADER}")
    t_part, sep, s_part = header.partition(",")
    if not sep or not t_part.startswith("t=") or not s_part.startswith("s="):
        raise MalformedHeaderError(f"malformed header {RICLOUD_HEADER}: expected t=<timestamp>,s=<base64>")
    timestamp = _parse_timestamp(t_part[2:], RICLOUD_HEADER)
    given = _b64decode(s_part[2:])
    if given is None:
        raise MalformedHeaderError(f"malformed header {RICLOUD_HEADER}: the signature is not base64")
    _check_timestamp(timestamp, now=now, tolerance=tolerance)

    content = str(timestamp).encode("ascii") + b"." + body
    expected = [_hmac(secret.encode("utf-8"), content) for secret in secrets]
    if not _matches_any(given, expected):
        raise NoMatchingSignatureError("no signature matches")


def _hmac(key: bytes, content: bytes) -> bytes:
    """HMAC-SHA256 digest of ``content`` under ``key``."""
    return hmac.new(key, content, hashlib.sha256).digest()


def _b64(digest: bytes) -> str:
    """Standard, padded base64 of ``digest`` as text."""
    return base64.b64encode(digest).decode("ascii")


def _b64decode(encoded: str) -> bytes | None:
    """Strictly decode standard base64, or return None when ``encoded`` is not base64."""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _matches_any(given: bytes, expected: Sequence[bytes]) -> bool:
    """True when ``given`` equals one of ``expected``, compared in constant time each."""
    found = False
    for digest in expected:
        found |= hmac.compare_digest(given, digest)
    return found


def _standard_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    """The bytes a Standard Webhooks signature covers: ``"<msg_id>.<timestamp>.<body>"``."""
    return f"{msg_id}.{timestamp}.".encode() + body


def _check_secrets_type(secrets: Sequence[str]) -> None:
    """Refuse a bare string where a list of secrets belongs (it would be read one character each)."""
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, not a single string")


def _standard_keys(secrets: Sequence[str]) -> list[bytes]:
    """Decode each secret to its Standard Webhooks HMAC key (the base64 after ``whsec_``)."""
    _check_secrets_type(secrets)
    return [_standard_key(secret) for secret in secrets]


@functools.lru_cache(maxsize=4096)
def _standard_key(secret: str) -> bytes:
    """The HMAC key of one secret: base64-decode what follows ``whsec_`` (the prefix is optional).

    Cached: the daemon signs with the same few secrets all day (about 2 % of a drain's CPU went here).
    """
    encoded = secret.removeprefix(SECRET_PREFIX)
    key = _b64decode(encoded + "=" * (-len(encoded) % 4))
    if key is None:
        raise ValueError("a webhook secret must be 'whsec_' followed by base64")
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def _required(headers: Mapping[str, str], name: str) -> str:
    """The value of header ``name`` (already lower-cased), or :class:`MissingHeaderError`."""
    value = headers.get(name, "").strip()
    if not value:
        raise MissingHeaderError(f"missing header {name}")
    return value


def _parse_timestamp(value: str, header: str) -> int:
    """Parse unix seconds written as plain ASCII digits, or raise :class:`MalformedHeaderError`."""
    if not (value.isascii() and value.isdigit()):
        raise MalformedHeaderError(f"malformed header {header}: the timestamp is not unix seconds")
    return int(value)


def _check_timestamp(timestamp: int, *, now: int, tolerance: int) -> None:
    """Refuse a timestamp more than ``tolerance`` seconds before or after ``now``."""
    if timestamp < now - tolerance:
        raise TimestampOutOfToleranceError(f"timestamp too old: {now - timestamp} s before now")
    if timestamp > now + tolerance:
        raise TimestampOutOfToleranceError(f"timestamp too new: {timestamp - now} s after now")
