"""`[worker] processes`: the extra worker processes one `dispatcher run` starts and supervises.

The process systemd starts (the first) runs everything its configuration says (API, worker, maintenance); each
extra one is `dispatcher run` again, on the same file and database, with the API off, one event loop of its own
and no systemd notifications (systemd sees one service; the unit's cgroup holds them all). A worker that exits
while the daemon is not stopping is started again with the stages' backoff (`service.restarting`); SIGTERM and
SIGHUP reach each of them from the first.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys

import structlog

from dispatcher.config import Config
from dispatcher.errors import DispatcherError

log = structlog.get_logger("dispatcher.workers")

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Beyond the shutdown grace, how long an extra worker may take to release its leases before it is killed.
STOP_MARGIN = 10.0


class WorkerExited(DispatcherError):
    """An extra worker process ended while the daemon was running."""


def extra_worker_env(config: Config, dsn: str, number: int, base: dict[str, str]) -> dict[str, str]:
    """The environment of extra worker `number` (1, 2, ...): `base` with the overrides that make it one worker.

    It listens for /healthz, /readyz and /metrics on [worker] listen's port plus `number` (port 0 stays 0), uses
    the first process's database (already migrated), and sends systemd nothing."""
    host, _, port = config.worker.listen.rpartition(":")
    env = {k: v for k, v in base.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(
        {
            "DISPATCHER_WORKER__PROCESSES": "1",
            "DISPATCHER_WORKER__ENABLED": "true",
            "DISPATCHER_API__ENABLED": "false",
            "DISPATCHER_DATABASE__DSN": dsn,
            "DISPATCHER_DATABASE__AUTO_MIGRATE": "false",
            "DISPATCHER_WORKER__LISTEN": f"{host}:{int(port) + number if int(port) else 0}",
        }
    )
    return env


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the first process dies, however it dies (Linux's PR_SET_PDEATHSIG),
    so that a killed daemon leaves no worker behind outside systemd's cgroup too."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ExtraWorkers:
    """The extra worker processes, each run (and waited for) by `run_one`."""

    def __init__(self, config: Config, dsn: str) -> None:
        self._config = config
        self._dsn = dsn
        self._processes: dict[int, asyncio.subprocess.Process] = {}

    @property
    def count(self) -> int:
        return self._config.worker.processes - 1

    def forward(self, signum: int) -> None:
        """Pass a signal (SIGHUP: reload) on to every extra worker running."""
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signum)

    async def run_one(self, number: int, stopping: asyncio.Event) -> None:
        """Start extra worker `number` and wait for it; stop it when `stopping` is set. An exit before that raises
        WorkerExited (the caller restarts it)."""
        argv = [
            sys.executable,
            "-m",
            "dispatcher",
            *(["--config", self._config.source] if self._config.source else []),
            "run",
        ]
        env = extra_worker_env(self._config, self._dsn, number, dict(os.environ))
        process = await asyncio.create_subprocess_exec(*argv, env=env, preexec_fn=_die_with_parent)
        self._processes[number] = process
        log.info("dispatcher.worker_started", worker=number, pid=process.pid)
        exited = asyncio.create_task(process.wait())
        stop = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait([exited, stop], return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                process.send_signal(signal.SIGTERM)
                await asyncio.wait_for(asyncio.shield(exited), self._config.worker.shutdown_grace + STOP_MARGIN)
                return
            raise WorkerExited(f"worker process {number} (pid {process.pid}) exited with code {process.returncode}")
        finally:
            stop.cancel()
            if process.returncode is None:  # cancelled, or it would not stop in time: its leases expire instead
                process.kill()
                await process.wait()
            del self._processes[number]
