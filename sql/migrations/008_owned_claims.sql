-- 008_owned_claims: claims no longer run one at a time cluster-wide; a webhook's deliveries are leased by one
-- process at a time, which may lease ahead of its free slots; each webhook keeps the concurrency limit its
-- receiver's 429s and 503s have taught (AIMD) and the time its Retry-After asked to wait.
--
-- Until 007 every claim took one advisory lock for the whole cluster, so that each saw the leases of the one
-- before it and a webhook's cap held across processes. The claim now try-locks only the webhooks it is about to
-- lease for (skipping those another claim holds at that moment), and leases a webhook's deliveries only while no
-- other process holds any of them: the owner then knows every request in flight to that webhook and enforces
-- the cap (and the rate limit) in its own memory, so it may lease up to p_ahead times the cap and start each
-- request the moment a slot frees, without a round trip to the database in between.
-- See docs/design.md, "Claims".
ALTER TABLE webhook ADD COLUMN concurrency_limit integer CONSTRAINT webhook_concurrency_limit
    CHECK (concurrency_limit > 0);
ALTER TABLE webhook ADD COLUMN throttled_until timestamptz;

CREATE FUNCTION dispatcher_claim_owned(
    p_batch integer,
    p_per_webhook integer,
    p_ahead integer,
    p_lease_seconds float8,
    p_owner text,
    p_schedule float8[],
    p_jitter float8,
    p_test_lease_seconds float8,
    p_answered uuid[],
    p_stalled integer[]
) RETURNS TABLE (
    id uuid, event_id uuid, webhook_id integer, kind text, attempts integer, lease_token bigint,
    retry_delay real, next_attempt_at timestamptz, organisation text, type text, object_id text, payload text,
    actor text, created_at timestamptz, url text, format text, webhook_name text, secrets text, headers text,
    webhook_version integer, webhook_state text,
    policy_id integer, policy_disabled boolean, jwt_alg text, jwt_audience text, jwt_claim_expires_in integer,
    signing_key text, concurrency_limit integer, rate_limit real
)
LANGUAGE plpgsql VOLATILE
SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
DECLARE
    v_webhook integer;
    v_owner text;
    v_unowned integer;
    v_mine integer[] := '{}';
    v_taken integer := 0;
    v_share integer;
BEGIN
    -- 1. The webhooks with a due delivery that no other process holds leases of: this process's own first,
    -- then the longest waiting. Each is locked for this transaction unless another claim holds it now (that
    -- claim then serves it). Of the webhooks nobody holds, one claim takes its share: all of them when it is the
    -- only worker connected (application_name 'dispatcher worker ...'), else a ceil(1/n)th, so that processes
    -- share them out instead of the first claim taking them all.
    FOR v_webhook, v_owner, v_unowned IN
        WITH RECURSIVE pending_webhook AS (
            (SELECT d.webhook_id FROM delivery d WHERE d.state = 'pending' ORDER BY d.webhook_id LIMIT 1)
            UNION ALL
            SELECT (SELECT d.webhook_id FROM delivery d
                    WHERE d.state = 'pending' AND d.webhook_id > p.webhook_id
                    ORDER BY d.webhook_id LIMIT 1)
            FROM pending_webhook p
            WHERE p.webhook_id IS NOT NULL
        ), due_webhook AS (
            SELECT p.webhook_id, holder.owner, oldest.next_attempt_at
            FROM pending_webhook p
            CROSS JOIN LATERAL (
                SELECT d.next_attempt_at FROM delivery d
                WHERE d.webhook_id = p.webhook_id AND d.state = 'pending'
                ORDER BY d.next_attempt_at LIMIT 1
            ) oldest
            LEFT JOIN LATERAL (
                -- The newest lease first: the index's older entries are mostly leases finished since VACUUM.
                SELECT d.lease_owner AS owner FROM delivery d
                WHERE d.webhook_id = p.webhook_id AND d.state = 'leased'
                ORDER BY d.leased_until DESC LIMIT 1
            ) holder ON true
            WHERE p.webhook_id IS NOT NULL AND oldest.next_attempt_at <= now()
              AND (holder.owner IS NULL OR holder.owner = p_owner)
        )
        SELECT u.webhook_id, u.owner, count(*) FILTER (WHERE u.owner IS NULL) OVER ()
        FROM due_webhook u
        ORDER BY u.owner IS NULL, u.next_attempt_at
    LOOP
        IF v_owner IS NULL AND v_share IS NULL AND v_unowned = 1 THEN
            v_share := 1;  -- one is everyone's share: no need to count the workers
        ELSIF v_owner IS NULL AND v_share IS NULL THEN
            SELECT greatest(1, ceil(v_unowned::float8 / greatest(1, count(DISTINCT a.application_name))))::integer
            INTO v_share
            FROM pg_stat_activity a
            WHERE a.application_name LIKE 'dispatcher worker %';
        END IF;
        CONTINUE WHEN v_owner IS NULL AND v_taken >= v_share;
        IF pg_try_advisory_xact_lock(1685023587, v_webhook) THEN  -- 'disp' in ASCII: a claim's webhook lock
            v_mine := v_mine || v_webhook;
            v_taken := v_taken + (v_owner IS NULL)::integer;
            EXIT WHEN cardinality(v_mine) >= p_batch;
        END IF;
    END LOOP;
    IF cardinality(v_mine) = 0 THEN
        RETURN;
    END IF;

    -- 2. A fresh snapshot, taken under those locks: every claim committed for these webhooks is seen. A webhook
    -- another process holds leases of is left to it; the others give up to p_ahead times their cap (once their
    -- cap for those p_stalled: their requests are not being answered), less the leases this process holds for
    -- them (those answered, results on their way, left out).
    RETURN QUERY
    WITH leases AS (
        SELECT d.webhook_id,
               count(*) FILTER (WHERE d.lease_owner IS DISTINCT FROM p_owner) AS others,
               count(*) FILTER (WHERE d.lease_owner = p_owner AND d.id <> ALL (p_answered)) AS held
        FROM delivery d
        WHERE d.webhook_id = ANY (v_mine) AND d.state = 'leased'
        GROUP BY d.webhook_id
    ), candidate AS (
        -- Deliveries of paused, deactivated or deleted webhooks (tests excepted) wait here until maintenance
        -- holds or cancels them; so do those of a webhook whose receiver asked to wait (Retry-After).
        SELECT c.id, c.next_attempt_at
        FROM unnest(v_mine) AS m(webhook_id)
        JOIN webhook w ON w.id = m.webhook_id
        LEFT JOIN leases l ON l.webhook_id = m.webhook_id
        CROSS JOIN LATERAL (
            SELECT d.id, d.next_attempt_at
            FROM delivery d
            WHERE d.webhook_id = m.webhook_id AND d.state = 'pending' AND d.next_attempt_at <= now()
              AND d.attempts < d.max_attempts
              AND (d.kind = 'test' OR (NOT w.paused AND w.state <> 'deactivated' AND w.deleted_at IS NULL
                                       AND (w.throttled_until IS NULL OR w.throttled_until <= now())))
            ORDER BY d.next_attempt_at
            LIMIT CASE WHEN coalesce(l.others, 0) > 0 THEN 0
                       ELSE greatest(
                           -- A rate-limited webhook leases about a second of its rate, never less than one.
                           least(CASE WHEN w.id = ANY (p_stalled) THEN 1 ELSE p_ahead END
                                     * least(p_per_webhook, coalesce(w.concurrency_limit, p_per_webhook)),
                                 coalesce(ceil(w.rate_limit)::int, 2147483647))
                           - coalesce(l.held, 0), 0)
                  END
        ) c
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
    FROM chosen, events e, webhook w LEFT JOIN webhook_policy p ON p.id = w.policy_id
    WHERE d.id = chosen.id AND e.id = d.event_id AND w.id = d.webhook_id
    RETURNING d.id, d.event_id, d.webhook_id, d.kind, d.attempts, d.lease_token, d.retry_delay,
              d.next_attempt_at, e.organisation, e.type, e.object_id, e.payload::text, e.actor::text,
              e.created_at, w.url, w.format, w.name, w.secrets::text, w.headers::text, w.version, w.state,
              p.id, p.disabled, p.jwt_alg, p.jwt_audience, p.jwt_claim_expires_in, p.signing_key,
              w.concurrency_limit, w.rate_limit;
END
$$;
