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
        if a and per_s and a.get("per_s"):
            w["ratio_a"] = round(per_s / a["per_s"], 3)
            w["ratio_a_of"] = a["name"]
            theirs = (a.get("cpu_s_per_1k") or {}).get("client")
            if mine and theirs:
                w["daemon_cpu_over_a"] = round(mine / theirs, 2)
        if b and per_s and b.get("per_s"):
            w["ratio_b"] = round(per_s / b["per_s"], 3)
            w["ratio_b_of"] = b["name"]


def render(result: dict[str, Any]) -> str:
    out: list[str] = []
    limits = result["limits"]
    if limits:
        rows = []
        for r in limits:
            cpu = r.get("cpu_s_per_1k") or {}
            rows.append([
                r["name"], _fmt(r.get("deliveries")), _fmt(r.get("per_s"), 0), _fmt(cpu.get("client"), 3),
                _fmt(cpu.get("postgres"), 3), _fmt(cpu.get("receiver"), 3), _fmt(r.get("round_trips_per_delivery"), 3),
                "-" if r.get("other_load") is None else f"{r['other_load']:.0%}",
            ])  # fmt: skip
        out.append("Limits (same run): (a) bare aiohttp POST loop, no database; (b) the daemon's SQL alone, no HTTP")
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
        not_done = sum(v for k, v in states.items() if k != "delivered")
        notes = []
        if w.get("timed_out"):
            notes.append("TIMED OUT")
        if w.get("daemon_died"):
            notes.append("DAEMON DIED")
        if (w.get("other_load") or 0) >= 0.05:
            notes.append(f"other processes used {w['other_load']:.0%} of the CPUs")
        if w.get("achieved_insert_rate") is not None:
            notes.append(f"inserted {w['achieved_insert_rate']:.0f}/s")
        problems = (w.get("daemon") or {}).get("log_problems") or {}
        if problems:
            notes.append("log: " + ", ".join(f"{k} x{v}" for k, v in problems.items()))
        rows.append([
            w["name"], _fmt(lat.get("p50"), 1), _fmt(lat.get("p95"), 1), _fmt(lat.get("p99"), 1),
            _fmt(lat.get("max"), 1), _fmt(w.get("db_delivered")), _fmt(not_done), _fmt(dead.get("delivery")),
            _fmt(dead.get("events")), _fmt(dead.get("attempt")), "; ".join(notes),
        ])  # fmt: skip
    out.append("Workloads: latency insert -> arrival (ms) and what the database holds afterwards")
    out.append(_table([
        "workload", "p50", "p95", "p99", "max", "db delivered", "db other", "dead delivery", "dead events",
        "dead attempt", "notes",
    ], rows))  # fmt: skip
    profile = result.get("profile")
    if profile and profile.get("self"):
        out.append("")
        out.append(f"Daemon profile (py-spy, {profile['samples']} busy samples, drain fan-out 1, 1 KiB): top self time")
        out += [f"  {share:5.1f} %  {frame}" for frame, share in profile["self"][:15]]
    return "\n".join(out)
