"""The two limits the daemon is measured against, each run as its own process so its CPU is its own.

    python -m bench.limits http --url URL --count N --concurrency C --payload-bytes B --secret S [--loop uvloop]
    python -m bench.limits db --dsn DSN --expected M [--concurrency C --per-webhook P --batch B] [--loop uvloop]

(a) `http`: a bare aiohttp POST loop doing what the daemon does per request and nothing else: the same
    session settings, envelope (dispatcher.envelope), Standard Webhooks signature (dispatcher.signing), timeout,
    capped response read and concurrency, to the same receiver; no database.
(b) `db`: the daemon's own SQL (the named queries route_events, claim_deliveries and record_results of
    sql/queries.sql, loaded with dispatcher.db.load_queries) batched as the daemon batches them: routing in
    batches of `batch`, claims as the daemon's (dispatcher.delivery: of at most a batch and the leases it may
    hold, AHEAD times its concurrency), results written as soon as the previous write is done, at most 100 rows a
    statement; every claimed delivery "answers 200" at once; no HTTP.

Each prints one JSON object: what it did and the wall-clock window it did it in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import string
import sys
import time
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

import aiohttp

from dispatcher import envelope, signing
from dispatcher.sender import USER_AGENT

PAD_ALPHABET = string.ascii_letters + string.digits


def pad_text(payload_bytes: int, seed: int = 7) -> str:
    """Random letters and digits (not compressible by TOAST) so that the payload is about `payload_bytes`."""
    import random

    rnd = random.Random(seed)
    return "".join(rnd.choice(PAD_ALPHABET) for _ in range(max(0, payload_bytes - 30)))


def payload_json(n: int, pad: str) -> str:
    """The payload text as PostgreSQL prints the jsonb the benchmark stores: {"n": <n>, "pad": "<pad>"}."""
    return f'{{"n": {n}, "pad": "{pad}"}}'


# ---- (a) the bare HTTP loop ----------------------------------------------------------------------------------


def client_session(limit: int) -> aiohttp.ClientSession:
    """An aiohttp session set up as the daemon's sender sets up its own (dispatcher.sender): `limit` connections,
    no proxy from the environment, no decompression, the daemon's User-Agent."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        trust_env=False,
        auto_decompress=False,
        headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        skip_auto_headers=("Accept-Encoding",),
    )


def signed_request(event: envelope.EventData, secrets_: tuple[str, ...]) -> tuple[bytes, dict[str, str]]:
    """The body (the standard envelope of `event`, a dispatcher.envelope.EventData) and the Standard Webhooks
    headers of one attempt, as the daemon builds them for a webhook of the standard format."""
    body = envelope.build("standard", event, 1, "")
    return body, signing.standard_headers(secrets_, event.id, int(time.time()), body)


def run_on(loop: str, main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run `main` on asyncio's own event loop or on uvloop's (`loop` "asyncio" or "uvloop")."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


async def http_loop(args: argparse.Namespace) -> dict[str, Any]:
    pad = pad_text(args.payload_bytes)
    secrets_ = (args.secret,)
    created = datetime.now(UTC)
    timeout = aiohttp.ClientTimeout(total=15.0, connect=5.0)
    session = client_session(args.concurrency)
    counter = iter(range(args.count))
    statuses: dict[int, int] = {}
    errors = 0
    deadline = time.monotonic() + args.max_seconds

    async def worker() -> None:
        nonlocal errors
        for n in counter:
            if time.monotonic() > deadline:
                return
            event_id = str(uuid.uuid4())
            event = envelope.EventData(
                id=event_id,
                organisation="bench",
                type="request.create",
                object_id=str(n),
                payload=payload_json(n, pad),
                actor=None,
                created_at=created,
            )
            body, headers = signed_request(event, secrets_)
            try:
                async with session.post(
                    args.url, data=body, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    await response.content.read(65536)
                    statuses[response.status] = statuses.get(response.status, 0) + 1
            except Exception:
                errors += 1

    started = time.time()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    finished = time.time()
    await session.close()
    return {"requests": sum(statuses.values()), "statuses": statuses, "errors": errors,
            "started": started, "finished": finished}  # fmt: skip


# ---- (b) the database alone ------------------------------------------------------------------------------------


async def db_loop(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from dispatcher import delivery
    from dispatcher.db import load_queries

    q = load_queries()
    # record_results takes the 11 result columns, then (since the health work) the failure-streak settings
    # [health] disable_after_failures and min_failing_period, then (since receivers can lower a webhook's
    # concurrency) each result's limit and Retry-After, which the daemon leaves NULL when not said: pass the
    # defaults for as many as it has.
    record_extra = [20, 3600.0, None, None][: _parameters(q["record_results"]) - 11]
    schedule = [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    max_attempts = len(schedule) + 1
    lease, test_lease = 15.0 + 10.0, 10.0 + 10.0
    owner = f"bench-limit-b:{secrets.token_hex(3)}"
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=args.pool_size)
    counts = {"route_events": 0, "claim_deliveries": 0, "record_results": 0}
    busy_ms = {"route_events": 0.0, "claim_deliveries": 0.0, "record_results": 0.0}
    rows_of = {"route_events": 0, "claim_deliveries": 0, "record_results": 0}

    async def fetch(name: str, *query_args: Any) -> list[Any]:
        """Run a named query, keeping count of calls, rows and the time each took as seen from here."""
        began = time.perf_counter()
        rows: list[Any] = await pool.fetch(q[name], *query_args)
        busy_ms[name] += (time.perf_counter() - began) * 1000
        counts[name] += 1
        rows_of[name] += len(rows)
        return rows

    pending: list[tuple[Any, ...]] = []
    unwritten: set[Any] = set()  # claimed and answered (at once), result not yet written: the daemon's recorder
    recorded_total = 0
    routing_done = False
    wake = asyncio.Event()
    queued = asyncio.Event()
    finished = asyncio.Event()

    async def route() -> None:
        nonlocal routing_done
        while True:
            rows = await fetch("route_events", args.batch, max_attempts, None)
            if rows:
                wake.set()
            if len(rows) < args.batch:
                routing_done = True
                wake.set()
                return

    # The most one claim asks for, and the most leases held: as dispatcher.delivery's Deliverer.run.
    most, leases = args.batch, delivery.AHEAD * args.concurrency

    async def claim() -> None:
        while not finished.is_set():
            wake.clear()
            # As the daemon: no request is ever in flight here, and answered results beyond one batch take slots.
            want = min(most, leases - max(0, len(unwritten) - args.batch))
            got = 0
            if want > 0:
                rows = await fetch(
                    "claim_deliveries",
                    want,
                    args.per_webhook,
                    delivery.AHEAD,
                    lease,
                    owner,
                    schedule,
                    0.0,
                    test_lease,
                    list(unwritten),
                    [],
                )
                now = datetime.now(UTC)
                for row in rows:
                    # What the recorder receives for a 200: the row's fencing token and times.
                    pending.append((row["id"], row["lease_token"], "delivered", None, 200, None, None, now, now, 0, ""))
                    unwritten.add(row["id"])
                got = len(rows)
                if got:
                    queued.set()
            if want > 0 and got == want:
                continue
            if routing_done and got == 0 and not unwritten and recorded_total >= args.expected:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.01 if not routing_done else 0.05)

    async def record() -> None:
        nonlocal recorded_total
        while recorded_total < args.expected:
            await queued.wait()
            queued.clear()
            while pending:
                batch = pending[:100]
                del pending[: len(batch)]
                columns = [list(col) for col in zip(*batch, strict=True)]
                rows = await fetch("record_results", *columns, *record_extra)
                unwritten.difference_update(row[0] for row in batch)
                # One row per delivery updated (column id, or delivery_id next to per-webhook rows).
                recorded_total += sum(1 for r in rows if r.get("delivery_id", r.get("id")) is not None)
                wake.set()
        finished.set()

    started = time.time()
    tasks = [asyncio.create_task(c) for c in (route(), claim(), record())]
    done, _ = await asyncio.wait(tasks, timeout=args.max_seconds, return_when=asyncio.FIRST_EXCEPTION)
    finished_at = time.time()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    await pool.close()
    statements = {
        name: {"calls": counts[name], "rows": rows_of[name], "ms_each": round(busy_ms[name] / max(1, counts[name]), 2)}
        for name in counts
    }
    return {"deliveries": recorded_total, "round_trips": sum(counts.values()), "statements": statements,
            "started": started, "finished": finished_at}  # fmt: skip


def _parameters(sql: str) -> int:
    """The highest $n placeholder of a query."""
    return max((int(m) for m in re.findall(r"\$(\d+)", sql)), default=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="limit", required=True)
    http = sub.add_parser("http", help="(a) the bare aiohttp POST loop")
    http.add_argument("--url", required=True)
    http.add_argument("--count", type=int, required=True)
    http.add_argument("--concurrency", type=int, default=100)
    http.add_argument("--payload-bytes", type=int, default=1024)
    http.add_argument("--secret", required=True)
    http.add_argument("--max-seconds", type=float, default=60)
    db = sub.add_parser("db", help="(b) the daemon's SQL without HTTP")
    db.add_argument("--dsn", required=True)
    db.add_argument("--expected", type=int, required=True)
    db.add_argument("--concurrency", type=int, default=100)
    db.add_argument("--per-webhook", type=int, default=100)
    db.add_argument("--batch", type=int, default=100)
    db.add_argument("--pool-size", type=int, default=10)
    db.add_argument("--max-seconds", type=float, default=120)
    for command in (http, db):
        command.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="its event loop")
    args = parser.parse_args(argv)
    result = run_on(args.loop, http_loop(args) if args.limit == "http" else db_loop(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
