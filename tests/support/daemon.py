"""The daemon as a real subprocess: its TOML configuration, `dispatcher run`, and its JSON log read back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import REPO

TEST_SETTINGS: dict[str, dict[str, Any]] = {
    # [worker] listen on port 0 too: several worker-only daemons may run at once.
    "worker": {
        "poll_interval": "100ms",
        "lease_margin": "1s",
        "shutdown_grace": "5s",
        "concurrency": 20,
        "listen": "127.0.0.1:0",
    },
    "delivery": {"allow_networks": ["127.0.0.0/8"], "timeout": "3s", "connect_timeout": "1s"},
    "retry": {"schedule": ["200ms", "200ms", "200ms"], "jitter": 0.0},
    "log": {"format": "json", "level": "info"},
    # Port 0: each daemon gets a free port for /healthz, /readyz, /metrics (logged as `api.listening`).
    "api": {"listen": "127.0.0.1:0"},
}


def toml_value(value: Any) -> str:
    """A Python value as a TOML value (for the test and benchmark configurations)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(path: Path, dsn: str, overrides: dict[str, dict[str, Any]]) -> Path:
    """A TOML file with the test settings, `overrides` merged per section."""
    return write_toml(path, TEST_SETTINGS, dsn, overrides)


def write_toml(path: Path, base: dict[str, dict[str, Any]], dsn: str, *overrides: dict[str, dict[str, Any]]) -> Path:
    """A daemon configuration: `base`, the DSN, then each override merged per section."""
    sections: dict[str, dict[str, Any]] = {k: dict(v) for k, v in base.items()}
    sections.setdefault("database", {})["dsn"] = dsn
    for override in overrides:
        for name, values in override.items():
            sections.setdefault(name, {}).update(values)
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class Daemon:
    """`python -m dispatcher --config FILE run` as a real subprocess, everything it prints (its JSON log) in a
    file."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def with_test_settings(cls, dsn: str, workdir: Path, overrides: dict[str, dict[str, Any]]) -> Daemon:
        """A daemon whose dispatcher.toml (the test settings, `overrides` merged) and daemon.log are in
        `workdir`."""
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(write_config(workdir / "dispatcher.toml", dsn, overrides), workdir / "daemon.log")

    # ---- the process -----------------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The environment it runs in: the test process's own, unbuffered."""
        return {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        """Run it; `env` adds to (or overrides) `environment()`."""
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dispatcher", "--config", str(self.config), "run"],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**self.environment(), **(env or {})},
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        """Its exit code; fails if it still runs after `timeout` seconds."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon still running after {timeout} s")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to `timeout` seconds for the drain, SIGKILL if it is still running; its exit code
        (None when it never ran)."""
        if self.alive():
            self.terminate()
            with contextlib.suppress(AssertionError):  # still running: killed below
                await self.wait_exit(timeout)
            self.kill()
        return None if self.process is None else self.process.returncode

    # ---- the log ---------------------------------------------------------------------------------------------

    def log_text(self) -> str:
        """Everything the daemon wrote, JSON or not."""
        return self.log_path.read_text()

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (non-JSON lines are skipped)."""
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def find(self, event: str) -> dict[str, Any] | None:
        """The first log line of `event` so far, or None."""
        found = self.find_all(event, most=1)
        return found[0] if found else None

    def find_all(self, event: str, most: int | None = None) -> list[dict[str, Any]]:
        """The log lines of `event` so far, the first `most` of them if given (reads the log as bytes, parsing only
        candidate lines: cheap on a benchmark's log of a line per attempt)."""
        found: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return found
        needle = json.dumps(event).encode()
        with self.log_path.open("rb") as f:
            for raw in f:
                if needle in raw:
                    try:
                        line = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(line, dict) and line.get("event") == event:
                        found.append(line)
                        if most is not None and len(found) >= most:
                            break
        return found

    async def wait_line(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first log line of `event`, once it is written; fails after `timeout` seconds, or at once if the
        daemon exited without writing it."""
        return (await self.wait_lines(event, 1, timeout))[0]

    async def wait_lines(self, event: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first `count` log lines of `event`, once they are written; fails after `timeout` seconds, or at once
        if the daemon exited without writing them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(found := self.find_all(event, most=count)) >= count:
                return found
            if self.process is not None and self.process.poll() is not None:
                if len(found := self.find_all(event, most=count)) >= count:  # written just before it exited
                    return found
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{self.log_text()}")
            await asyncio.sleep(0.02)
        raise AssertionError(f"fewer than {count} {event} lines within {timeout} s:\n{self.log_text()}")

    async def wait_ready(self, timeout: float = 30.0) -> Daemon:
        """Wait for its `dispatcher.ready` line."""
        await self.wait_line("dispatcher.ready", timeout)
        return self

    def api_address(self) -> str:
        """http://host:port of [api] listen = "127.0.0.1:0", from the daemon's `api.listening` log line."""
        line = self.find("api.listening")
        if line is None:
            raise AssertionError(f"no api.listening line:\n{self.log_text()}")
        return f"http://{line['address']}"


async def start_daemon(factory: Callable[..., Daemon], dsn: str, **overrides: Any) -> Daemon:
    """Start a daemon and wait until it says it is ready."""
    return await factory(dsn, **overrides).start().wait_ready()
