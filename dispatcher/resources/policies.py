"""Webhook policies (4me): create, read, list, change. A policy signs its webhooks' requests as JWT bodies.

The key is made here (`dispatcher.signing.generate_policy_key`): the private key (or hs256 shared key) is stored
(encrypted under `[secrets] encryption_key` when one is set) and read back only by the worker's claim; the creator
gets the public key PEM (or the shared key) once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from dispatcher.db.rows import PolicyRow
from dispatcher.resources.errors import Invalid, NotFound
from dispatcher.resources.scope import Context, Scope
from dispatcher.resources.secrets import seal
from dispatcher.signing import generate_policy_key

log = structlog.get_logger("dispatcher.policies")

ALGORITHMS = ("rs256", "es256", "hs256")
MAX_NAME = 255
MAX_AUDIENCE = 1024
# jwt_claim_expires_in, in minutes: at most a week.
MAX_EXPIRES_IN = 7 * 24 * 60


@dataclass(frozen=True, slots=True)
class CreatedPolicy:
    """A new policy and what its creator sees this once: the public key PEM, or the hs256 shared key."""

    policy: PolicyRow
    shown_key: str

    def __repr__(self) -> str:
        return f"CreatedPolicy({self.policy!r})"


@dataclass(frozen=True, slots=True)
class PolicyPage:
    """One page of policies, and how many there are in all."""

    items: tuple[PolicyRow, ...]
    total: int


def _check(fields: Mapping[str, Any]) -> None:
    name = fields.get("name")
    if name is not None and len(name) > MAX_NAME:
        raise Invalid("name", f"name is longer than {MAX_NAME} characters")
    audience = fields.get("jwt_audience")
    if audience is not None and len(audience) > MAX_AUDIENCE:
        raise Invalid("jwt_audience", f"jwt_audience is longer than {MAX_AUDIENCE} characters")
    expires = fields.get("jwt_claim_expires_in")
    if expires is not None and not 1 <= expires <= MAX_EXPIRES_IN:
        raise Invalid("jwt_claim_expires_in", f"jwt_claim_expires_in is in minutes, from 1 to {MAX_EXPIRES_IN}")


async def create(
    ctx: Context,
    scope: Scope,
    *,
    name: str = "",
    disabled: bool = False,
    jwt_alg: str = "rs256",
    jwt_audience: str | None = None,
    jwt_claim_expires_in: int | None = None,
) -> CreatedPolicy:
    """A new policy with a fresh key. Its tokens name `[api] public_url` as their issuer, so that must be set."""
    if jwt_alg not in ALGORITHMS:
        raise Invalid("jwt_alg", f"jwt_alg must be one of {', '.join(ALGORITHMS)}")
    _check({"name": name, "jwt_audience": jwt_audience, "jwt_claim_expires_in": jwt_claim_expires_in})
    if not ctx.config.api.public_url:
        raise Invalid("jwt_alg", "set [api] public_url first: JWT bodies name it as their issuer (iss)")
    key = generate_policy_key(jwt_alg)
    policy = await ctx.db.create_policy(
        organisation=scope.organisation, name=name, disabled=disabled, jwt_alg=jwt_alg, jwt_audience=jwt_audience,
        jwt_claim_expires_in=jwt_claim_expires_in, signing_key=seal(ctx, key.signing_key),
    )  # fmt: skip
    log.info("policy.created", policy_id=policy.id, organisation=scope.organisation, jwt_alg=jwt_alg)
    return CreatedPolicy(policy, key.shown)


async def get(ctx: Context, scope: Scope, policy_id: int) -> PolicyRow:
    """A policy of the caller's organisation."""
    policy = await ctx.db.get_policy(policy_id=policy_id, organisation=scope.organisation)
    if policy is None:
        raise NotFound("webhook policy")
    return policy


async def list_numbered(ctx: Context, scope: Scope, *, disabled: bool | None, page: int, per_page: int) -> PolicyPage:
    """Page `page` (from 1) of `per_page` policies, newest first: all, only disabled or only enabled ones."""
    total = await ctx.db.count_policies(organisation=scope.organisation, disabled=disabled)
    rows = await ctx.db.list_policies(
        organisation=scope.organisation, disabled=disabled, limit=per_page, offset=(page - 1) * per_page
    )
    return PolicyPage(tuple(rows), total)


async def modify(ctx: Context, scope: Scope, policy_id: int, *, fields: Mapping[str, Any]) -> PolicyRow:
    """Change name, disabled, jwt_audience or jwt_claim_expires_in. Disabling holds the deliveries of its webhooks
    (not sent unsigned, not dropped); enabling lets maintenance release them. The algorithm and key cannot change:
    make a new policy and move the webhooks to it."""
    for name in fields:
        if name not in ("name", "disabled", "jwt_audience", "jwt_claim_expires_in"):
            raise Invalid(name, f"{name} cannot be changed: make a new policy and move the webhooks to it")
    _check(fields)
    before = await get(ctx, scope, policy_id)
    policy = await ctx.db.update_policy(
        policy_id=policy_id, organisation=scope.organisation, fields=list(fields), **dict(fields)
    )
    if policy is None:
        raise NotFound("webhook policy")
    if policy.disabled != before.disabled:
        log.info("policy.disabled" if policy.disabled else "policy.enabled", policy_id=policy_id)
    return policy
