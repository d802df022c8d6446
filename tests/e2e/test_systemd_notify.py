"""The daemon under a fake service manager: READY, WATCHDOG pings and STOPPING arrive in order on NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.daemon import write_config
from tests.support.factories import make_webhook
from tests.support.receivers import Receiver

pytestmark = pytest.mark.db

WATCHDOG_USEC = 400_000  # the daemon must ping every 200 ms


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A datagram socket bound where systemd's would be (a short path: AF_UNIX paths are limited to 108 bytes)."""
    directory = tempfile.mkdtemp(prefix="dispatcher-notify-")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(directory, "notify"))
    sock.setblocking(False)
    yield sock
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


async def _receive(sock: socket.socket, into: list[tuple[float, set[str]]], until: float) -> None:
    """Collect (arrival time, set of KEY=value lines) from `sock` until the monotonic time `until`."""
    loop = asyncio.get_running_loop()
    while (remaining := until - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), remaining)
            into.append((time.monotonic(), set(data.decode().split("\n"))))


async def _receive_until(
    sock: socket.socket, into: list[tuple[float, set[str]]], done: Callable[[], bool], what: str, timeout: float = 10.0
) -> None:
    """Collect messages from `sock` into `into` until `done()` holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while not done():
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{what}: not within {timeout} s; got {into}"
        with contextlib.suppress(TimeoutError):
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), remaining)
            into.append((time.monotonic(), set(data.decode().split("\n"))))


def _first(messages: list[tuple[float, set[str]]], line: str) -> int:
    return next(i for i, (_at, lines) in enumerate(messages) if line in lines)


async def test_ready_watchdog_stopping_in_order(dsn, daemon_factory, notify_socket: socket.socket) -> None:
    """READY=1 comes once the daemon is up, then WATCHDOG=1 at least every WATCHDOG_USEC/2 (never a gap the
    watchdog would kill for), then STOPPING=1 only after SIGTERM; the drain ends with exit code 0."""
    daemon = daemon_factory(dsn)
    daemon.start(env={"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    messages: list[tuple[float, set[str]]] = []

    # Until READY=1 (the daemon migrates nothing here: a few seconds at most).
    deadline = time.monotonic() + 30
    while not any("READY=1" in lines for _at, lines in messages):
        assert time.monotonic() < deadline, f"no READY=1 within 30 s; got {messages}\n{daemon.log_path.read_text()}"
        assert daemon.process is not None and daemon.process.poll() is None, daemon.log_path.read_text()
        await _receive(notify_socket, messages, time.monotonic() + 0.5)
    ready = _first(messages, "READY=1")
    assert any(line.get("event") == "dispatcher.ready" for line in daemon.lines()), "READY=1 before dispatcher.ready"

    # A while of running: five pings after READY=1 (about a second).
    def pings_since_ready() -> int:
        return sum(1 for _at, lines in messages[ready + 1 :] if "WATCHDOG=1" in lines)

    await _receive_until(notify_socket, messages, lambda: pings_since_ready() >= 5, "five WATCHDOG=1 after READY=1")
    assert not any("STOPPING=1" in lines for _at, lines in messages), "STOPPING=1 before any signal"
    sent_term = time.monotonic()
    daemon.terminate()
    await _receive_until(notify_socket, messages, lambda: any("STOPPING=1" in lines for _at, lines in messages),
                         "STOPPING=1 after SIGTERM")  # fmt: skip
    assert await daemon.wait_exit() == 0, daemon.log_path.read_text()

    stopping = _first(messages, "STOPPING=1")
    assert messages[stopping][0] >= sent_term
    pings = [at for i, (at, lines) in enumerate(messages) if "WATCHDOG=1" in lines and ready < i < stopping]
    assert len(pings) >= 2, f"only {len(pings)} WATCHDOG=1 between READY=1 and STOPPING=1: {messages}"
    gaps = [b - a for a, b in zip([messages[ready][0], *pings], pings, strict=False)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"a gap of {max(gaps):.3f} s between pings would trip the watchdog"
    assert ready < stopping


# Linux 6.3+: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), the kernel's own MemoryDenyWriteExecute.
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
_UNDER_MDWE = (
    "import ctypes, os, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
    "    sys.exit(f'prctl: {os.strerror(ctypes.get_errno())}')\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'dispatcher', *sys.argv[1:]])\n"
)


def _mdwe_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(66, 0, 0, 0, 0) >= 0  # PR_GET_MDWE


@pytest.mark.skipif(not _mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux 6.3+)")
async def test_delivers_without_writable_executable_memory(tmp_path: Path, conn, dsn, receiver: Receiver) -> None:
    """The unit sets MemoryDenyWriteExecute=yes: the daemon starts, delivers an event over HTTP and drains with
    the kernel refusing writable-and-executable memory, as systemd would (inherited by every child)."""
    await make_webhook(conn, receiver.url, events=["request.create"])
    config = write_config(tmp_path / "dispatcher.toml", dsn, {})
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _UNDER_MDWE,
            "--config",
            str(config),
            "run",
            stdout=out,
            stderr=out,
            cwd=REPO,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        await conn.execute("INSERT INTO events (organisation, type, payload) VALUES ('acme', 'request.create', '{}')")
        await receiver.wait_count(1)
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0, log_path.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert "delivery.attempt" in log_path.read_text()
