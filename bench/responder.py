"""The fallback receiver when nginx cannot be had: a bare asyncio HTTP/1.1 responder, keep-alive, no framework.

    python -m bench.responder --port 8081 --log access.log

Reads each request whole (headers and Content-Length body), answers 200 with an empty body (500 to a random
10 % of requests under /flaky/), and writes the same access-log line as the nginx receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
from typing import IO

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_FAIL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Http(asyncio.Protocol):
    def __init__(self, log: IO[str]) -> None:
        self._log = log
        self._buffer = b""
        self._requests = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self._buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            self._buffer = self._buffer[total:]
            self._requests += 1
            parts = head[0].split()
            uri = parts[1] if len(parts) > 1 else "-"
            fail = uri.startswith("/flaky/") and random.random() < 0.1
            assert self._transport is not None
            self._transport.write(_FAIL if fail else _OK)
            self._log.write(
                f"{time.time():.3f} {500 if fail else 200} {length} {uri} "
                f"{headers.get('webhook-id', '-')} {self._requests}\n"
            )
            self._log.flush()
            if fail:  # as nginx does after a 500
                self._transport.close()
                return


async def main(port: int, log: IO[str]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(lambda: _Http(log), "127.0.0.1", port, backlog=4096)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    with open(args.log, "a") as log_file:
        asyncio.run(main(args.port, log_file))
