"""The notify protocol: KEY=value lines in one datagram to $NOTIFY_SOCKET; the watchdog interval from the env."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.sdnotify import Notifier


@pytest.fixture
def bound() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket at a short filesystem path (AF_UNIX paths are limited to 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="sdn-"))
    path = str(directory / "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()
    os.unlink(path)
    directory.rmdir()


def test_sends_lines_as_one_datagram(bound: tuple[socket.socket, str]) -> None:
    """Several lines go out as one message, newline-separated, as sd_notify(3) expects."""
    sock, path = bound
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.notify("READY=1", "STATUS=running")
    assert sock.recv(4096) == b"READY=1\nSTATUS=running"


def test_abstract_namespace_address() -> None:
    """An address starting with '@' names a socket in the abstract namespace (a leading NUL byte)."""
    name = f"dispatcher-test-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_without_a_manager_nothing_is_sent() -> None:
    """No NOTIFY_SOCKET (not started by systemd): notify() does nothing and reports so; no watchdog."""
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    assert notifier.watchdog_interval is None


def test_a_vanished_socket_is_not_fatal(tmp_path: Path) -> None:
    """A send that fails (the manager went away) returns False instead of raising into the daemon."""
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).notify("STOPPING=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """Pings every WATCHDOG_USEC/2; none when WATCHDOG_PID names another process or the value is not usable."""
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 0.2
    assert Notifier({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None
