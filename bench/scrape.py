"""What the benchmark reads from the daemons' /metrics: the claim latency histogram, added up over processes."""

from __future__ import annotations

import math
import re
from typing import Any

import aiohttp

CLAIM_METRIC = "dispatcher_claim_duration_seconds"
# name{labels} value, in the Prometheus text format (comments and blank lines are not samples)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LE = re.compile(r'le="([^"]+)"')


async def scrape(url: str, timeout: float = 5.0) -> str:
    """The text of one /metrics page."""
    async with (
        aiohttp.ClientSession(trust_env=False) as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response,
    ):
        response.raise_for_status()
        return await response.text()


def histogram(texts: list[str], name: str) -> tuple[float, float, list[tuple[float, float]]] | None:
    """(count, sum, [(upper bound, cumulative count), ...] by bound) of histogram `name` summed over the pages
    `texts` (and over any labels), or None when a page does not have it."""
    count = total = 0.0
    buckets: dict[float, float] = {}
    for text in texts:
        seen = False
        for line in text.splitlines():
            match = _SAMPLE.match(line)
            if match is None or not match.group(1).startswith(name + "_"):
                continue
            suffix, labels, value = match.group(1)[len(name) + 1 :], match.group(2) or "", float(match.group(3))
            if suffix == "count":
                count += value
                seen = True
            elif suffix == "sum":
                total += value
            elif suffix == "bucket" and (le := _LE.search(labels)) is not None:
                bound = math.inf if le.group(1) == "+Inf" else float(le.group(1))
                buckets[bound] = buckets.get(bound, 0.0) + value
        if not seen:
            return None
    return count, total, sorted(buckets.items())


def quantile(q: float, count: float, buckets: list[tuple[float, float]]) -> float | None:
    """The `q` quantile estimated from cumulative buckets as PromQL's histogram_quantile does: linear within the
    bucket it falls in; the highest finite bound when it falls in +Inf."""
    if count <= 0 or not buckets:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def claim_latency(texts: list[str]) -> dict[str, Any] | None:
    """Claims made, their mean, p50 and p99 in ms (bucket estimates), from every daemon's page; None when the
    daemon has no such metric."""
    found = histogram(texts, CLAIM_METRIC)
    if found is None:
        return None
    count, total, buckets = found
    p50, p99 = quantile(0.5, count, buckets), quantile(0.99, count, buckets)
    return {
        "claims": int(count),
        "mean_ms": round(total / count * 1000, 2) if count else 0.0,
        "p50_ms": None if p50 is None else round(p50 * 1000, 2),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
    }
