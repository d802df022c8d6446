"""The composition root: builds every stage, supervises them, and owns start-up and shutdown."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
from collections.abc import Coroutine
from typing import Any

import asyncpg
import structlog

from dispatcher.config import Config
from dispatcher.db import LATEST_VERSION, Database, SchemaTooNew, connect_pool, migrate, schema_version
from dispatcher.delivery import Deliverer
from dispatcher.errors import DispatcherError
from dispatcher.fanout import Router
from dispatcher.listener import Listener
from dispatcher.maintenance import Rescuer
from dispatcher.netguard import NetworkGuard
from dispatcher.recorder import Recorder
from dispatcher.sender import Sender

log = structlog.get_logger("dispatcher.service")


class SchemaTooOld(DispatcherError):
    """The database schema is older than this dispatcher needs; run `dispatcher migrate`."""


async def prepare_database(config: Config, dsn: str) -> list[str]:
    """Migrate (when [database] auto_migrate) or check the schema version; returns the migrations applied."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        if config.database.auto_migrate:
            return await migrate(conn)
        version = await schema_version(conn)
        if version is not None and version > LATEST_VERSION:
            raise SchemaTooNew()
        if version is None or version < LATEST_VERSION:
            raise SchemaTooOld()
        return []
    finally:
        await conn.close()


async def sync_catalogue(db: Database, config: Config) -> None:
    """Copy the settings producers' triggers read, and add configured event types to the catalogue."""
    await db.execute("sync_settings", config.events.max_payload_bytes, config.events.notify)
    if config.events.types:
        await db.execute("add_event_types", list(config.events.types))


async def run(config: Config, dsn: str) -> int:
    """Run the daemon until SIGTERM/SIGINT (exit code 0 after a drain) or a stage dies (exit code 1)."""
    applied = await prepare_database(config, dsn)
    if applied:
        log.info("database.migrated", applied=applied)
    pool = await connect_pool(dsn, config.database.pool_size)
    db = Database(pool)
    await sync_catalogue(db, config)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stopping, signum)

    worker = config.worker
    owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    route_wake = asyncio.Event()
    deliver_wake = asyncio.Event()
    sender = Sender(config.delivery, NetworkGuard(config.delivery.allow_networks), worker.concurrency)
    recorded = asyncio.Event()
    recorder = Recorder(db, recorded=recorded)
    deliverer = Deliverer(db, sender, recorder, config, owner=owner, wake=deliver_wake, recorded=recorded)
    router = Router(
        db,
        batch_size=worker.batch_size,
        max_attempts=len(config.retry.schedule) + 1,
        wake=route_wake,
        routed=deliver_wake,
    )
    listener = Listener(dsn, [route_wake])
    rescuer = Rescuer(db, interval=max(1.0, worker.poll_interval), rescued=deliver_wake)

    stages: list[Coroutine[Any, Any, None]] = []
    background: list[Coroutine[Any, Any, None]] = []
    if worker.enabled:
        await sender.start()
        stages += [router.run(stopping, worker.poll_interval), deliverer.run(stopping), rescuer.run(stopping)]
        background += [listener.run(), recorder.run()]
    stage_tasks = [asyncio.create_task(c) for c in stages]
    background_tasks = [asyncio.create_task(c) for c in background]
    log.info("dispatcher.ready", owner=owner, worker=worker.enabled, concurrency=worker.concurrency)

    exit_code = 0
    stop_waiter = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([stop_waiter, *stage_tasks, *background_tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stop_waiter:
            exit_code = 1
            error = task.exception() if not task.cancelled() else None
            log.error("dispatcher.stage_died", error=repr(error), detail="stopping the daemon")
    stopping.set()

    # Drain: stop claiming, let in-flight requests finish within the grace, release the rest.
    await asyncio.wait(stage_tasks, timeout=worker.poll_interval + 5)
    try:
        released = await deliverer.drain(worker.shutdown_grace) if worker.enabled else 0
    finally:
        for task in [*stage_tasks, *background_tasks]:
            task.cancel()
        await asyncio.gather(*stage_tasks, *background_tasks, return_exceptions=True)
        await recorder.flush()
        await sender.close()
        await db.close()
    log.info(
        "dispatcher.stopped",
        exit_code=exit_code,
        attempts=deliverer.attempts_made,
        released=released,
        round_trips=db.round_trips,
    )
    return exit_code


def _on_signal(stopping: asyncio.Event, signum: int) -> None:
    if not stopping.is_set():
        log.info("dispatcher.stopping", signal=signal.Signals(signum).name)
    stopping.set()
