"""Maintenance that runs in every worker, each job one process at a time cluster-wide (advisory locks).

Jobs: rescue expired leases, release held deliveries of webhooks that may receive again, probe invalid
webhooks, hold strays of paused webhooks, expire test tasks nobody ran, fail deliveries held too long, send
queued mail, walk running replays one batch per transaction, prune rotated-out secrets whose overlap ended.
"""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

import structlog

from dispatcher.aio import wait_any
from dispatcher.config import Config, MailConfig
from dispatcher.db import Database, Transaction, is_transient

log = structlog.get_logger("dispatcher.maintenance")

# Advisory lock keys: 'disp' in ASCII, then the job's number.
_LOCK_BASE = 0x64697370_0000

# A claimed mail is not taken again for this long (a crash mid-send retries it then).
MAIL_RETRY_SECONDS = 300.0

# Retention: how often, rows deleted per transaction, its lock.
RETENTION_INTERVAL = 60.0
RETENTION_BATCH = 1000
RETENTION_LOCK = _LOCK_BASE + 6
# Deleted webhooks pruned per retention run (each with what still refers to it).
RETENTION_WEBHOOK_BATCH = 100

# Replays: events walked per batch (one transaction each), and how often a batch runs.
REPLAY_BATCH = 500
REPLAY_INTERVAL = 0.25
# With no replay to walk, the job looks again this much later (not 4 times a second: 5 round trips each).
REPLAY_IDLE_INTERVAL = 5.0


@dataclass
class Job:
    """A maintenance step: `run` gets a transaction that holds the job's advisory lock."""

    name: str
    number: int
    interval: float
    run: Callable[[Transaction], Awaitable[int]]
    wakes_deliverer: bool = False
    next_at: float = field(default=0.0)


class Maintenance:
    """Runs each job every `interval` seconds, skipping it when another process holds its lock."""

    def __init__(self, db: Database, config: Config, *, wake_deliverer: asyncio.Event) -> None:
        self._db = db
        self._config = config
        self._wake_deliverer = wake_deliverer
        worker, health = config.worker, config.health
        self.jobs = [
            Job("rescue_leases", 1, max(1.0, worker.poll_interval), self._rescue, wakes_deliverer=True),
            Job("release_held", 2, 1.0, self._release, wakes_deliverer=True),
            Job("probe_invalid_webhooks", 3, min(health.probe_interval, 5.0), self._probe, wakes_deliverer=True),
            Job("expire_tasks", 4, 5.0, self._expire_tasks),
            Job("fail_overdue_held", 5, 60.0, self._fail_overdue),
            Job("replay", 10, REPLAY_INTERVAL, self._replay, wakes_deliverer=True),
            Job("prune_expired_secrets", 11, 10.0, self._prune_secrets),
        ]
        # Retention runs in many small transactions of its own, so it is not a Job.
        self._retention_next_at = 0.0
        self.mail = MailSender(db, config.mail) if config.mail.host else None

    async def run(self, stopping: asyncio.Event) -> None:
        """Run due jobs until `stopping` is set."""
        while not stopping.is_set():
            now = time.monotonic()
            for job in self.jobs:
                if job.next_at <= now:
                    job.next_at = now + job.interval
                    await self._run_job(job)
            if self.mail is not None:
                await self._guard("send_mail", self.mail.send_due())
            if self._retention_next_at <= now:
                self._retention_next_at = now + RETENTION_INTERVAL
                await self._guard("retention", self.prune())
            soonest = min(job.next_at for job in self.jobs)
            await wait_any(stopping, timeout=max(0.05, min(soonest - time.monotonic(), 5.0)))

    async def run_once(self) -> None:
        """Every job once now, retention included (tests use this)."""
        for job in self.jobs:
            await self._run_job(job)
        await self.prune()

    async def prune(self) -> int:
        """Retention: delete what has been finished long enough, in small transactions, one process at a time.

        Returns the number of rows deleted (deliveries, events, mails sent or given up, finished test tasks, webhooks
        deleted longer ago than both retentions; attempts go with their delivery, what refers to a webhook with it).
        """
        retention = self._config.retention
        steps: tuple[Callable[[Transaction], Awaitable[int]], ...] = (
            lambda tx: tx.prune_finished_deliveries(
                delivered_seconds=retention.delivered, failed_seconds=retention.failed, limit=RETENTION_BATCH
            ),
            lambda tx: tx.prune_events(older_than_seconds=retention.delivered, limit=RETENTION_BATCH),
            lambda tx: tx.prune_sent_mail(older_than_seconds=retention.delivered, limit=RETENTION_BATCH),
            lambda tx: tx.prune_abandoned_mail(older_than_seconds=retention.failed, limit=RETENTION_BATCH),
            lambda tx: tx.prune_finished_tasks(older_than_seconds=retention.delivered, limit=RETENTION_BATCH),
            self._prune_deleted_webhooks,
        )
        total = 0
        for step in steps:
            while True:
                async with self._db.transaction() as tx:
                    if not await tx.try_advisory_lock(key=RETENTION_LOCK):
                        return total
                    deleted = await step(tx)
                total += deleted
                if deleted < RETENTION_BATCH:
                    break
        if total:
            log.info("retention.pruned", rows=total)
        return total

    async def _prune_deleted_webhooks(self, tx: Transaction) -> int:
        """Webhooks deleted longer ago than both retentions (their attempts stay readable as long as a dead letter
        would), up to RETENTION_WEBHOOK_BATCH per run."""
        retention = self._config.retention
        pruned = await tx.prune_deleted_webhooks(
            older_than_seconds=max(retention.delivered, retention.failed), limit=RETENTION_WEBHOOK_BATCH
        )
        for webhook_id in pruned:
            log.info("webhook.pruned", webhook_id=webhook_id)
        return len(pruned)

    async def _run_job(self, job: Job) -> None:
        async def locked() -> int:
            async with self._db.transaction() as tx:
                if not await tx.try_advisory_lock(key=_LOCK_BASE + job.number):
                    return 0
                return await job.run(tx)

        done = await self._guard(job.name, locked())
        if done and job.wakes_deliverer:
            self._wake_deliverer.set()

    async def _guard(self, name: str, work: Awaitable[int]) -> int:
        """Run one job; whatever it raises costs that run of that job only (it runs again at its next turn)."""
        try:
            return await work
        except Exception as exc:
            if is_transient(exc):
                log.warning("maintenance.database_unavailable", job=name, error=str(exc))
            else:
                log.error("maintenance.job_failed", job=name, error=f"{type(exc).__name__}: {exc}")
            return 0

    async def _rescue(self, tx: Transaction) -> int:
        rows = await tx.rescue_leases()
        for row in rows:
            log.warning("delivery.lease_expired", delivery_id=str(row.id), webhook_id=row.webhook_id, state=row.state)
        return len(rows)

    async def _release(self, tx: Transaction) -> int:
        held = len(await tx.hold_paused_strays())
        held += len(await tx.cancel_strays())
        released = await tx.release_held()
        for webhook_id, count in Counter(released).items():
            log.info("delivery.released", webhook_id=webhook_id, count=count)
        return len(released) + held

    async def _probe(self, tx: Transaction) -> int:
        rows = await tx.probe_invalid_webhooks(interval_seconds=self._config.health.probe_interval)
        for row in rows:
            log.info("webhook.probe", webhook_id=row.webhook_id, delivery_id=str(row.id))
        return len(rows)

    async def _expire_tasks(self, tx: Transaction) -> int:
        rows = await tx.expire_tasks()
        for task_id, webhook_id in rows:
            log.warning("task.expired", task_id=str(task_id), webhook_id=webhook_id, error="no dispatcher is running")
        return len(rows)

    async def _fail_overdue(self, tx: Transaction) -> int:
        rows = await tx.fail_overdue_held(max_hold_seconds=self._config.health.max_hold)
        for row in rows:
            log.warning(
                "delivery.failed", delivery_id=str(row.id), webhook_id=row.webhook_id,
                error="held longer than [health] max_hold",
            )  # fmt: skip
        return len(rows)

    async def _replay(self, tx: Transaction) -> int:
        """One batch of the oldest running replay (the next transaction takes the next), then complete the
        replays whose deliveries have all finished."""
        step = await tx.replay_step(batch=REPLAY_BATCH, max_attempts=len(self._config.retry.schedule) + 1)
        if step is not None:
            log.info(
                "replay.batch", replay_id=str(step.id), webhook_id=step.webhook_id, considered=step.considered,
                created=step.created, walked=step.scanned, state=step.state,
            )  # fmt: skip
        finished = await tx.finish_replays()
        for done in finished:
            log.info("replay.completed", replay_id=str(done.id), webhook_id=done.webhook_id)
        if step is None and not finished:
            for job in self.jobs:
                if job.name == "replay":
                    job.next_at = time.monotonic() + REPLAY_IDLE_INTERVAL
        return step.created if step is not None else 0

    async def _prune_secrets(self, tx: Transaction) -> int:
        changed = await tx.prune_expired_secrets()
        for webhook_id in changed:
            log.info("webhook.secret_expired", webhook_id=webhook_id)
        return len(changed)


class MailSender:
    """Sends queued mail over SMTP (smtplib in a thread: a few mails an hour need no async client)."""

    def __init__(self, db: Database, config: MailConfig) -> None:
        self._db = db
        self._config = config

    async def send_due(self) -> int:
        """Send what is due; returns the number sent."""
        rows = await self._db.claim_mail(limit=20, retry_seconds=MAIL_RETRY_SECONDS)
        sent = 0
        for row in rows:
            message = EmailMessage()
            message["From"] = self._config.from_
            message["To"] = ", ".join(row.recipients)
            message["Subject"] = row.subject
            message.set_content(row.body)
            try:
                await asyncio.to_thread(self._send, message)
            except (OSError, smtplib.SMTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
                await self._db.mail_failed(mail_id=row.id, error=error)
                log.warning("mail.failed", mail_id=row.id, error=error)
                continue
            await self._db.mail_sent(mail_id=row.id)
            log.info("mail.sent", mail_id=row.id, recipients=len(row.recipients), subject=row.subject)
            sent += 1
        return sent

    def _send(self, message: EmailMessage) -> None:
        config = self._config
        assert config.host is not None
        with smtplib.SMTP(config.host, config.port, timeout=30) as smtp:
            if config.starttls:
                smtp.starttls()
            if config.username:
                smtp.login(config.username, config.password or "")
            smtp.send_message(message)
