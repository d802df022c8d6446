"""The peer the daemon is compared with: pgqueuer and aiohttp doing the same signed POSTs, in a process of its own.

    python -m bench.peer load --dsn DSN
    python -m bench.peer run --dsn DSN --url URL --secret S --count N [--batch 100 --tasks 200 --loop uvloop]

`load` installs pgqueuer's schema in the workload's database and fills its queue table with one job per row of
the benchmark's `events` table (the job's payload is the event as JSON: id, type, object id, payload text,
creation time), so that the peer drains the same pre-loaded events as the daemon does. `run` is a pgqueuer
QueueManager on one asyncpg connection (as pgqueuer's own examples set it up) with one entrypoint that builds the
standard envelope (dispatcher.envelope), signs it (Standard Webhooks, dispatcher.signing) and POSTs it with a
session set up as the daemon's (bench.limits.client_session), dequeuing `batch` jobs at a time with at most
`tasks` running at once, in drain mode: it returns when the queue is empty. A non-2xx answer raises, which
pgqueuer logs as the job's exception; nothing is retried.

Each prints one JSON object: what it did and the wall-clock window it did it in.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import asyncpg

from bench.limits import client_session, run_on, signed_request
from dispatcher import envelope

ENTRYPOINT = "deliver"


async def load(args: argparse.Namespace) -> dict[str, Any]:
    from pgqueuer import Queries

    conn = await asyncpg.connect(args.dsn)
    try:
        queries = Queries.from_asyncpg_connection(conn)
        await queries.install()
        rows = await conn.fetch(
            "SELECT id::text AS id, organisation, type, object_id, payload::text AS payload, created_at"
            " FROM events ORDER BY id"
        )
        jobs = [
            json.dumps({
                "id": r["id"], "organisation": r["organisation"], "type": r["type"], "object_id": r["object_id"],
                "payload": r["payload"], "created_at": r["created_at"].isoformat(),
            }).encode()
            for r in rows
        ]  # fmt: skip
        for start in range(0, len(jobs), args.chunk):
            chunk = jobs[start : start + args.chunk]
            await queries.enqueue([ENTRYPOINT] * len(chunk), list(chunk), [0] * len(chunk))
        return {"jobs": len(jobs)}
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import pgqueuer
    from pgqueuer import Job, Queries, QueueManager
    from pgqueuer.types import QueueExecutionMode

    secrets_ = (args.secret,)
    timeout = aiohttp.ClientTimeout(total=15.0, connect=5.0)
    session = client_session(args.tasks)
    statuses: dict[int, int] = {}
    errors = 0
    conn = await asyncpg.connect(args.dsn)
    manager = QueueManager(Queries.from_asyncpg_connection(conn))

    @manager.entrypoint(ENTRYPOINT)
    async def deliver(job: Job) -> None:
        nonlocal errors
        assert job.payload is not None
        data = json.loads(job.payload)
        event = envelope.EventData(
            id=data["id"],
            organisation=data["organisation"],
            type=data["type"],
            object_id=data["object_id"],
            payload=data["payload"],
            actor=None,
            created_at=datetime.fromisoformat(data["created_at"]),
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
            raise
        if not 200 <= response.status < 300:
            raise RuntimeError(f"the receiver answered {response.status}")

    started = time.time()
    try:
        await asyncio.wait_for(
            manager.run(
                batch_size=args.batch,
                max_concurrent_tasks=args.tasks,
                mode=QueueExecutionMode.drain,
                dequeue_timeout=timedelta(seconds=1),
            ),
            args.max_seconds,
        )
        timed_out = False
    except TimeoutError:
        timed_out = True
    finished = time.time()
    await session.close()
    if not conn.is_closed():
        await conn.close()
    return {"requests": sum(statuses.values()), "statuses": statuses, "errors": errors, "timed_out": timed_out,
            "pgqueuer": pgqueuer.__version__, "batch": args.batch, "tasks": args.tasks, "loop": args.loop,
            "started": started, "finished": finished}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    loader = sub.add_parser("load", help="install pgqueuer's schema and enqueue one job per event")
    loader.add_argument("--dsn", required=True)
    loader.add_argument("--chunk", type=int, default=5000)
    runner = sub.add_parser("run", help="drain the queue: one signed POST per job")
    runner.add_argument("--dsn", required=True)
    runner.add_argument("--url", required=True)
    runner.add_argument("--secret", required=True)
    runner.add_argument("--batch", type=int, default=100)
    runner.add_argument("--tasks", type=int, default=200)
    runner.add_argument("--max-seconds", type=float, default=300)
    for command in (loader, runner):
        command.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="its event loop")
    args = parser.parse_args(argv)
    result = run_on(args.loop, load(args) if args.command == "load" else run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
