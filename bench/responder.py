"""The fallback receiver when nginx cannot be had, and the slow receivers: a bare asyncio HTTP/1.1 responder,
keep-alive, no framework.

    python -m bench.responder --port 8081 --log access.log [--delay-ms 100 --jitter 0.2] [--loop uvloop]

Reads each request whole (headers and Content-Length body), answers 200 with an empty body (500 to a random
10 % of requests under /flaky/), and writes the same access-log line as the nginx receiver when it answers.
With `--delay-ms D` each answer waits D ms, varied uniformly by +/- `--jitter` (a fraction of D): a receiver
that takes its time, which nginx cannot be made to be.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
from typing import IO, cast

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
_FAIL = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Http(asyncio.Protocol):
    def __init__(self, log: IO[str], delay: float, jitter: float) -> None:
        self._log = log
        self._delay = delay
        self._jitter = jitter
        self._buffer = b""
        self._requests = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass of asyncio's

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
            webhook_id = headers.get("webhook-id", "-")
            if self._delay > 0:
                delay = self._delay * (1 + random.uniform(-self._jitter, self._jitter))
                asyncio.get_running_loop().call_later(
                    delay, self._answer, fail, length, uri, webhook_id, self._requests
                )
            else:
                self._answer(fail, length, uri, webhook_id, self._requests)
            if fail:
                return

    def _answer(self, fail: bool, length: int, uri: str, webhook_id: str, requests: int) -> None:
        assert self._transport is not None
        if self._transport.is_closing():  # the client gave up meanwhile: nothing was answered
            return
        self._transport.write(_FAIL if fail else _OK)
        self._log.write(f"{time.time():.3f} {500 if fail else 200} {length} {uri} {webhook_id} {requests}\n")
        self._log.flush()
        if fail:  # as nginx does after a 500
            self._transport.close()


async def main(port: int, log: IO[str], delay: float, jitter: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await loop.create_server(lambda: _Http(log, delay, jitter), "127.0.0.1", port, backlog=4096)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="each answer waits this long (default 0)")
    parser.add_argument("--jitter", type=float, default=0.0, help="the delay varies by +/- this fraction of it")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="its event loop")
    args = parser.parse_args()
    with open(args.log, "a") as log_file:
        coroutine = main(args.port, log_file, args.delay_ms / 1000, args.jitter)
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(coroutine)
        else:
            asyncio.run(coroutine)
