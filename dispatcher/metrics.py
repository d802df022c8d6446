"""The Prometheus metrics of one process, in a registry of its own (never prometheus-client's global one).

Three kinds of figures:

- counted here as work happens: attempts and finished deliveries by outcome, the attempt latency histogram
  (``observe_attempt``, called once per attempt next to the ``delivery.attempt`` log line);
- read from the stages' own counters at scrape time (``track_process``): in-flight requests, discarded results;
- read from the database at scrape time (``set_queue`` and friends, filled by ``dispatcher.ops_http``): queue
  depth by delivery state, oldest due pending age, held and dead-letter counts, webhooks by state, the
  NOTIFY queue's usage. These are cluster-wide: every process reports the same figures.

No label names a webhook or an organisation, so the number of series stays fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from dispatcher import __version__

DELIVERY_STATES = ("pending", "leased", "held", "delivered", "failed", "cancelled")
WEBHOOK_STATES = ("new", "valid", "invalid", "deactivated")
# The delivery's state after an attempt, as the `delivery.attempt` log line's `outcome` field says it.
ATTEMPT_OUTCOMES = ("delivered", "pending", "failed")
FINAL_OUTCOMES = ("delivered", "failed")
CLAIM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Callbacks(Collector):
    """Counters whose value another object keeps (e.g. ``Recorder.discarded``), read at scrape time."""

    def __init__(self) -> None:
        self._counters: list[tuple[str, str, Callable[[], float]]] = []

    def add(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self._counters.append((name, documentation, read))

    def collect(self) -> Iterable[Metric]:
        for name, documentation, read in self._counters:
            yield CounterMetricFamily(name, documentation, value=read())

    def describe(self) -> Iterable[Metric]:
        # Describing by collecting would read callbacks during registration; names are enough.
        for name, documentation, _read in self._counters:
            yield CounterMetricFamily(name, documentation)


class Metrics:
    """Every metric the daemon exposes on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.attempts = Counter(
            "dispatcher_attempts",
            "Delivery attempts made by this process, by outcome: the delivery's state after the attempt "
            "(delivered; pending: to be retried; failed: no attempts left, a dead letter).",
            ["outcome"],
            registry=r,
        )
        self.deliveries = Counter(
            "dispatcher_deliveries",
            "Deliveries finished by an attempt of this process, by outcome (delivered, or failed: dead letter).",
            ["outcome"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "dispatcher_attempt_duration_seconds",
            "Time from sending a delivery's request to having its response (or error), in seconds.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.claim_duration = Histogram(
            "dispatcher_claim_duration_seconds",
            "Time one claim of due deliveries takes, from asking the database to having the rows, in seconds.",
            buckets=CLAIM_BUCKETS,
            registry=r,
        )
        # The labelled children, made once: labels() takes a lock and checks its arguments on every call.
        self._attempts_by_outcome = {outcome: self.attempts.labels(outcome) for outcome in ATTEMPT_OUTCOMES}
        self._deliveries_by_outcome = {outcome: self.deliveries.labels(outcome) for outcome in FINAL_OUTCOMES}

        self.in_flight = Gauge(
            "dispatcher_deliveries_in_flight", "Requests this process has under way now.", registry=r
        )
        self._callbacks = _Callbacks()

        self.queue = Gauge(
            "dispatcher_queue_deliveries",
            "Deliveries in the database by state (cluster-wide).",
            ["state"],
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            "dispatcher_queue_oldest_pending_age_seconds",
            "Seconds since the oldest due pending delivery became due (0 when none is due).",
            registry=r,
        )
        self.held = Gauge(
            "dispatcher_queue_held_deliveries",
            "Deliveries held for webhooks that are invalid or paused.",
            registry=r,
        )
        self.dead_letters = Gauge(
            "dispatcher_queue_dead_letter_deliveries",
            "Deliveries that failed for good (dead letters), until retention prunes them.",
            registry=r,
        )
        self.unrouted = Gauge(
            "dispatcher_queue_unrouted_events", "Events not yet routed to their webhooks.", registry=r
        )
        self.oldest_unrouted_age = Gauge(
            "dispatcher_queue_oldest_unrouted_age_seconds",
            "Seconds since the oldest event not yet routed was made (0 when none waits).",
            registry=r,
        )
        self.webhooks = Gauge(
            "dispatcher_webhooks", "Webhooks by state (deleted ones left out).", ["state"], registry=r
        )
        self._webhook_states = set(WEBHOOK_STATES)
        self.webhooks_paused = Gauge("dispatcher_webhooks_paused", "Webhooks paused by their owner.", registry=r)
        self.notification_queue_usage = Gauge(
            "dispatcher_pg_notification_queue_usage",
            "pg_notification_queue_usage(): the fraction of PostgreSQL's NOTIFY queue in use (0 to 1).",
            registry=r,
        )
        self.database_up = Gauge(
            "dispatcher_database_up",
            "1 when the database answered the queries behind the dispatcher_queue_* and dispatcher_webhooks* "
            "figures at the last scrape, else 0 (those figures are then from the last scrape that worked).",
            registry=r,
        )
        build = Gauge("dispatcher_build_info", "The running version, as a label.", ["version"], registry=r)
        build.labels(__version__).set(1)
        ProcessCollector(registry=r)

    # ---- counted as work happens -------------------------------------------------------------------------

    def observe_attempt(self, outcome: str, duration_s: float) -> None:
        """Count one attempt; ``outcome`` is the delivery's state after it (delivered, pending, failed, or held)."""
        child = self._attempts_by_outcome.get(outcome)
        if child is None:  # an outcome named nowhere above (a probe's "held"): made once, kept
            child = self._attempts_by_outcome[outcome] = self.attempts.labels(outcome)
        child.inc()
        if outcome in FINAL_OUTCOMES:
            self._deliveries_by_outcome[outcome].inc()
        self.attempt_duration.observe(max(duration_s, 0.0))

    # ---- the stages' own counters -------------------------------------------------------------------------

    def track_process(
        self,
        *,
        in_flight: Callable[[], float],
        discarded: Callable[[], float],
        throttled: Callable[[], float] | None = None,
    ) -> None:
        """Read these stage counters at each scrape (call once, when the stages exist)."""
        self.in_flight.set_function(in_flight)
        if throttled is not None:
            Gauge(
                "dispatcher_webhooks_throttled",
                "Webhooks this process sends to whose receiver has lowered their concurrency limit (429 or 503) "
                "below [worker] per_webhook_concurrency; each one's limit is its concurrency_limit in the API.",
                registry=self.registry,
            ).set_function(throttled)
        self._callbacks.add(
            "dispatcher_results_discarded",
            "Attempt results dropped because their lease had been rescued meanwhile (stale fencing token).",
            discarded,
        )
        self.registry.register(self._callbacks)

    # ---- figures from the database ------------------------------------------------------------------------

    def set_queue(self, by_state: Mapping[str, int], oldest_due: float | None) -> None:
        """Deliveries by state and the oldest due pending delivery's age."""
        for state in DELIVERY_STATES:
            self.queue.labels(state).set(by_state.get(state, 0))
        self.held.set(by_state.get("held", 0))
        self.dead_letters.set(by_state.get("failed", 0))
        self.oldest_pending_age.set(max(oldest_due or 0.0, 0.0))

    def set_events(self, unrouted: int, oldest_unrouted: float | None) -> None:
        """Events waiting to be routed."""
        self.unrouted.set(unrouted)
        self.oldest_unrouted_age.set(max(oldest_unrouted or 0.0, 0.0))

    def set_webhooks(self, by_state: Mapping[str, int], paused: int) -> None:
        """Webhooks by state; states with none show 0."""
        self._webhook_states.update(by_state)
        for state in self._webhook_states:
            self.webhooks.labels(state).set(by_state.get(state, 0))
        self.webhooks_paused.set(paused)

    def render(self) -> bytes:
        """The text exposition format of everything above."""
        return generate_latest(self.registry)
