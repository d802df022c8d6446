"""The report: ratios to the limits measured in the same run, and the tables printed on stdout."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    return "\n".join(lines)


def add_ratios(limits: list[dict[str, Any]], workloads: list[dict[str, Any]]) -> None:
    """Per workload: deliveries/s over limit (a) for its payload and over limit (b) for its fan-out and payload,
    and the daemon's CPU per delivery over the bare loop's CPU per request."""
    http = {r["payload_bytes"]: r for r in limits if r["name"].startswith("a-")}
    db = {(r["fanout"], r["payload_bytes"]): r for r in limits if r["name"].startswith("b-")}
    for w in workloads:
        payload = w.get("payload_bytes", 1024)
        fanout = w.get("fanout", 1)
        a = http.get(payload)
        b = db.get((fanout, payload)) or db.get((1, payload)) or db.get((1, 1024))
        per_s = w.get("per_s")
        mine = (w.get("cpu_s_per_1k") or {}).get("daemon")
        if per_s and mine:
            # CPU-seconds the daemon used per second: 1.0 is one core saturated, which is all one event loop can use.
            w["daemon_cores"] = round(per_s * mine / 1000, 2)
        if w.get("bound_per_s"):
            continue  # latency-bound: compared with Little's law's bound, not with the limits
        if a and per_s and a.get("per_s"):
            w["ratio_a"] = round(per_s / a["per_s"], 3)
            w["ratio_a_of"] = a["name"]
            theirs = (a.get("cpu_s_per_1k") or {}).get("client")
            if mine and theirs:
                w["daemon_cpu_over_a"] = round(mine / theirs, 2)
        if b and per_s and b.get("per_s"):
            w["ratio_b"] = round(per_s / b["per_s"], 3)
            w["ratio_b_of"] = b["name"]


def _named(rows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next((r for r in rows if r["name"] == name), {})


def _ratio(a: Any, b: Any) -> float | None:
    return round(a / b, 3) if a and b else None


def headline(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The four rows the issue compares, one webhook, 1 KiB: the bare loop, the peer, the daemon with its own
    defaults and with per_webhook_concurrency = --concurrency; deliveries/s and ratios to the first two."""
    limits, workloads = result["limits"], result["workloads"]
    bare, peer = _named(limits, "a-http-1KiB"), _named(limits, "peer-pgqueuer-f1-1KiB")
    defaults, wide = _named(workloads, "drain-defaults-f1-1KiB"), _named(workloads, "drain-f1-1KiB")
    client = peer.get("client") or {}
    worker = defaults.get("worker") or {}
    rows = [
        (f"bare aiohttp POST loop, {bare.get('concurrency', result['concurrency'])} concurrent", bare),
        (f"peer: pgqueuer {client.get('pgqueuer', '?')} + aiohttp, batch {client.get('batch', '?')}, "
         f"{client.get('tasks', '?')} tasks", peer),
        (f"dispatcher, defaults (concurrency {worker.get('concurrency', '?')}, per_webhook_concurrency "
         f"{worker.get('per_webhook_concurrency', '?')})", defaults),
        (f"dispatcher, per_webhook_concurrency {result['concurrency']}", wide),
    ]  # fmt: skip
    return [
        {
            "row": label,
            "name": r.get("name"),
            "per_s": r.get("per_s"),
            "x_bare_loop": _ratio(r.get("per_s"), bare.get("per_s")),
            "x_peer": _ratio(r.get("per_s"), peer.get("per_s")) if r is not bare else None,
        }
        for label, r in rows
        if r
    ]


def targets(result: dict[str, Any]) -> list[list[str]]:
    """The issue's targets against this run's numbers: [what, measured, target, met]. Reported, never asserted:
    one run on a shared machine is noisy."""
    workloads = result["workloads"]
    head = {h["name"]: h for h in result.get("headline", []) if h["name"]}
    out: list[list[str]] = []

    def met(ok: bool | None) -> str:
        return "-" if ok is None else "yes" if ok else "no"

    for name, what, goal in (
        ("drain-defaults-f1-1KiB", "one webhook, defaults: x peer", 1.0),
        ("drain-f1-1KiB", f"one webhook, per_webhook_concurrency {result['concurrency']}: x peer", 1.25),
    ):
        x = (head.get(name) or {}).get("x_peer")
        if not (head.get(name) or {}).get("per_s"):
            continue
        out.append([what, _fmt(x), f">= {goal:.2f}", met(None if x is None else x >= goal)])
    baseline = result.get("baseline") or {}
    for name in ("drain-f10-1KiB", "drain-f1-16KiB", "drain-f10-16KiB"):
        w = _named(workloads, name)
        if not w:
            continue
        then = (baseline.get("workloads") or {}).get(name) or {}
        change = _ratio(w.get("ratio_a"), then.get("ratio_a"))
        measured = f"x(a) {_fmt(w.get('ratio_a'))}" + (f", {change:.2f}x the baseline's" if change else "")
        out.append([f"{name}: no worse than before", measured, "x(a) >= baseline's" if baseline else "--baseline FILE",
                    met(None if change is None else change >= 1.0)])  # fmt: skip
    for w in workloads:
        if w.get("bound_per_s"):
            cpu = (w.get("cpu_s_per_1k") or {}).get("daemon")
            out.append([
                f"{w['name']}: x Little's bound ({w['bound_per_s']:,.0f}/s)",
                f"{_fmt(w.get('ratio_bound'))} ({_fmt(w.get('per_s'), 0)}/s, daemon {_fmt(cpu, 3)} s/1k)",
                ">= 0.90", met(None if w.get("ratio_bound") is None else w["ratio_bound"] >= 0.9),
            ])  # fmt: skip
    seq = _named(workloads, "one-at-a-time")
    if seq:
        lat = seq.get("latency_ms") or {}
        p50, p99 = lat.get("p50"), lat.get("p99")
        ok = None if p50 is None or p99 is None else p50 <= 5 and p99 <= 25
        out.append(["one-at-a-time p50 / p99 ms", f"{_fmt(p50, 1)} / {_fmt(p99, 1)}", "<= 5 / <= 25", met(ok)])
    big = _named(workloads, "drain-f1-16KiB")
    if big:
        rss = big.get("peak_rss_mib")
        full = big.get("events", 0) >= 100_000
        ok = None if rss is None or not full else rss < 200
        out.append([f"daemon RSS draining {big.get('events', 0):,} x 16 KiB", f"{_fmt(rss, 0)} MiB",
                    "< 200 MiB (100,000 events: --full)", met(ok)])  # fmt: skip
    series = [w for w in workloads if w["name"].startswith("procs-")]
    if series:
        rates = " / ".join(_fmt(w.get("per_s"), 0) for w in series)
        claims = " / ".join(_fmt(((w.get("daemon") or {}).get("claim") or {}).get("mean_ms"), 1) for w in series)
        counts = ", ".join(str(w.get("daemons")) for w in series)
        out.append([f"scale-out, {counts} processes: deliv/s; claim mean ms", f"{rates}; {claims}", "-", "-"])
    return out


def render(result: dict[str, Any]) -> str:
    out: list[str] = []
    limits = result["limits"]
    head = result.get("headline") or []
    if any(h["per_s"] for h in head):
        out.append(f"One webhook, {result['n']:,} events of 1 KiB (same run, {result.get('loop', 'asyncio')} loop)")
        out.append(_table(["", "deliveries/s", "x bare loop", "x peer"], [
            [h["row"], _fmt(h["per_s"], 0), _fmt(h["x_bare_loop"]), _fmt(h["x_peer"])] for h in head
        ]))  # fmt: skip
        out.append("")
    goals = targets(result)
    if goals:
        out.append("Targets (this run's numbers; reported, never asserted)")
        out.append(_table(["target", "measured", "wanted", "met"], goals))
        out.append("")
    if limits:
        rows = []
        for r in limits:
            cpu = r.get("cpu_s_per_1k") or {}
            rows.append([
                r["name"], _fmt(r.get("deliveries")), _fmt(r.get("per_s"), 0), _fmt(cpu.get("client"), 3),
                _fmt(cpu.get("postgres"), 3), _fmt(cpu.get("receiver"), 3), _fmt(r.get("round_trips_per_delivery"), 3),
                "-" if r.get("other_load") is None else f"{r['other_load']:.0%}",
            ])  # fmt: skip
        out.append(
            "Limits (same run): (a) bare aiohttp POST loop, no database; (b) the daemon's SQL alone, no HTTP;"
            " the peer (pgqueuer + aiohttp)"
        )
        out.append(
            _table(["limit", "n", "per s", "client CPU s/1k", "PG s/1k", "recv s/1k", "RT/deliv", "other load"], rows)
        )
        out.append("")
    rows = []
    for w in result["workloads"]:
        cpu = w.get("cpu_s_per_1k") or {}
        sequential = w["name"].startswith("one-at-a-time")
        rows.append([
            w["name"], _fmt(w.get("delivered")), _fmt(w.get("per_s"), 0),
            "-" if sequential else _fmt(w.get("ratio_a")), "-" if sequential else _fmt(w.get("ratio_b")),
            _fmt(cpu.get("daemon"), 3), _fmt(cpu.get("postgres"), 3), _fmt(cpu.get("receiver"), 3),
            _fmt(w.get("daemon_cpu_over_a")), _fmt(w.get("daemon_cores")),
            _fmt(w.get("daemon_wait_per_s")), _fmt(w.get("round_trips_per_delivery"), 3),
            _fmt(w.get("xacts_per_delivery"), 3), _fmt(w.get("attempts_per_delivery"), 3),
            _fmt(w.get("peak_rss_mib"), 0), _fmt(w.get("lost")), _fmt(w.get("duplicated")),
        ])  # fmt: skip
    out.append(
        "Workloads: throughput and cost (CPU s per 1,000 deliveries, from /proc; counts from the receiver's log)"
    )
    out.append(_table([
        "workload", "delivered", "deliv/s", "x(a)", "x(b)", "daemon s/1k", "PG s/1k", "recv s/1k", "dCPU/(a)",
        "d cores", "d wait", "RT/deliv", "xact/deliv", "att/deliv", "RSS MiB", "lost", "dup",
    ], rows))  # fmt: skip
    out.append("")
    rows = []
    for w in result["workloads"]:
        lat = w.get("latency_ms") or {}
        dead = w.get("dead_tuples") or {}
        states = w.get("db_states") or {}
        claim = (w.get("daemon") or {}).get("claim") or {}
        not_done = sum(v for k, v in states.items() if k != "delivered")
        notes = []
        if w.get("timed_out"):
            notes.append("TIMED OUT")
        if w.get("daemon_died"):
            notes.append("DAEMON DIED")
        if (w.get("other_load") or 0) >= 0.05:
            notes.append(f"other processes used {w['other_load']:.0%} of the CPUs")
        if w.get("bound_per_s"):
            notes.append(f"{w.get('ratio_bound') or 0:.2f}x Little's bound {w['bound_per_s']:,.0f}/s")
        if w.get("achieved_insert_rate") is not None:
            notes.append(f"inserted {w['achieved_insert_rate']:.0f}/s")
        problems = (w.get("daemon") or {}).get("log_problems") or {}
        if problems:
            notes.append("log: " + ", ".join(f"{k} x{v}" for k, v in problems.items()))
        rows.append([
            w["name"], _fmt(lat.get("p50"), 1), _fmt(lat.get("p95"), 1), _fmt(lat.get("p99"), 1),
            _fmt(lat.get("max"), 1), _fmt(claim.get("mean_ms"), 2), _fmt(claim.get("p99_ms"), 1),
            _fmt(w.get("db_delivered")), _fmt(not_done), _fmt(dead.get("delivery")),
            _fmt(dead.get("events")), _fmt(dead.get("attempt")), "; ".join(notes),
        ])  # fmt: skip
    out.append(
        "Workloads: latency insert -> arrival (ms), the daemons' claims (mean and p99 ms, from"
        " dispatcher_claim_duration_seconds) and what the database holds afterwards"
    )
    out.append(_table([
        "workload", "p50", "p95", "p99", "max", "claim ms", "claim p99", "db delivered", "db other",
        "dead delivery", "dead events", "dead attempt", "notes",
    ], rows))  # fmt: skip
    profile = result.get("profile")
    if profile and profile.get("self"):
        out.append("")
        out.append(f"Daemon profile (py-spy, {profile['samples']} busy samples, drain fan-out 1, 1 KiB): top self time")
        out += [f"  {share:5.1f} %  {frame}" for frame, share in profile["self"][:15]]
    return "\n".join(out)
