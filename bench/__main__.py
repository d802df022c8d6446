"""The dispatcher benchmark: the daemon against the limits of this machine, measured in the same run.

    .venv/bin/python -m bench            # N = 20,000 deliveries per drain (a few minutes on 2 cores)
    .venv/bin/python -m bench --smoke    # N = 500, for CI: checks that everything runs, asserts no speed
    .venv/bin/python -m bench --full     # N = 100,000
    .venv/bin/python -m bench --loop uvloop   # every row on uvloop

The peer row needs pgqueuer, the --loop uvloop runs uvloop: `.venv/bin/python -m pip install -e '.[bench]'`.

Prints the report tables on stdout (progress on stderr) and writes everything to bench/results/<time>.json.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import SHORT_RETRY, Bench, summarise_profile
from bench.report import add_ratios, headline, render

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

MODES: dict[str, dict[str, Any]] = {
    # processes: the scale-out series; smoke leaves out 1 process, which is drain-f10-1KiB again.
    "smoke": {"n": 500, "sequential": 30, "open_seconds": 2.0, "processes": (2, 4)},
    "default": {"n": 20_000, "sequential": 200, "open_seconds": 10.0, "processes": (1, 2, 4)},
    "full": {"n": 100_000, "sequential": 500, "open_seconds": 20.0, "processes": (1, 2, 4)},
}
KIB = 1024
# The latency-bound workload: webhooks whose receivers answer in DELAY_MS +/- JITTER, drained with concurrency
# LATENCY_CONCURRENCY; Little's law bounds it at LATENCY_CONCURRENCY / DELAY_MS (2,000/s).
LATENCY_WEBHOOKS, DELAY_MS, JITTER, LATENCY_CONCURRENCY = 200, 100.0, 0.2, 200


def environment() -> dict[str, Any]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False).stdout.strip()
        except OSError:
            return ""

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import aiohttp
    import asyncpg

    return {
        # BENCH_COMMIT names the commit of a source tree without .git (an exported snapshot).
        "commit": run("git", "rev-parse", "--short", "HEAD") or os.environ.get("BENCH_COMMIT", ""),
        "dirty": bool(run("git", "status", "--porcelain", "--", "dispatcher", "sql")),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "aiohttp": aiohttp.__version__,
        "asyncpg": asyncpg.__version__,
        "pgqueuer": _version("pgqueuer"),
        "uvloop": _version("uvloop"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


async def run_bench(args: argparse.Namespace, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    mode = MODES["smoke" if args.smoke else "full" if args.full else "default"]
    n: int = args.n or mode["n"]
    wanted = set(args.only.split(",")) if args.only else None

    def want(name: str) -> bool:
        return wanted is None or any(name.startswith(w) for w in wanted)

    root = Path(tempfile.mkdtemp(prefix="dispatcher-bench-"))
    bench = Bench(root, receiver=args.receiver, concurrency=args.concurrency, progress=not args.quiet, loop=args.loop)
    started = time.time()
    limits: list[dict[str, Any]] = []
    workloads: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full" if args.full else "default",
        "n": n,
        "concurrency": args.concurrency,
        "loop": args.loop,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "limits": limits,
        "workloads": workloads,
        "notes": bench.notes,
    }
    if baseline is not None:
        result["baseline"] = {
            "file": str(args.baseline),
            "commit": (baseline.get("env") or {}).get("commit"),
            "workloads": {w["name"]: {k: w.get(k) for k in ("per_s", "ratio_a")} for w in baseline["workloads"]},
        }
    try:
        await bench.start()
        result["env"] = {**environment(), **bench.env}
        # (a) for each payload size, three times (now, after the drains, at the end): other processes on the machine
        # only ever lower a ceiling, so the best of the three is kept (all three are in the JSON).
        http_runs: dict[int, list[dict[str, Any]]] = {}

        async def measure_http() -> None:
            for payload in (1 * KIB, 16 * KIB):
                if want(f"a-http-{payload // KIB}KiB"):
                    http_runs.setdefault(payload, []).append(await bench.limit_http(n, payload))

        await measure_http()
        if want("peer-pgqueuer-f1-1KiB"):
            if importlib.util.find_spec("pgqueuer") is None:
                bench.notes.append(
                    "no peer row: pgqueuer is not installed (.venv/bin/python -m pip install -e '.[bench]')"
                )
            else:
                peer = await bench.peer(n, KIB)
                limits.append(peer)
        # Drains, each right after its limit (b) on the same data: N deliveries each (N/10 events at fan-out 10).
        for payload in (1 * KIB, 16 * KIB):
            for fanout in (1, 10):
                name = f"drain-f{fanout}-{payload // KIB}KiB"
                if want(f"b-db-f{fanout}-{payload // KIB}KiB") or want(name):
                    limits.append(await bench.limit_db(fanout, n // fanout, payload))
                if want(name):
                    workloads.append(await bench.drain(name, fanout=fanout, events=n // fanout, payload_bytes=payload))
                if fanout == 1 and payload == KIB and want("drain-defaults-f1-1KiB"):
                    # The daemon's own [worker] concurrency and per_webhook_concurrency (100 and 10).
                    workloads.append(await bench.drain("drain-defaults-f1-1KiB", fanout=1, events=n, payload_bytes=KIB,
                                                       defaults=True))  # fmt: skip
        await measure_http()
        if args.profile:
            result["profiled_drain"] = await bench.drain(
                "profiled-drain-f1-1KiB", fanout=1, events=n, payload_bytes=KIB, profile=True
            )
            if bench.profile is not None:
                raw = bench.profile.pop("raw")
                RESULTS.mkdir(exist_ok=True)
                stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
                (RESULTS / f"{stamp}-profile.txt").write_text(raw)
                result["profile"] = {**summarise_profile(raw), "file": f"bench/results/{stamp}-profile.txt"}
        if want("drain-jwt-rs256-f1-1KiB"):
            # Every attempt signs a JWT (RSA 2048): the cost of a webhook policy, beside the HMAC-only drain.
            row = await bench.drain("drain-jwt-rs256-f1-1KiB", fanout=1, events=n, payload_bytes=KIB, jwt_alg="rs256")
            hmac_rate = next((w["per_s"] for w in workloads if w["name"] == "drain-f1-1KiB"), None)
            if hmac_rate and row.get("per_s"):
                row["ratio_hmac_drain"] = round(row["per_s"] / hmac_rate, 3)
                bench.notes.append(f"JWT rs256 drain at {row['ratio_hmac_drain']}x the HMAC drain-f1-1KiB rate")
            workloads.append(row)
        name = f"latency-bound-{LATENCY_WEBHOOKS}x{DELAY_MS:g}ms"
        if want(name):
            workloads.append(await bench.latency_bound(
                name, webhooks=LATENCY_WEBHOOKS, events=max(2, n // LATENCY_WEBHOOKS), delay_ms=DELAY_MS,
                jitter=JITTER, concurrency=LATENCY_CONCURRENCY,
            ))  # fmt: skip
        if want("one-at-a-time"):
            workloads.append(await bench.sequential("one-at-a-time", mode["sequential"]))
        drain_rate = next((w["per_s"] for w in workloads if w["name"] == "drain-f1-1KiB"), None)
        for share in (50, 80):
            name = f"open-loop-{share}pct"
            if want(name):
                if not drain_rate:
                    bench.notes.append(f"{name} skipped: it needs the drain-f1-1KiB rate")
                    continue
                row = await bench.open_loop(name, drain_rate * share / 100, mode["open_seconds"])
                workloads.append(row)
        if want("retry-10pct-500"):
            workloads.append(await bench.drain("retry-10pct-500", fanout=1, events=max(100, n // 4), payload_bytes=KIB,
                                               path="flaky", overrides=SHORT_RETRY))  # fmt: skip
        for processes in mode["processes"]:
            name = f"procs-{processes}-f10-1KiB"
            if want(name):
                workloads.append(await bench.drain(name, fanout=10, events=n // 10, payload_bytes=KIB,
                                                   daemons=processes, together=True))  # fmt: skip
        await measure_http()
        for runs in http_runs.values():
            fastest: dict[str, Any] = max(runs, key=_rate)
            best = {**fastest}
            best["runs_per_s"] = [r.get("per_s") for r in runs]
            limits.insert(len([x for x in limits if x["name"].startswith("a-")]), best)
    finally:
        await bench.stop()
        shutil.rmtree(root, ignore_errors=True)
    add_ratios(limits, workloads)
    result["headline"] = headline(result)
    result["duration_s"] = round(time.time() - started, 1)
    return result


def _rate(row: dict[str, Any]) -> float:
    return float(row.get("per_s") or 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="N = 500 (CI)")
    size.add_argument("--full", action="store_true", help="N = 100,000")
    size.add_argument("--n", type=int, help="deliveries per drain (overrides the mode's N)")
    parser.add_argument(
        "--receiver",
        choices=("auto", "nginx", "python"),
        default="auto",
        help="auto: nginx (installed with apt-get when missing and root), else the asyncio responder",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also run a drain under py-spy and report the daemon's hot spots"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="the daemon's [worker] concurrency and per_webhook_concurrency, and the limits' (default 100)",
    )
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of every row: the limits, the peer and the daemon ([worker] event_loop)",
    )
    parser.add_argument("--only", help="comma-separated workload/limit name prefixes (e.g. drain-f1,a-http)")
    parser.add_argument("--output", type=Path, help="JSON file (default bench/results/<time>.json)")
    parser.add_argument(
        "--baseline", type=Path, help="an earlier run's JSON: the targets compare x(a) of the same workloads with it"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")  # fmt: skip
    args = parser.parse_args(argv)
    if args.loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        parser.error("--loop uvloop: uvloop is not installed (.venv/bin/python -m pip install -e '.[bench]')")
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    result = asyncio.run(run_bench(args, baseline))
    print(render(result))
    print(f"\n{result['mode']} run, N = {result['n']}, {result['duration_s']} s; " + "; ".join(result["notes"]))
    output = args.output or RESULTS / (time.strftime("%Y%m%d-%H%M%S") + ".json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"JSON: {output}")
    failed = [w["name"] for w in result["workloads"] if w.get("lost") or w.get("timed_out") or w.get("daemon_died")]
    if failed:
        print(f"FAILED (lost deliveries, time-outs or a dead daemon): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
