"""The composition root: builds every stage, supervises them, and owns start-up and shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from dispatcher import api, console, logs
from dispatcher.aio import wait_any
from dispatcher.api.routes import build_app
from dispatcher.config import Config, ConfigError, effective_settings, load_config, mask_url
from dispatcher.db import (
    LATEST_VERSION,
    Database,
    SchemaTooNew,
    connect_pool,
    is_transient,
    migrate,
    schema_version,
)
from dispatcher.delivery import Deliverer
from dispatcher.errors import DispatcherError
from dispatcher.fanout import Router
from dispatcher.health import HealthKeeper
from dispatcher.listener import Listener
from dispatcher.maintenance import Maintenance
from dispatcher.metrics import Metrics
from dispatcher.netguard import NetworkGuard
from dispatcher.ops_http import CHECK_TIMEOUT, STATEMENT_TIMEOUT_MS, OpsServer, serve
from dispatcher.recorder import Recorder
from dispatcher.resources import Context
from dispatcher.sdnotify import Notifier
from dispatcher.secretbox import Keyring
from dispatcher.sender import Sender
from dispatcher.workers import ExtraWorkers

log = structlog.get_logger("dispatcher.service")

# Connections of the management API's pool, and of the health and metrics endpoints'.
API_POOL_SIZE = 4
OPS_POOL_SIZE = 2
OPS_ENDPOINTS = ("/healthz", "/readyz", "/metrics")


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
    await db.sync_settings(max_payload_bytes=config.events.max_payload_bytes, notify=config.events.notify)
    if config.events.types:
        await db.add_event_types(names=config.events.types)


async def run(config: Config, dsn: str) -> int:
    """Run the daemon until SIGTERM/SIGINT (exit code 0 after a drain) or a stage dies (exit code 1).

    Under systemd (Type=notify) it says READY=1 once migrations, pool, API listener and LISTEN connection are
    up, pings WATCHDOG=1 at half the watchdog interval from the start (migrations included), and says
    STOPPING=1 when a signal asks it to stop.
    """
    notifier = Notifier()
    watchdog = asyncio.create_task(_watchdog(notifier), name="watchdog") if notifier.watchdog_interval else None
    try:
        return await _run(config, dsn, notifier, watchdog)
    finally:
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)


async def _run(config: Config, dsn: str, notifier: Notifier, watchdog: asyncio.Task[None] | None) -> int:
    notifier.notify("STATUS=preparing the database")
    if config.secrets.encryption_key is None:
        log.warning(
            "dispatcher.secrets_in_clear",
            detail="webhook secrets and policy keys are stored in clear: set [secrets] encryption_key (README)",
        )
    applied = await prepare_database(config, dsn)
    if applied:
        log.info("database.migrated", applied=applied)
    token = secrets.token_hex(3)
    owner = f"{socket.gethostname()}:{os.getpid()}:{token}"
    # A worker's connections name it: claims count the workers connected to share out the webhooks nobody holds.
    name = f"dispatcher worker {token} {os.getpid()}" if config.worker.enabled else "dispatcher"
    pool = await connect_pool(dsn, config.database.pool_size, application_name=name)
    db = Database(pool)
    await sync_catalogue(db, config)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stopping, signum, notifier)

    worker = config.worker
    route_wake = asyncio.Event()
    deliver_wake = asyncio.Event()
    sender = Sender(config.delivery, NetworkGuard(config.delivery.allow_networks), worker.concurrency)
    recorded = asyncio.Event()
    metrics = Metrics()
    keeper = HealthKeeper(db, mail_enabled=config.mail.host is not None)
    recorder = Recorder(db, config.health, keeper, recorded=recorded)
    deliverer = Deliverer(
        db, sender, recorder, config, owner=owner, wake=deliver_wake, recorded=recorded, metrics=metrics
    )
    extra_workers = ExtraWorkers(config, dsn)
    reloader = LogLevelReloader(config, reload_keys=deliverer.reload_keys)

    def on_hangup() -> None:
        reloader()
        extra_workers.forward(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    router = Router(
        db,
        batch_size=worker.batch_size,
        max_attempts=len(config.retry.schedule) + 1,
        wake=route_wake,
        routed=deliver_wake,
    )
    listener = Listener(dsn, [route_wake])
    maintenance = Maintenance(db, config, wake_deliverer=deliver_wake)
    metrics.track_process(
        in_flight=lambda: deliverer.in_flight,
        discarded=lambda: recorder.discarded,
        throttled=lambda: deliverer.throttled,
    )

    # Health and metrics read through a small pool of their own with a statement timeout, so that a slow scrape
    # never takes the worker's connections; the management API has its own too, for the same reason.
    ops_db = Database(
        await connect_pool(
            dsn, OPS_POOL_SIZE, min_size=0, application_name="dispatcher-ops",
            statement_timeout_ms=STATEMENT_TIMEOUT_MS, command_timeout=CHECK_TIMEOUT + STATEMENT_TIMEOUT_MS / 1000,
        )
    )  # fmt: skip
    ops = OpsServer(ops_db, metrics, listener=listener if worker.enabled else None, stopping=stopping)
    api_db: Database | None = None
    try:
        if config.api.enabled:
            api_db = Database(await connect_pool(dsn, API_POOL_SIZE))
            app = api.app(Context(api_db, config), ops.routes())
            console.mount(app)  # /console: the operator console, over the same API
            listening = await serve(
                app, config.api.listen, "[api] listen", ["/", *OPS_ENDPOINTS], idle_timeout=config.api.idle_timeout
            )
        else:
            app = build_app(None, ops.routes())
            listening = await serve(
                app, worker.listen, "[worker] listen", list(OPS_ENDPOINTS), idle_timeout=config.api.idle_timeout
            )
    except BaseException:
        for pool in (api_db, ops_db, db):
            if pool is not None:
                await pool.close()
        raise

    stages: dict[str, Coroutine[Any, Any, None]] = {}
    background: dict[str, Coroutine[Any, Any, None]] = {}
    if worker.enabled:
        await sender.start()
        stages = {
            "Router.run": restarting("Router.run", lambda: router.run(stopping, worker.poll_interval), stopping),
            "Deliverer.run": restarting("Deliverer.run", lambda: deliverer.run(stopping), stopping),
            "Maintenance.run": restarting("Maintenance.run", lambda: maintenance.run(stopping), stopping),
        }
        background = {
            "Listener.run": listener.run(),
            "Recorder.run": restarting("Recorder.run", recorder.run, stopping),
        }
    for number in range(1, extra_workers.count + 1):
        name = f"worker {number}"
        stages[name] = restarting(name, partial(extra_workers.run_one, number, stopping), stopping)
    stage_tasks = [asyncio.create_task(c, name=name) for name, c in stages.items()]
    background_tasks = [asyncio.create_task(c, name=name) for name, c in background.items()]
    supervised = [*stage_tasks, *background_tasks, *([watchdog] if watchdog is not None else [])]

    exit_code = 0
    stop_waiter = asyncio.create_task(stopping.wait())
    if worker.enabled:
        # Ready means the doorbell works too; a stage dying or a signal meanwhile ends the wait as well.
        connected = asyncio.create_task(listener.connected.wait())
        await asyncio.wait([connected, stop_waiter, *supervised], return_when=asyncio.FIRST_COMPLETED)
        connected.cancel()
    if not stopping.is_set() and not any(task.done() for task in supervised):
        role = "worker and API" if worker.enabled and config.api.enabled else "worker" if worker.enabled else "API only"
        # The log line first: whoever sees READY=1 (systemd, a test) can then find it in the log.
        log.info(
            "dispatcher.ready",
            owner=owner,
            worker=worker.enabled,
            concurrency=worker.concurrency,
            api=listening.address if config.api.enabled else None,
            listen=listening.address,
            # What is in force, so that a setting given to the CLI but not to the daemon shows here.
            config=config.source or "defaults",
            allow_networks=list(config.delivery.allow_networks),
            database=mask_url(dsn),
            admin_token=_admin_token_note(config),
        )
        notifier.notify("READY=1", f"STATUS=running ({role})")
    done, _ = await asyncio.wait([stop_waiter, *supervised], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is stop_waiter:
            continue
        error = task.exception() if not task.cancelled() else None
        if stopping.is_set() and not task.cancelled() and error is None:
            continue  # it ended because of the signal, in the same turn of the loop as stop_waiter: it did not die
        exit_code = 1
        log.error("dispatcher.stage_died", stage=task.get_name(), error=repr(error), detail="stopping the daemon")
    if not stopping.is_set():
        notifier.notify("STOPPING=1")
    stopping.set()
    notifier.notify(f"STATUS=draining (up to {worker.shutdown_grace:g} s for requests in flight)")

    # Drain: stop claiming, let in-flight requests finish within the grace, release the rest.
    # /healthz and /metrics stay up meanwhile; /readyz says "stopping".
    await asyncio.wait(stage_tasks, timeout=worker.poll_interval + 5)
    released = 0
    recorder.give_up_at(time.monotonic() + worker.shutdown_grace + 5)
    try:
        if worker.enabled:
            released = await deliverer.drain(worker.shutdown_grace)
    except Exception as exc:
        if not is_transient(exc):
            raise
        exit_code = 1
        log.error(
            "dispatcher.drain_incomplete",
            error=str(exc),
            detail="the database is unavailable; leases still held are rescued when they expire",
        )
    finally:
        for task in [*stage_tasks, *background_tasks]:
            task.cancel()
        await asyncio.gather(*stage_tasks, *background_tasks, return_exceptions=True)
        try:
            await recorder.flush()
        except Exception as exc:
            if not is_transient(exc):
                raise
            exit_code = 1
            log.error(
                "dispatcher.results_unrecorded",
                error=str(exc),
                detail="the database is unavailable; those deliveries are sent again when their leases expire",
            )
        await sender.close()
        await listening.close()
        if api_db is not None:
            await api_db.close()
        await ops_db.close()
        await db.close()
    log.info(
        "dispatcher.stopped",
        exit_code=exit_code,
        attempts=deliverer.attempts_made,
        released=released,
        round_trips=db.round_trips,
    )
    notifier.notify("STATUS=stopped")
    return exit_code


def _admin_token_note(config: Config) -> str:
    """Where the first admin token is: its file (never the token), or how to make one."""
    path = Path(config.database.data_dir).expanduser().resolve() / "admin-token"
    if not config.database.dsn and path.exists():
        return str(path)
    return "dispatcher token create --organisation ORG --role admin"


# A stage that dies is restarted after 1 s, then 2, 4, ... up to 30 s; more than MAX_RESTARTS deaths within
# RESTART_WINDOW seconds stop the daemon (something is wrong beyond one bad row).
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
MAX_RESTARTS = 5
RESTART_WINDOW = 300.0


async def restarting(
    name: str,
    make: Callable[[], Coroutine[Any, Any, None]],
    stopping: asyncio.Event,
    *,
    first_delay: float = FIRST_RESTART_DELAY,
) -> None:
    """Run the stage `make()` builds; when it dies, log it and run it again after a backoff, unless it keeps dying
    (then the last error is raised and the supervisor stops the daemon, loudly)."""
    deaths: list[float] = []
    while True:
        try:
            await make()
            return
        except Exception as exc:
            if stopping.is_set():
                raise
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < RESTART_WINDOW] + [now]
            if len(deaths) > MAX_RESTARTS:
                raise
            delay = min(MAX_RESTART_DELAY, first_delay * 2 ** (len(deaths) - 1))
            log.error("dispatcher.stage_restarting", stage=name, error=repr(exc), deaths=len(deaths), delay=delay)
            await wait_any(stopping, timeout=delay)
            if stopping.is_set():
                return


async def _watchdog(notifier: Notifier) -> None:
    """WATCHDOG=1 every half watchdog interval, for as long as the event loop turns."""
    interval = notifier.watchdog_interval
    assert interval is not None
    while True:
        notifier.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _on_signal(stopping: asyncio.Event, signum: int, notifier: Notifier) -> None:
    if not stopping.is_set():
        notifier.notify("STOPPING=1")
        log.info("dispatcher.stopping", signal=signal.Signals(signum).name)
    stopping.set()


class LogLevelReloader:
    """The SIGHUP handler: re-read the configuration file and apply its `[log] level` and `[secrets]` keys (to the
    worker, through `reload_keys`).

    A file that no longer loads keeps the current level and keys and is logged as an error. Other settings are not
    applied on the fly; when they differ, a warning names them (names only, never values) and asks for a restart.
    So does a new `[secrets] encryption_key` in a process serving the API, which seals new secrets under the key it
    started with.
    """

    def __init__(self, config: Config, *, reload_keys: Callable[[Keyring], None]) -> None:
        self._config = config
        self._reload_keys = reload_keys

    def __call__(self) -> None:
        old = self._config
        try:
            new = load_config(old.source)
        except ConfigError as exc:
            log.error(
                "dispatcher.reload_failed",
                error=str(exc),
                level=old.log.level,
                detail="keeping the current log level; fix the file and send SIGHUP again",
            )
            return
        before, after = effective_settings(old), effective_settings(new)
        changed = [
            f"{section}.{key}"
            for section, values in after.items()
            for key, value in values.items()
            if before[section][key] != value and (section, key) != ("log", "level") and section != "secrets"
        ]
        more_verbose = logs.LEVELS[new.log.level] < logs.LEVELS[old.log.level]
        if more_verbose:  # log the change at whichever level lets the line through
            logs.set_level(new.log.level)
        log.info("dispatcher.reloaded", level=new.log.level, previous_level=old.log.level, file=old.source)
        if not more_verbose:
            logs.set_level(new.log.level)
        if new.secrets != old.secrets:
            keys = Keyring.of(new.secrets.encryption_key, new.secrets.old_keys)  # checked by load_config
            self._reload_keys(keys)
            log.info("dispatcher.keys_reloaded", key_id=keys.current_id, old_keys=len(new.secrets.old_keys))
            if old.api.enabled and new.secrets.encryption_key != old.secrets.encryption_key:
                changed.append("secrets.encryption_key")
        if changed:
            log.warning(
                "dispatcher.restart_needed",
                changed=changed,
                detail="SIGHUP applies [log] level and the worker's [secrets] keys only; restart to apply the rest",
            )
        # Keep the settings in force for the next comparison: the new level and keys, the rest as running.
        self._config = dataclasses.replace(old, log=new.log, secrets=new.secrets)
