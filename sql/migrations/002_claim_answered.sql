-- 002_claim_answered: a claim no longer counts leases already answered against a webhook's concurrency.
--
-- dispatcher_claim gains p_answered, the caller's leases whose requests are done and whose results are still on
-- their way to the database. The seven-argument claim, which daemons before this migration call, becomes a
-- wrapper answering none, so those daemons keep running through a rolling upgrade.

-- The claim, as a function so that it can take a lock first and only then its snapshot (each statement of a
-- volatile function takes a fresh one): claims run one at a time cluster-wide, each seeing the leases of the
-- one before it, so the per-webhook cap holds across processes. A claim takes a few milliseconds.
--
-- Candidates are found per webhook, not in one global queue: a skip scan over delivery_due lists the
-- webhooks with pending deliveries (one index descent each), and each gives at most its free slots of due
-- rows. A webhook with a large backlog therefore never hides another webhook's deliveries, whether its
-- receiver is slow, dead or fast. The attempt is counted and its retry delay drawn here, so a delivery whose
-- daemon dies still runs out of attempts.
--
-- p_answered lists the caller's leases whose requests have already been answered and whose results are on
-- their way to record_results: they no longer count against their webhook's concurrency, so a webhook's slots
-- are not left idle while results wait for their batched write.
CREATE FUNCTION dispatcher_claim(
    p_batch integer,
    p_per_webhook integer,
    p_lease_seconds float8,
    p_owner text,
    p_schedule float8[],
    p_jitter float8,
    p_test_lease_seconds float8,
    p_answered uuid[]
) RETURNS TABLE (
    id uuid, event_id uuid, webhook_id integer, kind text, attempts integer, lease_token bigint,
    retry_delay real, next_attempt_at timestamptz, organisation text, type text, object_id text, payload text,
    actor text, created_at timestamptz, url text, format text, webhook_name text, secrets text, headers text,
    webhook_version integer, webhook_state text
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(7237128270741677160);  -- 'dispatch' + 1: the claim lock
    RETURN QUERY
    WITH RECURSIVE pending_webhook AS (
        (SELECT d.webhook_id FROM delivery d WHERE d.state = 'pending' ORDER BY d.webhook_id LIMIT 1)
        UNION ALL
        SELECT (SELECT d.webhook_id FROM delivery d
                WHERE d.state = 'pending' AND d.webhook_id > p.webhook_id
                ORDER BY d.webhook_id LIMIT 1)
        FROM pending_webhook p
        WHERE p.webhook_id IS NOT NULL
    ), busy AS (
        SELECT d.webhook_id, count(*)::int AS leased
        FROM delivery d
        WHERE d.state = 'leased' AND d.id <> ALL (p_answered)
        GROUP BY d.webhook_id
    ), candidate AS (
        -- Deliveries of paused, deactivated or deleted webhooks (tests excepted) wait here until maintenance
        -- holds or cancels them: a request in flight when the operator acted came back as pending.
        SELECT c.id, c.next_attempt_at, c.attempts, c.max_attempts
        FROM pending_webhook p
        JOIN webhook w ON w.id = p.webhook_id
        LEFT JOIN busy b ON b.webhook_id = p.webhook_id
        CROSS JOIN LATERAL (
            SELECT d.id, d.next_attempt_at, d.attempts, d.max_attempts
            FROM delivery d
            WHERE d.webhook_id = p.webhook_id AND d.state = 'pending' AND d.next_attempt_at <= now()
              AND d.attempts < d.max_attempts
              AND (d.kind = 'test' OR (NOT w.paused AND w.state <> 'deactivated' AND w.deleted_at IS NULL))
            ORDER BY d.next_attempt_at
            LIMIT greatest(p_per_webhook - coalesce(b.leased, 0), 0)
        ) c
        WHERE p.webhook_id IS NOT NULL
        ORDER BY c.next_attempt_at
        LIMIT p_batch
    ), chosen AS (
        SELECT d.id,
               CASE WHEN d.attempts + 1 < d.max_attempts
                    THEN p_schedule[least(d.attempts + 1, cardinality(p_schedule))]
                         * (1 + p_jitter * (2 * random() - 1))
               END AS delay
        FROM delivery d
        WHERE d.id IN (SELECT candidate.id FROM candidate) AND d.state = 'pending'
        FOR NO KEY UPDATE SKIP LOCKED
    )
    UPDATE delivery d
    SET state = 'leased',
        attempts = d.attempts + 1,
        lease_token = nextval('delivery_lease_token'),
        lease_owner = p_owner,
        leased_until = now() + make_interval(
            secs => CASE WHEN d.kind = 'test' THEN p_test_lease_seconds ELSE p_lease_seconds END),
        retry_delay = chosen.delay,
        next_attempt_at = now() + make_interval(secs => coalesce(chosen.delay, 0))
    FROM chosen, events e, webhook w
    WHERE d.id = chosen.id AND e.id = d.event_id AND w.id = d.webhook_id
    RETURNING d.id, d.event_id, d.webhook_id, d.kind, d.attempts, d.lease_token, d.retry_delay,
              d.next_attempt_at, e.organisation, e.type, e.object_id, e.payload::text, e.actor::text,
              e.created_at, w.url, w.format, w.name, w.secrets::text, w.headers::text, w.version, w.state;
END
$$;

-- The claim as daemons before migration 002 call it, answering none; kept for a rolling upgrade.
CREATE OR REPLACE FUNCTION dispatcher_claim(
    p_batch integer,
    p_per_webhook integer,
    p_lease_seconds float8,
    p_owner text,
    p_schedule float8[],
    p_jitter float8,
    p_test_lease_seconds float8
) RETURNS TABLE (
    id uuid, event_id uuid, webhook_id integer, kind text, attempts integer, lease_token bigint,
    retry_delay real, next_attempt_at timestamptz, organisation text, type text, object_id text, payload text,
    actor text, created_at timestamptz, url text, format text, webhook_name text, secrets text, headers text,
    webhook_version integer, webhook_state text
)
LANGUAGE sql VOLATILE AS $$
    SELECT * FROM dispatcher_claim(p_batch, p_per_webhook, p_lease_seconds, p_owner, p_schedule, p_jitter,
                                   p_test_lease_seconds, '{}'::uuid[]);
$$;
