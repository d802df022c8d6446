"""The metrics object: attempt counting, database figures as gauges, a registry of its own."""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from dispatcher.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_observe_attempt_counts_attempts_deliveries_and_latency() -> None:
    """Every attempt counts by outcome and in the histogram; only final outcomes count as finished deliveries."""
    metrics = Metrics()
    metrics.observe_attempt("pending", 0.3)
    metrics.observe_attempt("delivered", 0.02)
    metrics.observe_attempt("failed", 12.0)
    metrics.observe_attempt("held", 0.1)  # a failed probe of an invalid webhook
    metrics.observe_attempt("held", 0.1)
    s = _samples(metrics)
    for outcome in ("pending", "delivered", "failed"):
        assert s[("dispatcher_attempts_total", (("outcome", outcome),))] == 1
    assert s[("dispatcher_attempts_total", (("outcome", "held"),))] == 2
    assert ("dispatcher_deliveries_total", (("outcome", "held"),)) not in s
    assert s[("dispatcher_deliveries_total", (("outcome", "delivered"),))] == 1
    assert s[("dispatcher_deliveries_total", (("outcome", "failed"),))] == 1
    assert ("dispatcher_deliveries_total", (("outcome", "pending"),)) not in s
    assert s[("dispatcher_attempt_duration_seconds_count", ())] == 5
    assert s[("dispatcher_attempt_duration_seconds_bucket", (("le", "0.025"),))] == 1
    assert s[("dispatcher_attempt_duration_seconds_bucket", (("le", "0.5"),))] == 4


def test_database_figures_and_zeroed_states() -> None:
    """Queue depth by state, held and dead-letter counts, webhooks by state; a state that empties shows 0."""
    metrics = Metrics()
    metrics.set_queue({"pending": 4, "held": 2, "failed": 1}, oldest_due=7.5)
    metrics.set_webhooks({"valid": 3, "invalid": 1}, paused=1)
    metrics.set_webhooks({"valid": 4}, paused=0)
    s = _samples(metrics)
    assert s[("dispatcher_queue_deliveries", (("state", "pending"),))] == 4
    assert s[("dispatcher_queue_deliveries", (("state", "delivered"),))] == 0
    assert s[("dispatcher_queue_held_deliveries", ())] == 2
    assert s[("dispatcher_queue_dead_letter_deliveries", ())] == 1
    assert s[("dispatcher_queue_oldest_pending_age_seconds", ())] == 7.5
    assert s[("dispatcher_webhooks", (("state", "invalid"),))] == 0
    assert s[("dispatcher_webhooks", (("state", "valid"),))] == 4


def test_each_metrics_object_has_its_own_registry() -> None:
    """Two objects (two daemons in one test process, say) never share counters, and the global registry stays
    untouched."""
    first, second = Metrics(), Metrics()
    first.observe_attempt("delivered", 0.1)
    assert _samples(second)[("dispatcher_attempts_total", (("outcome", "delivered"),))] == 0
    assert REGISTRY.get_sample_value("dispatcher_attempts_total", {"outcome": "delivered"}) is None
