"""systemd's notify protocol: newline-separated ``KEY=value`` lines in one datagram to ``$NOTIFY_SOCKET``.

Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing, so the daemon runs the same everywhere. An
address starting with ``@`` is in the abstract namespace. See sd_notify(3); no library is needed for this.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("dispatcher.sdnotify")


class Notifier:
    """Sends state changes to the service manager; a no-op when the process was not started by one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=..."``) as one message; False when not sent.

        A failed send is logged and otherwise ignored: the daemon's work does not depend on the manager.
        """
        if self._address is None:
            return False
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            log.warning("sdnotify.failed", error=str(exc), message=lines[0] if lines else "")
            return False
        return True


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC``, or None when no watchdog is asked for.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is for; any other process ignores it.
    """
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None
