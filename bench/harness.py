"""The fixtures and workloads: a throwaway PostgreSQL, the receiver, the daemon as a subprocess, the observer.

Everything is counted by the observer, never taken from the daemon's own counters alone: arrivals and their
times from the receiver's access log, delivery states, attempts and dead tuples from the database, CPU and
peak RSS from /proc. The daemon's own number used is `round_trips` from its `dispatcher.stopped` line.

The parts the test suite has too come from tests.support: the PostgreSQL server and its databases, the daemon
subprocess and its TOML, webhooks, waits. What is here is the benchmark's own: sampling, counting, workloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from bench.limits import pad_text
from bench.proc import Sampler, machine_busy_cpu, peak_rss_mib, runqueue_wait, self_cpu, tree_cpu
from bench.receiver import Hit, Receiver
from bench.scrape import claim_latency, scrape
from dispatcher.config import ConfigError, WorkerConfig, load_config
from dispatcher.signing import generate_policy_key
from tests.support import REPO
from tests.support.daemon import Daemon as TestDaemon
from tests.support.daemon import write_toml
from tests.support.database import create_database, create_migrated, drop_database, start_server
from tests.support.factories import make_webhook
from tests.support.waits import poll

ORG = "bench"
EVENT_TYPE = "request.create"
# The daemon's defaults except where the benchmark needs otherwise: loopback allowed, no jitter, a per-webhook
# cap as high as the process cap (so that fan-out 1 can use every slot), no API (health and metrics on a free
# port: several daemons may run at once).
DAEMON_SETTINGS: dict[str, dict[str, Any]] = {
    "api": {"enabled": False},
    "worker": {
        "concurrency": 100,
        "per_webhook_concurrency": 100,
        "batch_size": 100,
        "shutdown_grace": "5s",
        "listen": "127.0.0.1:0",
    },
    "delivery": {"allow_networks": ["127.0.0.0/8"]},
    "retry": {"jitter": 0.0},
    "log": {"format": "json", "level": "info"},
}
TEMPLATE = "bench_template"  # migrated once; each workload's database is a copy
# The short schedule of the retry workload: 7 retries 100 ms apart (a delivery is lost only after 8 failures
# in a row, p = 1e-8).
OUR_GROUPS = ("daemon", "postgres", "receiver", "harness", "client")
SHORT_RETRY: dict[str, dict[str, Any]] = {
    "retry": {"schedule": ["100ms"] * 7, "jitter": 0.0},
    "worker": {"poll_interval": "100ms"},
}


# The settings the benchmark sets in [worker] that the `defaults` rows leave to the daemon.
SLOT_SETTINGS = ("concurrency", "per_webhook_concurrency")


def write_config(path: Path, dsn: str, *overrides: dict[str, dict[str, Any]], defaults: bool = False) -> Path:
    """The daemon's TOML: DAEMON_SETTINGS (without SLOT_SETTINGS when `defaults`: the daemon's own then hold), the
    DSN, then each override merged per section."""
    base = DAEMON_SETTINGS
    if defaults:
        worker = {k: v for k, v in DAEMON_SETTINGS["worker"].items() if k not in SLOT_SETTINGS}
        base = {**DAEMON_SETTINGS, "worker": worker}
    return write_toml(path, base, dsn, *overrides)


def daemon_defaults() -> dict[str, int]:
    """The daemon's own [worker] concurrency and per_webhook_concurrency (what the `defaults` rows run with)."""
    defaults = WorkerConfig()
    return {"concurrency": defaults.concurrency, "per_webhook_concurrency": defaults.per_webhook_concurrency}


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max (nearest rank) of `values`, in the values' unit."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "max": ordered[-1]}


class Daemon(TestDaemon):
    """The test suite's daemon subprocess (tests.support.daemon), plus what the benchmark reads from it: peak RSS,
    the `dispatcher.stopped` line, warnings and errors."""

    def __init__(self, workdir: Path, config: Path) -> None:
        super().__init__(config, workdir / "daemon.log")
        self.peak_rss_mib: float | None = None

    def environment(self) -> dict[str, str]:
        """The harness's environment without DISPATCHER_* (the configuration file alone decides), output buffered
        as a service's would be."""
        return {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}

    def problems(self) -> tuple[Counter[str], list[str]]:
        """warning and error log lines by event name, and the first few error lines (or non-JSON lines) whole."""
        seen: Counter[str] = Counter()
        errors: list[str] = []
        with self.log_path.open("rb") as f:
            for raw in f:
                if b'"level": "warning"' in raw or b'"level": "error"' in raw:
                    with contextlib.suppress(ValueError):
                        seen[json.loads(raw).get("event", "?")] += 1
                if (b'"level": "error"' in raw or not raw.startswith(b"{")) and len(errors) < 5:
                    errors.append(raw.decode("utf-8", "replace").rstrip()[:2000])
        return seen, errors

    async def stop_and_report(self, timeout: float = 30.0) -> dict[str, Any]:
        """Note the peak RSS, stop it (SIGTERM, SIGKILL after `timeout`), return its `dispatcher.stopped` line (empty
        when there is none)."""
        if self.alive():
            self.peak_rss_mib = peak_rss_mib(self.pid)
        await self.stop(timeout)
        return self.find("dispatcher.stopped") or {}


@dataclass
class Run:
    """One workload's raw observations."""

    name: str
    expected: int
    hits: list[Hit] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    delivered: set[tuple[str, str]] = field(default_factory=set)  # (path, webhook-id) pairs that got a 2xx

    def add(self, hits: list[Hit]) -> None:
        self.hits += hits
        self.delivered.update((h.uri, h.webhook_id) for h in hits if 200 <= h.status < 300)


class Bench:
    """The fixtures shared by every workload, and the workloads."""

    def __init__(
        self,
        root: Path,
        *,
        receiver: str = "auto",
        concurrency: int = 100,
        progress: bool = True,
        loop: str = "asyncio",
    ) -> None:
        self.root = root
        self.concurrency = concurrency
        self.progress = progress
        self.loop = loop  # "uvloop": the limits, the peer and the daemons run on uvloop
        self.receiver = Receiver(root / "receiver", receiver)
        self.slow: Receiver | None = None  # the delaying responder of the latency-bound workload, started for it
        self._receivers: list[int] = []
        self._daemon_loop: dict[str, dict[str, Any]] | None = None  # [worker] event_loop, once checked
        self.sampler = Sampler(interval=0.05)
        self.server: Any = None
        self.pg_pid = 0
        self.notes: list[str] = []
        self.env: dict[str, Any] = {}
        self._seq = 0
        self.profile: dict[str, Any] | None = None

    def say(self, text: str) -> None:
        if self.progress:
            print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # ---- set-up and tear-down ----------------------------------------------------------------------------------

    async def start(self) -> None:
        self.sampler.start()
        self.sampler.watch("harness", self_cpu)
        self.sampler.watch("machine", machine_busy_cpu)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.server = start_server(self.root, "embedded")
        pid = self.server.get_pid()
        assert pid is not None
        self.pg_pid = int(pid)
        self.sampler.watch_tree("postgres", self.pg_pid)
        conn = await asyncpg.connect(await create_migrated(self.server, TEMPLATE))
        try:
            settings = await conn.fetch(
                "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
                ["shared_buffers", "synchronous_commit", "fsync", "wal_level", "max_connections", "server_version"],
            )
            self.env["postgres"] = {r["name"]: r["setting"] + (r["unit"] or "") for r in settings}
        finally:
            await conn.close()
        self.receiver.start()
        self._receivers.append(self.receiver.pid)
        self.sampler.watch("receiver", lambda: sum(tree_cpu(p) for p in self._receivers))
        self.env["receiver"] = {"kind": self.receiver.kind, "notes": self.receiver.notes}
        self.say(f"PostgreSQL {self.env['postgres'].get('server_version')} and {self.receiver.kind} receiver up")

    async def stop(self) -> None:
        self.receiver.stop()
        if self.slow is not None:
            self.slow.stop()
        if self.server is not None:
            self.server.cleanup()
        self.sampler.stop()

    async def fresh_database(self, name: str) -> str:
        """A new database copied from the migrated template; returns its DSN."""
        self._seq += 1
        return await create_database(self.server, f"w{self._seq}_{name}".replace("-", "_")[:60], TEMPLATE)

    async def drop_database(self, dsn: str) -> None:
        await drop_database(self.server, dsn.rsplit("/", 1)[1].split("?", 1)[0])

    async def populate(
        self,
        dsn: str,
        *,
        paths: list[str],
        events: int,
        payload_bytes: int,
        jwt_alg: str | None = None,
        receiver: Receiver | None = None,
    ) -> dict[str, Any]:
        """The organisation, one webhook per path of `receiver` (the main one by default; all subscribed to the
        type, and under one webhook policy of `jwt_alg` when given: JWT bodies), and `events` pre-loaded events.
        Returns the (last) webhook's secret."""
        receiver = receiver or self.receiver
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("INSERT INTO organisation (id, name) VALUES ($1, $1)", ORG)
            policy_id = None
            if jwt_alg is not None:
                policy_id = await conn.fetchval(
                    "INSERT INTO webhook_policy (organisation, jwt_alg, jwt_audience, signing_key)"
                    " VALUES ($1, $2, 'bench', $3) RETURNING id",
                    ORG,
                    jwt_alg,
                    generate_policy_key(jwt_alg).signing_key,
                )
            secret = ""
            for i, path in enumerate(paths):
                webhook_id, secret = await make_webhook(
                    conn, receiver.url(path), organisation=ORG, events=[EVENT_TYPE], name=f"bench-{i}"
                )
                if policy_id is not None:
                    await conn.execute("UPDATE webhook SET policy_id = $1 WHERE id = $2", policy_id, webhook_id)
            await self.insert_events(conn, events, payload_bytes)
            return {"secret": secret}
        finally:
            await conn.close()

    @staticmethod
    async def insert_events(conn: asyncpg.Connection, n: int, payload_bytes: int, chunk: int = 5000) -> None:
        pad = pad_text(payload_bytes)
        for start in range(0, n, chunk):
            await conn.execute(
                "INSERT INTO events (organisation, type, object_id, payload)"
                " SELECT $1, $2, g::text, jsonb_build_object('n', g, 'pad', $3::text)"
                " FROM generate_series($4::int, $5::int) g",
                ORG,
                EVENT_TYPE,
                pad,
                start + 1,
                min(n, start + chunk),
            )

    # ---- daemons -----------------------------------------------------------------------------------------------

    async def start_daemons(
        self, dsn: str, count: int, workdir: Path, *overrides: dict[str, dict[str, Any]], defaults: bool = False
    ) -> list[Daemon]:
        """`count` daemon processes on `dsn`: the benchmark's settings, `--concurrency` for both slot settings
        (the daemon's own defaults for them when `defaults`), [worker] event_loop under `--loop uvloop`, then
        `overrides`."""
        daemons = []
        loop = self.daemon_loop(workdir, dsn)
        for i in range(count):
            d = workdir / f"daemon{i}"
            d.mkdir(parents=True, exist_ok=True)
            slots = {} if defaults else {"worker": dict.fromkeys(SLOT_SETTINGS, self.concurrency)}
            config = write_config(d / "dispatcher.toml", dsn, slots, loop, *overrides, defaults=defaults)
            daemons.append(Daemon(d, config).start())
        pids = [d.pid for d in daemons]
        self.sampler.watch("daemon", lambda: sum(tree_cpu(p) for p in pids))
        self.sampler.watch("daemon-wait", lambda: sum(runqueue_wait(p) for p in pids))
        return daemons

    def daemon_loop(self, workdir: Path, dsn: str) -> dict[str, dict[str, Any]]:
        """The override that puts the daemon on uvloop under `--loop uvloop` ([worker] event_loop), or nothing
        when the daemon's configuration does not know the key yet (noted once)."""
        if self.loop == "asyncio":
            return {}
        if self._daemon_loop is None:
            self._daemon_loop = {"worker": {"event_loop": self.loop}}
            workdir.mkdir(parents=True, exist_ok=True)
            probe = write_config(workdir / "event-loop-check.toml", dsn, self._daemon_loop)
            try:
                load_config(probe, environ={})
            except ConfigError as e:
                self._daemon_loop = {}
                reason = e.reason.split(";")[0]  # "unknown key 'event_loop'", without the list of known keys
                self.notes.append(
                    f"--loop {self.loop}: the daemon refused [worker] event_loop ({reason}): it ran on asyncio"
                )
        return self._daemon_loop

    async def stop_daemons(self, daemons: list[Daemon]) -> dict[str, Any]:
        self.sampler.sample_now()
        claims = await self.claim_latency(daemons)
        stopped = await asyncio.gather(*(d.stop_and_report() for d in daemons))
        self.sampler.unwatch("daemon")
        self.sampler.unwatch("daemon-wait")
        problems: Counter[str] = Counter()
        errors: list[str] = []
        for d in daemons:
            seen, lines = d.problems()
            problems += seen
            errors += lines
        return {
            "round_trips": sum(int(s.get("round_trips", 0)) for s in stopped),
            "daemon_attempts": sum(int(s.get("attempts", 0)) for s in stopped),
            "exit_codes": [s.get("exit_code") for s in stopped],
            "peak_rss_mib": max((d.peak_rss_mib or 0.0) for d in daemons),
            "log_problems": dict(problems),
            "log_errors": errors,
            "claim": claims,
        }

    async def claim_latency(self, daemons: list[Daemon]) -> dict[str, Any] | None:
        """The daemons' `dispatcher_claim_duration_seconds` histogram, added up over the processes (each serves
        its /metrics on the [worker] listen address its `dispatcher.ready` line gives): count, mean and
        percentiles in ms; None when a daemon does not have the metric (noted once)."""
        texts = []
        for d in daemons:
            ready = d.find("dispatcher.ready") or {}
            if not d.alive() or not ready.get("listen"):
                continue  # dead, or not ready yet (a short drain may be over before the last one starts)
            try:
                texts.append(await scrape(f"http://{ready['listen']}/metrics"))
            except OSError as e:
                self.say(f"could not scrape {ready['listen']}: {e}")
        if not texts:
            return None
        found = claim_latency(texts)
        if found is not None:
            found["processes"] = len(texts)
        if found is None:
            note = "the daemon has no dispatcher_claim_duration_seconds metric: claim latency n/a"
            if note not in self.notes:
                self.notes.append(note)
        return found

    # ---- observing --------------------------------------------------------------------------------------------

    async def collect(
        self, run: Run, done: Any, timeout: float, daemons: list[Daemon], receiver: Receiver | None = None
    ) -> None:
        """Read the access log (of the main receiver unless told) into `run.hits` until `done(run)` holds, the
        timeout passes or every daemon died."""
        log = (receiver or self.receiver).log
        deadline = time.monotonic() + timeout
        while True:
            run.add(log.read_new())
            if done(run):
                return
            if time.monotonic() > deadline:
                run.extra["timed_out"] = True
                self.say(f"{run.name}: timed out after {timeout:.0f} s")
                return
            if daemons and not any(d.alive() for d in daemons):
                run.extra["daemon_died"] = True
                self.say(f"{run.name}: the daemon died")
                return
            await asyncio.sleep(0.02)

    async def database_facts(self, dsn: str, since_xacts: int) -> dict[str, Any]:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            states = {
                r["state"]: r["n"] for r in await conn.fetch("SELECT state, count(*) AS n FROM delivery GROUP BY 1")
            }
            attempts = await conn.fetchval("SELECT count(*) FROM attempt")
            dead = {
                r["relname"]: r["n_dead_tup"]
                for r in await conn.fetch(
                    "SELECT relname, n_dead_tup FROM pg_stat_user_tables"
                    " WHERE relname IN ('delivery', 'events', 'attempt')"
                )
            }
            xacts = await self._xacts(conn) - since_xacts
            return {"db_states": states, "db_attempts": attempts, "dead_tuples": dead, "xacts": xacts}
        finally:
            await conn.close()

    @staticmethod
    async def _xacts(conn: asyncpg.Connection) -> int:
        n: int = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        return n

    async def wait_db_settled(self, dsn: str, expected: int, timeout: float = 15.0) -> None:
        """Until `expected` deliveries are delivered in the database (results are written in batches)."""
        conn = await asyncpg.connect(dsn)
        try:

            async def settled() -> bool:
                delivered: int = await conn.fetchval("SELECT count(*) FROM delivery WHERE state = 'delivered'")
                return delivered >= expected

            with contextlib.suppress(AssertionError):  # given up on: the report shows what the database has
                await poll(settled, "deliveries delivered in the database", timeout, interval=0.05)
        finally:
            await conn.close()

    def cpu(self, t0: float, t1: float, deliveries: int, groups: tuple[str, ...]) -> dict[str, Any]:
        """CPU seconds per 1,000 deliveries of each group in the window, and the window's utilisation of 2 cores."""
        per_1k: dict[str, float | None] = {}
        total = 0.0
        for g in groups:
            used = self.sampler.cpu_between(g, t0, t1)
            per_1k[g] = round(used / deliveries * 1000, 4) if used is not None and deliveries else None
            total += used or 0.0
        wall = max(t1 - t0, 1e-9)
        cpus = os.cpu_count() or 1
        # Whatever else ran on the machine meanwhile (other people's tests, ...): busy CPU not in any of ours.
        ours = sum(self.sampler.cpu_between(g, t0, t1) or 0.0 for g in OUR_GROUPS)
        machine = self.sampler.cpu_between("machine", t0, t1)
        other = None if machine is None else round(max(0.0, machine - ours) / cpus / wall, 3)
        return {"cpu_s_per_1k": per_1k, "cpu_utilisation": round(total / cpus / wall, 3), "other_load": other}

    # ---- limits ------------------------------------------------------------------------------------------------

    async def limit_http(self, count: int, payload_bytes: int) -> dict[str, Any]:
        """(a) the bare aiohttp loop, `count` requests to the receiver, as many at once as the daemon sends."""
        concurrency = self.concurrency
        name = f"a-http-{payload_bytes // 1024}KiB"
        self.say(f"limit (a): bare aiohttp loop, {count} requests of {payload_bytes} B")
        from dispatcher.signing import generate_secret

        self.receiver.log.mark()
        path = f"/ok/{name}"
        result = await self.run_client(
            "limit (a)", "bench.limits", "http", "--url", self.receiver.url(path), "--count", str(count),
            "--concurrency", str(concurrency), "--payload-bytes", str(payload_bytes), "--secret", generate_secret(),
        )  # fmt: skip
        run = Run(name, count)
        await self.collect(run, lambda r: len(r.hits) >= result["requests"], 10, [])
        ok = [h for h in run.hits if h.status == 200]
        return self._rate_row(
            name,
            run,
            ok,
            ("client", "receiver"),
            extra={"payload_bytes": payload_bytes, "concurrency": concurrency, "client": result},
        )

    async def run_client(self, label: str, module: str, *args: str, sampled: bool = True) -> dict[str, Any]:
        """Run `python -m MODULE ARGS --loop LOOP` (as the sampled "client" when `sampled`) and return the JSON it
        prints."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, *args, "--loop", self.loop, stdout=asyncio.subprocess.PIPE, cwd=REPO
        )
        if sampled:
            self.sampler.watch_tree("client", proc.pid)
        out, _ = await proc.communicate()
        if sampled:
            self.sampler.unwatch("client")
        if proc.returncode != 0:
            raise RuntimeError(f"{label} failed with exit code {proc.returncode}")
        result: dict[str, Any] = json.loads(out)
        return result

    async def limit_db(self, fanout: int, events: int, payload_bytes: int) -> dict[str, Any]:
        """(b) the daemon's SQL alone on the same pre-loaded data as the drain, no HTTP."""
        name = f"b-db-f{fanout}-{payload_bytes // 1024}KiB"
        expected = events * fanout
        self.say(f"limit (b): the daemon's SQL alone, {events} events x fan-out {fanout}, {payload_bytes} B")
        dsn = await self.fresh_database(name)
        try:
            await self.populate(dsn, paths=[f"/ok/{name}/{i}" for i in range(fanout)], events=events,
                                payload_bytes=payload_bytes)  # fmt: skip
            result = await self.run_client(
                "limit (b)", "bench.limits", "db", "--dsn", dsn, "--expected", str(expected),
                "--concurrency", str(self.concurrency), "--per-webhook", str(self.concurrency),
            )  # fmt: skip
            t0, t1 = result["started"], result["finished"]
            n = result["deliveries"]
            row = {
                "name": name,
                "fanout": fanout,
                "payload_bytes": payload_bytes,
                "deliveries": n,
                "expected": expected,
                "seconds": round(t1 - t0, 3),
                "per_s": round(n / (t1 - t0), 1) if n else 0.0,
                "round_trips_per_delivery": round(result["round_trips"] / n, 4) if n else None,
                "statements": result["statements"],
            }
            row.update(self.cpu(t0, t1, n, ("client", "postgres")))
            return row
        finally:
            await self.drop_database(dsn)

    async def peer(self, events: int, payload_bytes: int, *, batch: int = 100, tasks: int = 200) -> dict[str, Any]:
        """The peer (bench/peer.py: pgqueuer and aiohttp, `batch` jobs a dequeue, at most `tasks` at once) draining
        `events` pre-loaded events to one webhook: the same signed POSTs to the same receiver. Its CPU is the
        "client"'s; lost and duplicated are counted as for the daemon (a job per event, none retried)."""
        name = f"peer-pgqueuer-f1-{payload_bytes // 1024}KiB"
        self.say(f"peer: pgqueuer + aiohttp, {events} events of {payload_bytes} B, batch {batch}, {tasks} tasks")
        dsn = await self.fresh_database(name)
        try:
            path = f"/ok/{name}/0"
            populated = await self.populate(dsn, paths=[path], events=events, payload_bytes=payload_bytes)
            await self.run_client("the peer's load", "bench.peer", "load", "--dsn", dsn, sampled=False)
            conn = await asyncpg.connect(dsn)
            try:
                ids = [str(r["id"]) for r in await conn.fetch("SELECT id FROM events")]
                xacts0 = await self._xacts(conn)
            finally:
                await conn.close()
            self.receiver.log.mark()
            result = await self.run_client(
                "the peer", "bench.peer", "run", "--dsn", dsn, "--url", self.receiver.url(path),
                "--secret", populated["secret"], "--batch", str(batch), "--tasks", str(tasks),
                "--max-seconds", str(60 + events / 100),
            )  # fmt: skip
            run = Run(name, events)
            await self.collect(run, lambda r: len(r.hits) >= result["requests"], 10, [])
            ok = [h for h in run.hits if 200 <= h.status < 300]
            expected = {(path, i) for i in ids}
            xacts = await self._xacts_of(dsn) - xacts0
            delivered = len(run.delivered & expected)
            row = self._rate_row(name, run, ok, ("client", "postgres", "receiver"), extra={
                "fanout": 1, "payload_bytes": payload_bytes, "events": events, "client": result,
                "delivered": delivered, "lost": len(expected - run.delivered),
                "duplicated": len(ok) - len(run.delivered),
                "xacts_per_delivery": round(xacts / delivered, 4) if delivered else None,
            })  # fmt: skip
            if row["lost"] or result.get("timed_out"):
                self.notes.append(f"the peer lost {row['lost']} of {events} deliveries: its row does not compare")
            return row
        finally:
            await self.drop_database(dsn)

    def _rate_row(
        self, name: str, run: Run, ok: list[Hit], groups: tuple[str, ...], extra: dict[str, Any]
    ) -> dict[str, Any]:
        if len(ok) < 2:
            return {"name": name, "deliveries": len(ok), "per_s": 0.0, **extra}
        t0, t1 = min(h.at for h in ok), max(h.at for h in ok)
        row: dict[str, Any] = {
            "name": name,
            "deliveries": len(ok),
            "expected": run.expected,
            "seconds": round(t1 - t0, 3),
            "per_s": round(len(ok) / max(t1 - t0, 1e-3), 1),
        }
        row.update(self.cpu(t0, t1, len(ok), groups))
        row.update(extra)
        return row

    # ---- workloads ---------------------------------------------------------------------------------------------

    async def drain(
        self,
        name: str,
        *,
        fanout: int,
        events: int,
        payload_bytes: int,
        daemons: int = 1,
        path: str = "ok",
        overrides: dict[str, dict[str, Any]] | None = None,
        profile: bool = False,
        jwt_alg: str | None = None,
        defaults: bool = False,
        together: bool = False,
    ) -> dict[str, Any]:
        """Pre-load `events`, start the daemon(s), count until every delivery has arrived (with JWT bodies signed
        by a webhook policy of `jwt_alg` when given; with the daemon's own concurrency settings when
        `defaults`). `together`: the events are inserted in a transaction committed once every daemon is ready,
        so that all of them drain from the start (the later ones would otherwise find part of it done)."""
        expected = events * fanout
        self.say(f"{name}: {events} events x fan-out {fanout}, {payload_bytes} B, {daemons} daemon(s)")
        dsn = await self.fresh_database(name)
        workdir = self.root / name
        try:
            paths = [f"/{path}/{name}/{i}" for i in range(fanout)]
            preload = 0 if together else events
            await self.populate(dsn, paths=paths, events=preload, payload_bytes=payload_bytes, jwt_alg=jwt_alg)
            conn = await asyncpg.connect(dsn)
            try:
                held = conn.transaction()
                if together:
                    await held.start()
                    await self.insert_events(conn, events, payload_bytes)
                ids = [str(r["id"]) for r in await conn.fetch("SELECT id FROM events")]
                xacts0 = await self._xacts_of(dsn)
                self.receiver.log.mark()
                run = Run(name, expected)
                procs = await self.start_daemons(dsn, daemons, workdir, overrides or {}, defaults=defaults)
                if together:
                    with contextlib.suppress(AssertionError):  # it died: collect() notices
                        await asyncio.gather(*(d.wait_ready() for d in procs))
                    await held.commit()
            finally:
                await conn.close()
            profiler = self._start_profiler(procs[0], workdir) if profile else None
            timeout = 60 + expected / 100
            await self.collect(run, lambda r: len(r.delivered) >= expected, timeout, procs)
            await self.wait_db_settled(dsn, expected)
            if profiler is not None:
                self._stop_profiler(profiler, workdir)
            stopped = await self.stop_daemons(procs)
            run.add(self.receiver.log.read_new())
            facts = await self.database_facts(dsn, xacts0)
            expected_keys = {(p, i) for p in paths for i in ids}
            return self._workload_row(run, expected_keys, stopped, facts, extra={
                "fanout": fanout, "events": events, "payload_bytes": payload_bytes, "daemons": daemons,
                **({"worker": daemon_defaults()} if defaults else {}),
            })  # fmt: skip
        finally:
            await self.drop_database(dsn)

    def _workload_row(
        self,
        run: Run,
        expected_keys: set[tuple[str, str]],
        stopped: dict[str, Any],
        facts: dict[str, Any],
        extra: dict[str, Any],
        latency_ms: list[float] | None = None,
    ) -> dict[str, Any]:
        ok = [h for h in run.hits if 200 <= h.status < 300]
        got = run.delivered
        delivered = len(got & expected_keys)
        row: dict[str, Any] = {
            "name": run.name,
            **extra,
            "expected": len(expected_keys),
            "delivered": delivered,
            "lost": len(expected_keys - got),
            "unexpected": len(got - expected_keys),
            "duplicated": len(ok) - len(got),
            "requests": len(run.hits),
            "attempts_per_delivery": round(len(run.hits) / delivered, 4) if delivered else None,
            "db_delivered": facts["db_states"].get("delivered", 0),
            "db_states": facts["db_states"],
            "db_attempts": facts["db_attempts"],
            "dead_tuples": facts["dead_tuples"],
            "round_trips_per_delivery": round(stopped["round_trips"] / delivered, 4) if delivered else None,
            "xacts_per_delivery": round(facts["xacts"] / delivered, 4) if delivered else None,
            "peak_rss_mib": round(stopped["peak_rss_mib"], 1),
            "daemon": stopped,
            **run.extra,
        }
        if len(run.hits) >= 2:
            t0, t1 = min(h.at for h in run.hits), max(h.at for h in run.hits)
            row["seconds"] = round(t1 - t0, 3)
            row["per_s"] = round(delivered / max(t1 - t0, 1e-3), 1)
            row.update(self.cpu(t0, t1, delivered, ("daemon", "postgres", "receiver", "harness")))
            waited = self.sampler.cpu_between("daemon-wait", t0, t1)
            if waited is not None:
                # Ready to run but without a CPU (PostgreSQL and nginx share the machine's cores with it).
                row["daemon_wait_per_s"] = round(waited / max(t1 - t0, 1e-3), 2)
        if latency_ms is not None:
            row["latency_ms"] = {
                k: (round(v, 1) if v is not None else None) for k, v in percentiles(latency_ms).items()
            }
            row["latency_samples"] = len(latency_ms)
        return row

    async def latency_bound(
        self,
        name: str,
        *,
        webhooks: int,
        events: int,
        delay_ms: float,
        jitter: float,
        concurrency: int,
        payload_bytes: int = 1024,
    ) -> dict[str, Any]:
        """`events` pre-loaded events to `webhooks` webhooks on the delaying responder (each answer after
        `delay_ms` +/- `jitter`), drained by one daemon of [worker] concurrency `concurrency`. The most it can
        do is Little's law's bound, concurrency / mean answer time, which the row compares its rate with."""
        if self.slow is None:
            self.slow = Receiver(self.root / "slow", delay_ms=delay_ms, jitter=jitter, loop=self.loop)
            self.slow.start()
            self._receivers.append(self.slow.pid)
        bound = concurrency / (delay_ms / 1000)
        expected = events * webhooks
        self.say(f"{name}: {events} events x {webhooks} webhooks answering in {delay_ms:g} ms +/- {jitter:.0%}, "
                 f"concurrency {concurrency}: at most {bound:,.0f}/s")  # fmt: skip
        dsn = await self.fresh_database(name)
        workdir = self.root / name
        try:
            paths = [f"/ok/{name}/{i}" for i in range(webhooks)]
            await self.populate(dsn, paths=paths, events=events, payload_bytes=payload_bytes, receiver=self.slow)
            conn = await asyncpg.connect(dsn)
            try:
                ids = [str(r["id"]) for r in await conn.fetch("SELECT id FROM events")]
                xacts0 = await self._xacts(conn)
            finally:
                await conn.close()
            self.slow.log.mark()
            run = Run(name, expected)
            procs = await self.start_daemons(dsn, 1, workdir, {"worker": {"concurrency": concurrency}})
            await self.collect(run, lambda r: len(r.delivered) >= expected, 60 + expected / 100, procs, self.slow)
            await self.wait_db_settled(dsn, expected)
            stopped = await self.stop_daemons(procs)
            run.add(self.slow.log.read_new())
            facts = await self.database_facts(dsn, xacts0)
            row = self._workload_row(run, {(p, i) for p in paths for i in ids}, stopped, facts, extra={
                "fanout": webhooks, "events": events, "payload_bytes": payload_bytes, "daemons": 1,
                "concurrency": concurrency, "delay_ms": delay_ms, "jitter": jitter, "bound_per_s": bound,
            })  # fmt: skip
            if row.get("per_s"):
                row["ratio_bound"] = round(row["per_s"] / bound, 3)
            return row
        finally:
            await self.drop_database(dsn)

    async def sequential(self, name: str, count: int, payload_bytes: int = 1024) -> dict[str, Any]:
        """One event at a time: insert, wait until it arrives, insert the next. Latency insert -> arrival."""
        self.say(f"{name}: {count} events one at a time")
        dsn = await self.fresh_database(name)
        workdir = self.root / name
        try:
            paths = [f"/ok/{name}/0"]
            await self.populate(dsn, paths=paths, events=0, payload_bytes=payload_bytes)
            conn = await asyncpg.connect(dsn)
            try:
                xacts0 = await self._xacts(conn)
                self.receiver.log.mark()
                procs = await self.start_daemons(dsn, 1, workdir)
                await procs[0].wait_ready()
                await asyncio.sleep(0.5)  # the listener connects after `ready`
                run = Run(name, count)
                pad = pad_text(payload_bytes)
                created: dict[str, float] = {}
                for n in range(count):
                    row = await conn.fetchrow(
                        "INSERT INTO events (organisation, type, object_id, payload)"
                        " VALUES ($1, $2, $3, jsonb_build_object('n', $4::int, 'pad', $5::text))"
                        " RETURNING id, extract(epoch FROM created_at)::float8 AS at",
                        ORG, EVENT_TYPE, str(n), n, pad,
                    )  # fmt: skip
                    assert row is not None
                    event_id = str(row["id"])
                    created[event_id] = row["at"]
                    await self.collect(run, lambda r, e=event_id: any(h.webhook_id == e for h in r.hits[-5:]), 10,
                                       procs)  # fmt: skip
                    if run.extra.get("timed_out") or run.extra.get("daemon_died"):
                        break
                await self.wait_db_settled(dsn, len(created))
                stopped = await self.stop_daemons(procs)
            finally:
                await conn.close()
            facts = await self.database_facts(dsn, xacts0)
            warmup = 5  # the first few pay for connecting and preparing statements
            skipped = set(list(created)[:warmup])
            latency = [
                (h.at - created[h.webhook_id]) * 1000
                for h in run.hits
                if h.status == 200 and h.webhook_id in created and h.webhook_id not in skipped
            ]
            return self._workload_row(run, {(paths[0], e) for e in created}, stopped, facts,
                                      extra={"events": count, "payload_bytes": payload_bytes, "warmup_dropped": warmup},
                                      latency_ms=latency)  # fmt: skip
        finally:
            await self.drop_database(dsn)

    async def open_loop(self, name: str, rate: float, seconds: float, payload_bytes: int = 1024) -> dict[str, Any]:
        """Events inserted at a fixed `rate` for `seconds` whatever the daemon does (ticks of 10 ms, one INSERT
        each), then wait for the rest. Latency insert (created_at) -> arrival ($msec); the first 10 % of the time
        is warm-up and left out."""
        self.say(f"{name}: open loop at {rate:.0f} events/s for {seconds:g} s")
        dsn = await self.fresh_database(name)
        workdir = self.root / name
        try:
            paths = [f"/ok/{name}/0"]
            await self.populate(dsn, paths=paths, events=0, payload_bytes=payload_bytes)
            pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
            try:
                xacts0 = await self._xacts_of(dsn)
                self.receiver.log.mark()
                procs = await self.start_daemons(dsn, 1, workdir)
                await procs[0].wait_ready()
                await asyncio.sleep(0.5)
                pad = pad_text(payload_bytes)
                tick = 0.01
                ticks = int(seconds / tick)
                inserts: list[asyncio.Task[str]] = []
                start = time.monotonic()
                sent = 0
                for k in range(ticks):
                    due = start + k * tick
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    n = int(rate * (k + 1) * tick) - sent
                    if n > 0:
                        inserts.append(asyncio.create_task(pool.execute(
                            "INSERT INTO events (organisation, type, object_id, payload)"
                            " SELECT $1, $2, g::text, jsonb_build_object('n', g, 'pad', $3::text)"
                            " FROM generate_series($4::int, $5::int) g",
                            ORG, EVENT_TYPE, pad, sent + 1, sent + n,
                        )))  # fmt: skip
                        sent += n
                await asyncio.gather(*inserts)
                produced_s = time.monotonic() - start
                run = Run(name, sent)
                await self.collect(run, lambda r: len(r.delivered) >= sent, 60 + sent / 100, procs)
                await self.wait_db_settled(dsn, sent)
                stopped = await self.stop_daemons(procs)
                rows = await pool.fetch("SELECT id::text, extract(epoch FROM created_at)::float8 AS at FROM events")
            finally:
                await pool.close()
            created = {r["id"]: r["at"] for r in rows}
            first = min(created.values()) if created else 0.0
            warm = first + 0.1 * seconds
            latency = [
                (h.at - created[h.webhook_id]) * 1000
                for h in run.hits
                if h.status == 200 and h.webhook_id in created and created[h.webhook_id] >= warm
            ]
            facts = await self.database_facts(dsn, xacts0)
            return self._workload_row(run, {(paths[0], e) for e in created}, stopped, facts, extra={
                "target_rate": round(rate, 1), "achieved_insert_rate": round(sent / produced_s, 1),
                "events": sent, "payload_bytes": payload_bytes,
            }, latency_ms=latency)  # fmt: skip
        finally:
            await self.drop_database(dsn)

    async def _xacts_of(self, dsn: str) -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return await self._xacts(conn)
        finally:
            await conn.close()

    # ---- profiling ---------------------------------------------------------------------------------------------

    def _start_profiler(self, daemon: Daemon, workdir: Path) -> subprocess.Popen[bytes] | None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not os.access(spy, os.X_OK):
            self.notes.append("--profile: py-spy is not installed (.venv/bin/pip install py-spy)")
            return None
        return subprocess.Popen(
            [spy, "record", "--pid", str(daemon.pid), "--rate", "250", "--format", "raw", "--nolineno",
             "-o", str(workdir / "profile.txt")],
            stdout=subprocess.DEVNULL, stderr=(workdir / "py-spy.err").open("wb"),
        )  # fmt: skip

    def _stop_profiler(self, profiler: subprocess.Popen[bytes], workdir: Path) -> None:
        profiler.send_signal(signal.SIGINT)
        try:
            profiler.wait(timeout=30)
        except subprocess.TimeoutExpired:
            profiler.kill()
            profiler.wait()
        raw = workdir / "profile.txt"
        if raw.exists():
            self.profile = {"raw": raw.read_text()}


def summarise_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares (% of the samples where the daemon was busy) per function, from py-spy's
    collapsed stacks (`--format raw --nolineno`: `frame;frame;... count`, each frame `function (file.py)`)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    return {
        "samples": total,
        "self": [(f, round(100 * n / total, 1)) for f, n in own.most_common(top)] if total else [],
        "inclusive": [(f, round(100 * n / total, 1)) for f, n in inclusive.most_common(top * 2)] if total else [],
    }


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0
