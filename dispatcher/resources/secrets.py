"""Secrets at rest: seal what is written, and re-seal everything under the current key (`dispatcher secrets rotate`).

The crypto is dispatcher.secretbox's; this is where operations get their keyring from the configuration and where
the rotation walks the webhooks and policies, one batch per transaction, so that it can stop and resume anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import structlog

from dispatcher.config import Config
from dispatcher.resources.errors import Conflict
from dispatcher.resources.scope import Context
from dispatcher.secretbox import Keyring, SecretboxError

log = structlog.get_logger("dispatcher.secrets")

# Rows re-sealed per transaction.
BATCH = 500


def keyring(config: Config) -> Keyring:
    """The keys of `[secrets]`: `encryption_key` seals, it and `old_keys` open."""
    return Keyring.of(config.secrets.encryption_key, config.secrets.old_keys)


def seal(ctx: Context, plain: str) -> str:
    """A secret or private key as it is stored: encrypted under the current key, in clear without one."""
    return keyring(ctx.config).seal(plain)


@dataclass(frozen=True, slots=True)
class Rotation:
    """What one `secrets rotate` did: rows re-sealed, and those whose values could not be opened (by id)."""

    webhooks: int
    policies: int
    failed_webhooks: tuple[int, ...]
    failed_policies: tuple[int, ...]


async def rotate(ctx: Context, *, batch: int = BATCH) -> Rotation:
    """Re-encrypt every webhook secret and policy key not under `[secrets] encryption_key`, `batch` rows per
    transaction (rows are locked while re-sealed, so a concurrent secret rotation waits). Running it again after
    an interruption continues where it stopped. A value under a key that is not configured is left as it is and
    its row reported."""
    keys = keyring(ctx.config)
    header = keys.current_header()
    if header is None:
        raise Conflict("set [secrets] encryption_key first: rotation encrypts under it (old_keys only decrypt)")
    webhooks, failed_webhooks = 0, []
    after = 0
    while True:
        async with ctx.db.transaction() as tx:
            rows = await tx.secrets_webhooks_to_reseal(header=header, after=after, limit=batch)
            updates: list[tuple[int, str]] = []
            for webhook_id, stored in rows:
                try:
                    entries = json.loads(stored)
                    for entry in entries:
                        entry["secret"] = keys.reseal(entry["secret"])
                except SecretboxError as exc:
                    log.error("secrets.unreadable", webhook_id=webhook_id, error=str(exc))
                    failed_webhooks.append(webhook_id)
                    continue
                updates.append((webhook_id, json.dumps(entries)))
            await tx.secrets_set_webhooks(ids=[u[0] for u in updates], secrets=[u[1] for u in updates])
        webhooks += len(updates)
        if len(rows) < batch:
            break
        after = rows[-1][0]
    policies, failed_policies = 0, []
    after = 0
    while True:
        async with ctx.db.transaction() as tx:
            rows = await tx.secrets_policies_to_reseal(header=header, after=after, limit=batch)
            updates = []
            for policy_id, stored in rows:
                try:
                    updates.append((policy_id, keys.reseal(stored)))
                except SecretboxError as exc:
                    log.error("secrets.unreadable", policy_id=policy_id, error=str(exc))
                    failed_policies.append(policy_id)
            await tx.secrets_set_policy_keys(ids=[u[0] for u in updates], signing_keys=[u[1] for u in updates])
        policies += len(updates)
        if len(rows) < batch:
            break
        after = rows[-1][0]
    log.info("secrets.rotated", webhooks=webhooks, policies=policies, key_id=keys.current_id)
    return Rotation(webhooks, policies, tuple(failed_webhooks), tuple(failed_policies))
