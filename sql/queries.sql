-- The daemon's SQL, one named block each. Python loads these by name and never builds SQL from input.

-- name: sync_settings
-- Copy [events] max_payload_bytes and notify into the table producers' triggers read.
UPDATE dispatcher_settings SET max_payload_bytes = $1, notify = $2
WHERE max_payload_bytes IS DISTINCT FROM $1 OR notify IS DISTINCT FROM $2;

-- name: add_event_types
-- Add the [events] types of the configuration to the catalogue (existing names are left alone).
INSERT INTO event_type (name, source)
SELECT unnest($1::text[]), 'config'
ON CONFLICT (name) DO NOTHING;

-- name: route_events
-- Route up to $1 new events (or only event $3) in one statement: targeted events to their webhook; others to
-- every webhook whose patterns match, plus the webhook bound to the event's key or else the organisation
-- default. Deliveries to invalid or paused webhooks, or under a disabled policy, are made held (tests never
-- are). Every event taken is marked dispatched,
-- also when routed to nobody. $2 is the number of attempts an original delivery gets.
WITH ev AS (
    SELECT e.id, e.organisation, e.type, e.key_id, e.webhook_id, e.kind
    FROM events e
    WHERE e.dispatched_at IS NULL AND ($3::uuid IS NULL OR e.id = $3::uuid)
    ORDER BY e.id
    LIMIT $1
    FOR NO KEY UPDATE SKIP LOCKED
), routed AS (
    SELECT ev.id AS event_id, ev.webhook_id, true AS targeted
    FROM ev
    WHERE ev.webhook_id IS NOT NULL
    UNION
    SELECT ev.id, w.id, false
    FROM ev
    JOIN webhook w ON w.organisation = ev.organisation AND cardinality(w.events) > 0
    WHERE ev.webhook_id IS NULL
      AND EXISTS (
          SELECT FROM unnest(w.events) AS p(pattern)
          WHERE p.pattern = ev.type
             OR p.pattern = '*'
             OR (p.pattern LIKE '%.*' AND starts_with(ev.type, left(p.pattern, -1))))
    UNION
    SELECT ev.id, coalesce(bound.id, o.default_webhook_id), false
    FROM ev
    JOIN organisation o ON o.id = ev.organisation
    LEFT JOIN token t ON t.id = ev.key_id
    LEFT JOIN webhook bound ON bound.id = t.webhook_id AND bound.deleted_at IS NULL
    WHERE ev.webhook_id IS NULL AND coalesce(bound.id, o.default_webhook_id) IS NOT NULL
), made AS (
    INSERT INTO delivery (event_id, webhook_id, kind, state, max_attempts, held_since)
    SELECT r.event_id, r.webhook_id,
           CASE WHEN ev.kind = 'test' THEN 'test' ELSE 'original' END,
           CASE WHEN NOT r.targeted AND w.hold THEN 'held' ELSE 'pending' END,
           CASE WHEN ev.kind = 'test' THEN 1 ELSE $2::int END,
           CASE WHEN NOT r.targeted AND w.hold THEN clock_timestamp() END
    FROM routed r
    JOIN ev ON ev.id = r.event_id
    JOIN (
        SELECT w.*, (w.paused OR w.state = 'invalid' OR w.verify_code_digest IS NOT NULL
                     OR EXISTS (SELECT FROM webhook_policy p WHERE p.id = w.policy_id AND p.disabled)) AS hold
        FROM webhook w
    ) w ON w.id = r.webhook_id
    WHERE w.deleted_at IS NULL AND (r.targeted OR w.state IN ('new', 'valid', 'invalid'))
    ON CONFLICT DO NOTHING
    RETURNING event_id
)
UPDATE events e
SET dispatched_at = clock_timestamp(),
    delivery_count = (SELECT count(*) FROM made WHERE made.event_id = e.id)
FROM ev
WHERE e.id = ev.id
RETURNING e.id, e.organisation, e.type, e.delivery_count;

-- name: mark_event_unroutable
-- Set aside event $1, whose routing failed with error $2, so that it never blocks the others.
UPDATE events SET dispatched_at = clock_timestamp(), delivery_count = 0, dispatch_error = $2
WHERE id = $1 AND dispatched_at IS NULL;

-- name: claim_deliveries
-- Lease up to $1 due deliveries to owner $5 for $4 seconds ($8 for tests): of each webhook no other process holds
-- leases of, up to $3 times its cap ($2, or the lower limit its receiver taught) less the leases this owner holds
-- for it (those answered, $9, left out; only its cap for webhooks $10, whose requests are not being answered);
-- retry delays drawn from schedule $6 with jitter $7. See dispatcher_claim_owned in the schema. Returns what the
-- sender needs: the delivery, its event, its webhook with its JWT policy (if any) and its limits.
SELECT * FROM dispatcher_claim_owned($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);

-- name: record_results
-- Write a batch of attempt results and what they mean for each webhook. A result applies only while its
-- delivery is still leased with the same fencing token; others (the lease expired and was rescued) are
-- discarded. Per webhook: the failure streak (tests and 429s left out) grows or resets; a 410 makes it
-- invalid at once; a test result for the webhook's current version makes it valid or invalid (and completes
-- the test's task); a success makes an invalid webhook valid again; a streak of $12 failures spanning at
-- least $13 seconds makes a new or valid webhook invalid. Deactivated webhooks keep their state.
-- Each result may also carry the webhook's concurrency limit as its claiming process now sees it ($14: 0 for
-- none, NULL for not said; the latest said is kept) and a time before which nothing is to be claimed for it
-- ($15, a Retry-After; the latest time is kept).
-- Returns one row per delivery updated (webhook columns NULL), then one per webhook whose state changed or
-- that has new failures in this batch.
WITH result AS (
    SELECT *
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], $5::int[], $6::text[], $7::text[],
                $8::timestamptz[], $9::timestamptz[], $10::int[], $11::text[], $14::int[], $15::timestamptz[])
        AS r(delivery_id, lease_token, state, next_attempt_at, status, error_class, error,
             started_at, finished_at, duration_ms, response, limit_after, throttled_until)
), updated AS (
    UPDATE delivery d
    SET state = r.state,
        next_attempt_at = coalesce(r.next_attempt_at, d.next_attempt_at),
        leased_until = NULL,
        lease_owner = NULL,
        last_status = r.status,
        last_error = r.error,
        held_since = CASE WHEN r.state = 'held' THEN coalesce(d.held_since, r.finished_at) END,
        finished_at = CASE WHEN r.state IN ('delivered', 'failed') THEN r.finished_at END
    FROM result r
    WHERE d.id = r.delivery_id AND d.lease_token = r.lease_token AND d.state = 'leased'
    RETURNING d.id, d.webhook_id, d.event_id, d.kind, d.attempts
), logged AS (
    INSERT INTO attempt (delivery_id, number, started_at, finished_at, status, error_class, error,
                         duration_ms, response)
    SELECT r.delivery_id, u.attempts, r.started_at, r.finished_at, r.status, r.error_class, r.error,
           r.duration_ms, r.response
    FROM result r
    JOIN updated u ON u.id = r.delivery_id
), outcome AS (
    SELECT u.id, u.webhook_id, u.event_id, u.kind, r.state, r.status, r.error, r.finished_at, r.limit_after,
           r.throttled_until,
           u.kind <> 'test' AND r.state <> 'delivered' AND r.status IS DISTINCT FROM 429 AS counts
    FROM updated u
    JOIN result r ON r.delivery_id = u.id
), tested AS (
    UPDATE task t
    SET state = CASE WHEN o.state = 'delivered' THEN 'succeeded' ELSE 'failed' END,
        result = jsonb_build_object('status', o.status, 'error', o.error),
        completed_at = o.finished_at
    FROM outcome o
    WHERE o.kind = 'test' AND t.event_id = o.event_id AND t.state = 'pending'
), current AS (
    -- The webhooks' rows locked and read as they are now (not as this statement's snapshot saw them), so that
    -- an operator's change or another process's results committed meanwhile are built on, not overwritten.
    SELECT w.id, w.state, w.failure_count, w.failing_since, w.version
    FROM webhook w
    WHERE w.id IN (SELECT o.webhook_id FROM outcome o)
    ORDER BY w.id
    FOR NO KEY UPDATE
), batch AS (
    SELECT o.webhook_id,
           bool_or(o.kind <> 'test' AND o.status = 410) AS gone,
           max(o.finished_at) FILTER (WHERE o.kind <> 'test' AND o.state = 'delivered') AS last_success_at,
           (array_agg(o.state ORDER BY o.finished_at DESC)
                FILTER (WHERE o.kind = 'test' AND t.webhook_version = w.version))[1] AS test_state,
           -- A test of an older version of the webhook tells nothing about it now.
           (array_agg(o.error ORDER BY o.finished_at DESC)
                FILTER (WHERE o.state <> 'delivered' AND (o.kind <> 'test' OR t.webhook_version = w.version)))[1]
               AS last_error,
           max(o.finished_at)
               FILTER (WHERE o.state <> 'delivered' AND (o.kind <> 'test' OR t.webhook_version = w.version))
               AS last_error_at,
           (array_agg(o.limit_after ORDER BY o.finished_at DESC) FILTER (WHERE o.limit_after IS NOT NULL))[1]
               AS limit_after,
           max(o.throttled_until) AS throttled_until
    FROM outcome o
    JOIN current w ON w.id = o.webhook_id
    LEFT JOIN task t ON t.event_id = o.event_id AND o.kind = 'test'
    GROUP BY o.webhook_id
), streak AS (
    -- Failures after the batch's last success continue (or, after a success, start) the streak.
    SELECT b.webhook_id,
           count(*) FILTER (WHERE o.counts AND o.finished_at > coalesce(b.last_success_at, '-infinity')) AS failures,
           min(o.finished_at) FILTER (WHERE o.counts AND o.finished_at > coalesce(b.last_success_at, '-infinity'))
               AS first_failure_at,
           max(o.finished_at) FILTER (WHERE o.counts) AS last_failure_at
    FROM batch b
    JOIN outcome o ON o.webhook_id = b.webhook_id
    GROUP BY b.webhook_id
), next AS (
    SELECT b.*, s.failures, s.last_failure_at, prev.state AS old_state,
           CASE WHEN b.last_success_at IS NULL THEN prev.failure_count + s.failures ELSE s.failures END
               AS failure_count,
           CASE WHEN b.last_success_at IS NULL THEN coalesce(prev.failing_since, s.first_failure_at)
                ELSE s.first_failure_at END AS failing_since
    FROM batch b
    JOIN streak s ON s.webhook_id = b.webhook_id
    JOIN current prev ON prev.id = b.webhook_id
), decided AS (
    SELECT n.*,
           CASE
               WHEN n.old_state = 'deactivated' THEN n.old_state
               WHEN n.gone THEN 'invalid'
               WHEN n.test_state IS NOT NULL THEN CASE WHEN n.test_state = 'delivered' THEN 'valid' ELSE 'invalid' END
               WHEN n.old_state = 'invalid' AND n.last_success_at IS NOT NULL THEN 'valid'
               WHEN n.old_state IN ('new', 'valid') AND n.failure_count >= $12::int
                    AND n.last_failure_at - n.failing_since >= make_interval(secs => $13::float8) THEN 'invalid'
               ELSE n.old_state
           END AS new_state
    FROM next n
), webhook_update AS (
    UPDATE webhook w
    SET state = d.new_state,
        failure_count = CASE WHEN d.new_state = 'valid' AND d.old_state <> 'valid' THEN 0 ELSE d.failure_count END,
        failing_since = CASE WHEN d.new_state = 'valid' AND d.old_state <> 'valid' THEN NULL ELSE d.failing_since END,
        last_error = CASE WHEN d.new_state = 'valid' AND d.old_state <> 'valid' THEN NULL
                          ELSE coalesce(d.last_error, w.last_error) END,
        last_error_at = CASE WHEN d.new_state = 'valid' AND d.old_state <> 'valid' THEN NULL
                             ELSE coalesce(d.last_error_at, w.last_error_at) END,
        state_changed_at = CASE WHEN d.new_state <> d.old_state THEN clock_timestamp() ELSE w.state_changed_at END,
        updated_at = CASE WHEN d.new_state <> d.old_state THEN clock_timestamp() ELSE w.updated_at END,
        concurrency_limit = CASE WHEN d.limit_after IS NULL THEN w.concurrency_limit
                                 ELSE nullif(d.limit_after, 0) END,
        throttled_until = greatest(w.throttled_until, d.throttled_until)
    FROM decided d
    WHERE w.id = d.webhook_id
      -- Unchanged rows are left alone: a healthy webhook's row is not rewritten by every batch.
      AND (d.new_state <> d.old_state OR d.last_error IS NOT NULL
           OR d.failure_count IS DISTINCT FROM w.failure_count OR d.failing_since IS DISTINCT FROM w.failing_since
           OR (d.limit_after IS NOT NULL AND nullif(d.limit_after, 0) IS DISTINCT FROM w.concurrency_limit)
           OR d.throttled_until > coalesce(w.throttled_until, '-infinity'))
)
SELECT u.id AS delivery_id, NULL::int AS webhook_id, NULL::text AS old_state, NULL::text AS new_state,
       NULL::text AS last_error, NULL::int AS failure_count, NULL::int AS new_failures
FROM updated u
UNION ALL
SELECT NULL, d.webhook_id, d.old_state, d.new_state, coalesce(d.last_error, ''), d.failure_count, d.failures::int
FROM decided d
WHERE d.new_state <> d.old_state OR d.failures > 0;

-- name: rescue_leases
-- Return deliveries whose lease expired (their daemon died or stalled) to pending at the retry time drawn
-- at claim, or fail them when that was their last attempt.
UPDATE delivery
SET state = CASE WHEN retry_delay IS NULL THEN 'failed' ELSE 'pending' END,
    last_error = 'lease expired before a result was recorded',
    finished_at = CASE WHEN retry_delay IS NULL THEN clock_timestamp() END,
    leased_until = NULL,
    lease_owner = NULL
WHERE state = 'leased' AND leased_until < now()
RETURNING id, webhook_id, state;

-- name: release_owner_leases
-- Give back every delivery still leased to owner $1 (the last step of a graceful shutdown): due now, and the
-- attempt counted at claim given back too, since no result was recorded for it.
UPDATE delivery
SET state = 'pending', next_attempt_at = clock_timestamp(), leased_until = NULL, lease_owner = NULL,
    attempts = attempts - 1, retry_delay = NULL
WHERE state = 'leased' AND lease_owner = $1
RETURNING id;

-- name: return_leases
-- Give back deliveries $1 (under fencing tokens $2) that were leased but never sent (their webhook's receiver
-- asked to wait): pending again, due at $3, the attempt counted at claim given back.
UPDATE delivery d
SET state = 'pending', next_attempt_at = $3, leased_until = NULL, lease_owner = NULL,
    attempts = d.attempts - 1, retry_delay = NULL
FROM unnest($1::uuid[], $2::bigint[]) AS r(id, lease_token)
WHERE d.id = r.id AND d.lease_token = r.lease_token AND d.state = 'leased'
RETURNING d.id;

-- name: hold_deliveries
-- Hold the pending deliveries (tests excepted) of webhooks $1: they turned invalid or were paused.
UPDATE delivery
SET state = 'held', held_since = clock_timestamp()
WHERE webhook_id = ANY($1::int[]) AND state = 'pending' AND kind <> 'test'
RETURNING id;

-- name: hold_paused_strays
-- Hold pending deliveries of paused webhooks (or under a disabled policy, or awaiting ownership verification)
-- that came back from requests in flight when the pause came.
UPDATE delivery d
SET state = 'held', held_since = clock_timestamp()
FROM webhook w
WHERE w.id = d.webhook_id AND d.state = 'pending' AND d.kind <> 'test'
  AND (w.paused OR w.verify_code_digest IS NOT NULL
       OR EXISTS (SELECT FROM webhook_policy p WHERE p.id = w.policy_id AND p.disabled))
RETURNING d.id;

-- name: cancel_strays
-- Cancel pending deliveries (tests excepted) of webhooks deleted or deactivated while they were in flight.
UPDATE delivery d
SET state = 'cancelled', finished_at = clock_timestamp(), held_since = NULL,
    last_error = 'cancelled: the webhook was deleted or deactivated'
FROM webhook w
WHERE w.id = d.webhook_id AND (w.deleted_at IS NOT NULL OR w.state = 'deactivated')
  AND d.state IN ('pending', 'held') AND d.kind <> 'test'
RETURNING d.id;

-- name: release_held
-- Release held deliveries of webhooks that may receive again (new or valid, not paused, policy enabled, not
-- awaiting ownership verification), at a
-- ramped rate per call: 10 a webhook at first, doubling every 5 s since the webhook's state last changed,
-- up to 1,000. Released rows are due at once and get at least one more attempt.
WITH ready AS (
    SELECT w.id,
           least(1000, 10 * power(2, least(7, floor(extract(epoch FROM now() - w.state_changed_at) / 5))))::int
               AS n
    FROM webhook w
    WHERE w.state IN ('new', 'valid') AND NOT w.paused AND w.deleted_at IS NULL AND w.verify_code_digest IS NULL
      AND EXISTS (SELECT FROM delivery d WHERE d.webhook_id = w.id AND d.state = 'held')
      AND NOT EXISTS (SELECT FROM webhook_policy p WHERE p.id = w.policy_id AND p.disabled)
), picked AS (
    SELECT h.id
    FROM ready
    CROSS JOIN LATERAL (
        SELECT d.id FROM delivery d
        WHERE d.webhook_id = ready.id AND d.state = 'held'
        ORDER BY d.held_since, d.id
        LIMIT ready.n
        FOR NO KEY UPDATE SKIP LOCKED
    ) h
)
UPDATE delivery d
SET state = 'pending', next_attempt_at = clock_timestamp(), held_since = NULL,
    max_attempts = greatest(d.max_attempts, d.attempts + 1)
FROM picked
WHERE d.id = picked.id
RETURNING d.webhook_id;

-- name: probe_invalid_webhooks
-- Every $1 seconds per invalid webhook (not paused, policy enabled), make its oldest held delivery due now for
-- one attempt: its success makes the webhook valid again (record_results), its failure holds it again.
WITH due AS (
    SELECT w.id
    FROM webhook w
    WHERE w.state = 'invalid' AND NOT w.paused AND w.deleted_at IS NULL
      AND (w.probed_at IS NULL OR w.probed_at <= now() - make_interval(secs => $1::float8))
      AND NOT EXISTS (SELECT FROM webhook_policy p WHERE p.id = w.policy_id AND p.disabled)
    FOR NO KEY UPDATE SKIP LOCKED
), picked AS (
    SELECT h.id, due.id AS webhook_id
    FROM due
    CROSS JOIN LATERAL (
        SELECT d.id FROM delivery d
        WHERE d.webhook_id = due.id AND d.state = 'held'
        ORDER BY d.held_since, d.id
        LIMIT 1
        FOR NO KEY UPDATE SKIP LOCKED
    ) h
), stamped AS (
    UPDATE webhook w SET probed_at = now() FROM picked WHERE w.id = picked.webhook_id
)
UPDATE delivery d
SET state = 'pending', next_attempt_at = clock_timestamp(), max_attempts = greatest(d.max_attempts, d.attempts + 1)
FROM picked
WHERE d.id = picked.id
RETURNING d.id, d.webhook_id;

-- name: fail_overdue_held
-- Fail deliveries held longer than $1 seconds ([health] max_hold): dead letters, kept for replay.
UPDATE delivery
SET state = 'failed', finished_at = clock_timestamp(), held_since = NULL,
    last_error = 'held longer than [health] max_hold'
WHERE state = 'held' AND held_since < now() - make_interval(secs => $1::float8)
RETURNING id, webhook_id;

-- name: expire_tasks
-- Fail tasks still pending after 60 s: no dispatcher took their test.
UPDATE task
SET state = 'failed', completed_at = clock_timestamp(),
    result = jsonb_build_object('status', NULL, 'error', 'no dispatcher is running')
WHERE state = 'pending' AND created_at < now() - interval '60 seconds'
RETURNING id, webhook_id;

-- name: request_test
-- Queue a test of webhook $1 of organisation $2: a targeted event of kind test whose type and payload follow
-- the webhook's format, and a task recording the webhook version tested. Returns the new task, or nothing
-- when a test is already pending (the caller then reads that one with pending_test).
WITH w AS (
    SELECT w.*,
           CASE WHEN cardinality(w.events) = 1 AND w.events[1] NOT LIKE '%*%' THEN w.events[1] END AS single_event
    FROM webhook w
    WHERE w.id = $1 AND w.organisation = $2 AND w.deleted_at IS NULL
), ids AS (
    SELECT dispatcher_uuidv7() AS event_id
), made AS (
    INSERT INTO task (organisation, type, webhook_id, event_id, webhook_version)
    SELECT w.organisation, 'webhook_config.test', w.id, ids.event_id, w.version
    FROM w, ids
    ON CONFLICT (webhook_id) WHERE state = 'pending' DO NOTHING
    RETURNING *
), event AS (
    INSERT INTO events (id, organisation, type, object_id, payload, webhook_id, kind)
    SELECT made.event_id, w.organisation,
           CASE w.format WHEN 'ricloud' THEN 'webhook_config.test'
                         WHEN '4me' THEN coalesce(w.single_event, 'webhook.test')
                         ELSE 'webhook.test' END,
           CASE WHEN w.format = '4me' THEN '12345' END,
           CASE WHEN w.format = 'ricloud' THEN jsonb_build_object(
                    'id', w.id, 'resource', 'webhook_config', 'organisation', w.organisation, 'url',
                    regexp_replace(w.url, '://[^/]*@', '://***@'), 'state', w.state,
                    'date_created', to_char(w.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
                ELSE '{}'::jsonb END,
           w.id, 'test'
    FROM made, w
)
SELECT id, organisation, type, webhook_id, event_id, webhook_version, state, result::text AS result, created_at, completed_at FROM made;

-- name: supersede_tests
-- Fail the pending test of webhook $1: the webhook changed (a new URL or a re-enable), so that test no longer
-- tests it; its result, if it still comes, does not apply (versions differ).
UPDATE task
SET state = 'failed', completed_at = clock_timestamp(),
    result = jsonb_build_object('status', NULL, 'error', 'superseded: the webhook changed before the test ran')
WHERE webhook_id = $1 AND state = 'pending'
RETURNING id;

-- name: pending_test
-- The pending test task of webhook $1 of organisation $2, if any.
SELECT id, organisation, type, webhook_id, event_id, webhook_version, state, result::text AS result, created_at, completed_at
FROM task WHERE webhook_id = $1 AND organisation = $2 AND state = 'pending';

-- name: get_task
-- Task $1 of organisation $2.
SELECT id, organisation, type, webhook_id, event_id, webhook_version, state, result::text AS result, created_at, completed_at
FROM task WHERE id = $1 AND organisation = $2;

-- name: get_webhook
-- Webhook $1 of organisation $2 (NULL: any), not deleted, without secrets.
SELECT id, organisation, name, description, url, events, format, state, paused, last_error, last_error_at,
       failure_count, failing_since, version, created_at, updated_at
FROM webhook
WHERE id = $1 AND ($2::text IS NULL OR organisation = $2) AND deleted_at IS NULL;

-- name: set_webhook_url
-- Change webhook $1's URL to $3: a new version, state new (a deactivated webhook stays deactivated), the
-- failure streak reset. Returns the webhook's previous and new state.
UPDATE webhook w
SET url = $3, version = w.version + 1, failure_count = 0, failing_since = NULL,
    state = CASE WHEN w.state = 'deactivated' THEN w.state ELSE 'new' END,
    state_changed_at = CASE WHEN w.state IN ('deactivated', 'new') THEN w.state_changed_at ELSE clock_timestamp() END,
    updated_at = clock_timestamp()
FROM webhook prev
WHERE w.id = $1 AND w.organisation = $2 AND w.deleted_at IS NULL AND prev.id = w.id
RETURNING prev.state AS old_state, w.state AS new_state;

-- name: renew_webhook
-- Set webhook $1 to state new (an operator's re-enable or request for a new test): a new version, the
-- streak reset. Returns the previous and new state.
UPDATE webhook w
SET state = 'new', version = w.version + 1, failure_count = 0, failing_since = NULL,
    state_changed_at = clock_timestamp(), updated_at = clock_timestamp()
FROM webhook prev
WHERE w.id = $1 AND w.organisation = $2 AND w.deleted_at IS NULL AND prev.id = w.id
RETURNING prev.state AS old_state, w.state AS new_state;

-- name: deactivate_webhook
-- Deactivate webhook $1: it receives nothing more; its pending and held deliveries are cancelled (requests in
-- flight finish). Returns the previous and new state.
WITH cancelled AS (
    UPDATE delivery
    SET state = 'cancelled', finished_at = clock_timestamp(), held_since = NULL,
        last_error = 'cancelled: the webhook was deactivated'
    WHERE webhook_id = $1 AND state IN ('pending', 'held')
      AND EXISTS (SELECT FROM webhook WHERE id = $1 AND organisation = $2)
)
UPDATE webhook w
SET state = 'deactivated', version = w.version + 1, state_changed_at = clock_timestamp(),
    updated_at = clock_timestamp()
FROM webhook prev
WHERE w.id = $1 AND w.organisation = $2 AND w.deleted_at IS NULL AND prev.id = w.id
RETURNING prev.state AS old_state, w.state AS new_state;

-- name: set_paused
-- Pause ($3 true) or resume webhook $1. Pausing holds its pending deliveries (tests excepted); resuming lets
-- maintenance release them. Returns the webhook's state.
WITH held AS (
    UPDATE delivery
    SET state = 'held', held_since = clock_timestamp()
    WHERE $3::boolean AND webhook_id = $1 AND state = 'pending' AND kind <> 'test'
      AND EXISTS (SELECT FROM webhook WHERE id = $1 AND organisation = $2)
)
UPDATE webhook
SET paused = $3, updated_at = clock_timestamp(),
    -- A resume restarts the release ramp (release_held), as a return to valid does.
    state_changed_at = CASE WHEN paused AND NOT $3 THEN clock_timestamp() ELSE state_changed_at END
WHERE id = $1 AND organisation = $2 AND deleted_at IS NULL
RETURNING state, paused;

-- name: delete_webhook
-- Delete webhook $1: pending and held deliveries cancelled, attempts kept for the log, key bindings and the
-- organisation default cleared. The row stays (deleted_at) so that its deliveries keep their webhook.
WITH cancelled AS (
    UPDATE delivery
    SET state = 'cancelled', finished_at = clock_timestamp(), held_since = NULL,
        last_error = 'cancelled: the webhook was deleted'
    WHERE webhook_id = $1 AND state IN ('pending', 'held')
      AND EXISTS (SELECT FROM webhook WHERE id = $1 AND organisation = $2)
), unbound AS (
    UPDATE token SET webhook_id = NULL WHERE webhook_id = $1 AND organisation = $2
), undefaulted AS (
    UPDATE organisation SET default_webhook_id = NULL WHERE id = $2 AND default_webhook_id = $1
)
UPDATE webhook
SET deleted_at = clock_timestamp(), updated_at = clock_timestamp()
WHERE id = $1 AND organisation = $2 AND deleted_at IS NULL
RETURNING id;

-- name: queue_failing_mail
-- Queue a "failing" mail for each webhook of $1 at time $2, unless one was queued for it in the 20 minutes
-- before. Recipients: mail_exceptions_to, else the organisation's contact_emails; none, no mail.
WITH target AS (
    SELECT * FROM webhook_mail_target WHERE id = ANY($1::int[])
), stamped AS (
    INSERT INTO mail_throttle AS m (webhook_id, failing_mail_at)
    SELECT t.id, $2::timestamptz FROM target t WHERE cardinality(t.recipients) > 0
    ON CONFLICT (webhook_id) DO UPDATE SET failing_mail_at = EXCLUDED.failing_mail_at
        WHERE m.failing_mail_at <= EXCLUDED.failing_mail_at - interval '20 minutes'
    RETURNING m.webhook_id
)
INSERT INTO mail_outbox (organisation, webhook_id, reason, recipients, subject, body, created_at, next_attempt_at)
SELECT t.organisation, t.id, 'failing', t.recipients,
       format('Webhook %s of %s is failing', t.id, t.organisation),
       format(E'Deliveries to webhook %s (%s) of organisation %s are failing.\n\n'
              'Last error: %s\nConsecutive failures: %s\nFailing since: %s\n\n'
              'They are retried with backoff. If the failures go on, the webhook is made invalid and its '
              'deliveries are held (not lost) until it answers again.\n',
              t.id, t.url, t.organisation, coalesce(t.last_error, 'unknown'), t.failure_count,
              coalesce(to_char(t.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"'), 'unknown')),
       $2::timestamptz, $2::timestamptz
FROM target t
JOIN stamped s ON s.webhook_id = t.id
RETURNING id, webhook_id;

-- name: queue_invalid_mail
-- Queue an "invalid" mail for each webhook of $1 (they just turned invalid); never throttled.
WITH target AS (
    SELECT * FROM webhook_mail_target WHERE id = ANY($1::int[])
)
INSERT INTO mail_outbox (organisation, webhook_id, reason, recipients, subject, body)
SELECT t.organisation, t.id, 'invalid', t.recipients,
       format('Webhook %s of %s is now invalid', t.id, t.organisation),
       format(E'Webhook %s (%s) of organisation %s was made invalid.\n\nLast error: %s\n\n'
              'New deliveries to it are held, not lost. It is probed regularly; when it answers again it '
              'becomes valid and the held deliveries are sent.\n',
              t.id, t.url, t.organisation, coalesce(t.last_error, 'unknown'))
FROM target t
WHERE cardinality(t.recipients) > 0
RETURNING id, webhook_id;

-- name: claim_mail
-- Take up to $1 unsent mails that are due, pushing their next attempt $2 seconds out (a crash mid-send
-- retries later rather than never).
UPDATE mail_outbox m
SET attempts = m.attempts + 1, next_attempt_at = clock_timestamp() + make_interval(secs => $2::float8)
WHERE m.id IN (
    SELECT id FROM mail_outbox
    WHERE sent_at IS NULL AND next_attempt_at <= now() AND attempts < 10
    ORDER BY next_attempt_at
    LIMIT $1
    FOR NO KEY UPDATE SKIP LOCKED
)
RETURNING m.id, m.recipients, m.subject, m.body, m.attempts;

-- name: mail_sent
-- Mark mail $1 sent.
UPDATE mail_outbox SET sent_at = clock_timestamp(), last_error = NULL WHERE id = $1;

-- name: mail_failed
-- Record why mail $1 could not be sent (it is tried again at its next_attempt_at).
UPDATE mail_outbox SET last_error = $2 WHERE id = $1;

-- name: prune_finished_deliveries
-- Delete up to $3 deliveries (their attempts go with them) that finished long enough ago: delivered or
-- cancelled ones $1 seconds ago ([retention] delivered), failed ones (dead letters) $2 seconds ago ([retention]
-- failed). Unfinished deliveries are never touched. Scans by id, which is time-ordered.
DELETE FROM delivery
WHERE id IN (
    SELECT d.id FROM delivery d
    WHERE d.id < dispatcher_uuid_floor(now() - make_interval(secs => least($1::float8, $2::float8)))
      AND ((d.state IN ('delivered', 'cancelled') AND d.finished_at < now() - make_interval(secs => $1::float8))
        OR (d.state = 'failed' AND d.finished_at < now() - make_interval(secs => $2::float8)))
    ORDER BY d.id
    LIMIT $3
)
RETURNING id;

-- name: prune_events
-- Delete up to $2 routed events older than $1 seconds that have no delivery left (all were pruned, or there
-- were none); their tasks keep their result without the event.
DELETE FROM events
WHERE id IN (
    SELECT e.id FROM events e
    WHERE e.id < dispatcher_uuid_floor(now() - make_interval(secs => $1::float8))
      AND e.dispatched_at IS NOT NULL
      AND NOT EXISTS (SELECT FROM delivery d WHERE d.event_id = e.id)
    ORDER BY e.id
    LIMIT $2
)
RETURNING id;

-- name: prune_sent_mail
-- Delete up to $2 mails sent more than $1 seconds ago.
DELETE FROM mail_outbox
WHERE id IN (SELECT id FROM mail_outbox WHERE sent_at < now() - make_interval(secs => $1::float8) LIMIT $2)
RETURNING id;

-- name: prune_abandoned_mail
-- Delete up to $2 mails that gave up (10 attempts, never sent) with their last try more than $1 seconds ago.
DELETE FROM mail_outbox
WHERE id IN (
    SELECT id FROM mail_outbox
    WHERE sent_at IS NULL AND attempts >= 10 AND next_attempt_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
)
RETURNING id;

-- name: prune_finished_tasks
-- Delete up to $2 test tasks completed more than $1 seconds ago (pending ones are never touched).
DELETE FROM task
WHERE id IN (
    SELECT id FROM task
    WHERE state <> 'pending' AND completed_at < now() - make_interval(secs => $1::float8)
    LIMIT $2
)
RETURNING id;

-- name: prune_deleted_webhooks
-- Delete up to $2 webhooks deleted more than $1 seconds ago, with what still refers to them: their deliveries
-- (attempts go with them), replays, tasks, mails and mail throttle. Events targeted at one keep their row without
-- the target (prune_events deletes them in turn). A webhook with a delivery still under way, or a targeted event
-- not yet routed, waits for them.
WITH gone AS (
    SELECT w.id FROM webhook w
    WHERE w.deleted_at < now() - make_interval(secs => $1::float8)
      AND NOT EXISTS (SELECT FROM delivery d WHERE d.webhook_id = w.id AND d.state IN ('pending', 'leased', 'held'))
      AND NOT EXISTS (SELECT FROM events e WHERE e.webhook_id = w.id AND e.dispatched_at IS NULL)
    ORDER BY w.deleted_at, w.id
    LIMIT $2
), deliveries AS (
    DELETE FROM delivery WHERE webhook_id IN (SELECT id FROM gone)
), replays AS (
    DELETE FROM replay WHERE webhook_id IN (SELECT id FROM gone)
), tasks AS (
    DELETE FROM task WHERE webhook_id IN (SELECT id FROM gone)
), mails AS (
    DELETE FROM mail_outbox WHERE webhook_id IN (SELECT id FROM gone)
), throttles AS (
    DELETE FROM mail_throttle WHERE webhook_id IN (SELECT id FROM gone)
), untargeted AS (
    UPDATE events SET webhook_id = NULL WHERE webhook_id IN (SELECT id FROM gone)
)
DELETE FROM webhook WHERE id IN (SELECT id FROM gone)
RETURNING id;

-- name: queue_status
-- Delivery counts by state, for `dispatcher status` and the metrics. A failed test is not a dead letter: failed
-- counts the deliveries of events only.
SELECT s.state, count(d.id)::bigint AS count
FROM unnest(ARRAY['pending', 'leased', 'held', 'delivered', 'failed', 'cancelled']) AS s(state)
LEFT JOIN delivery d ON d.state = s.state AND NOT (d.state = 'failed' AND d.kind = 'test')
GROUP BY s.state
ORDER BY array_position(ARRAY['pending', 'leased', 'held', 'delivered', 'failed', 'cancelled'], s.state);

-- name: failing_webhooks
-- Up to $1 webhooks that are failing, of organisation $2 (NULL: of every organisation), for `dispatcher status` and
-- the console: invalid ones, those in a failure streak, and those with failed attempts in the last hour; with their
-- last error, those failures, and since when their oldest pending or held delivery has waited. Invalid ones first,
-- then the most failures.
WITH recent AS (
    SELECT d.webhook_id, count(*) AS failures
    FROM attempt a
    JOIN delivery d ON d.id = a.delivery_id
    JOIN webhook w ON w.id = d.webhook_id
    WHERE ($2::text IS NULL OR w.organisation = $2) AND a.finished_at > now() - interval '1 hour'
      AND (a.status IS NULL OR a.status NOT BETWEEN 200 AND 299)
    GROUP BY d.webhook_id
)
SELECT w.id, w.organisation, w.state, w.paused, w.last_error, w.failure_count,
       coalesce(r.failures, 0)::bigint AS failures_last_hour,
       (SELECT min(d.created_at) FROM delivery d
        WHERE d.webhook_id = w.id AND d.state IN ('pending', 'held')) AS oldest_waiting_since
FROM webhook w
LEFT JOIN recent r ON r.webhook_id = w.id
WHERE ($2::text IS NULL OR w.organisation = $2) AND w.deleted_at IS NULL
  AND (w.state = 'invalid' OR w.failure_count > 0 OR r.failures > 0)
ORDER BY (w.state = 'invalid') DESC, coalesce(r.failures, 0) DESC, w.id
LIMIT $1;

-- name: oldest_pending
-- Seconds since the oldest due pending delivery became due, and since the oldest unrouted event was made.
SELECT (SELECT extract(epoch FROM now() - min(next_attempt_at))::float8
        FROM delivery WHERE state = 'pending' AND next_attempt_at <= now()) AS oldest_due_seconds,
       (SELECT extract(epoch FROM now() - min(created_at))::float8
        FROM events WHERE dispatched_at IS NULL) AS oldest_unrouted_seconds,
       (SELECT count(*) FROM events WHERE dispatched_at IS NULL)::bigint AS unrouted_events;

-- name: webhook_states
-- Webhooks of organisation $1 (NULL: of every organisation) by state (deleted ones left out), paused ones counted
-- apart.
SELECT state, count(*)::bigint AS count, count(*) FILTER (WHERE paused)::bigint AS paused
FROM webhook
WHERE ($1::text IS NULL OR organisation = $1) AND deleted_at IS NULL
GROUP BY state
ORDER BY state;

-- name: notification_queue_usage
-- The fraction of PostgreSQL's NOTIFY queue in use (a stuck listener somewhere fills it).
SELECT pg_notification_queue_usage()::float8;

-- name: recent_rates
-- Attempts finished in the last minute by outcome, for `dispatcher status`.
SELECT count(*) FILTER (WHERE status BETWEEN 200 AND 299)::bigint AS delivered,
       count(*) FILTER (WHERE status IS NULL OR status NOT BETWEEN 200 AND 299)::bigint AS failed
FROM attempt
WHERE finished_at > now() - interval '1 minute';

-- name: ensure_organisation
-- Create organisation $1 if it does not exist; returns its id when it was made now (else nothing).
INSERT INTO organisation (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING RETURNING id;

-- name: create_organisation
-- Create organisation $1 named $2; returns it, or nothing when it exists already.
INSERT INTO organisation (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING
RETURNING id, name, default_webhook_id, contact_emails, created_at;

-- name: list_organisations
-- Every organisation, by id.
SELECT id, name, default_webhook_id, contact_emails, created_at FROM organisation ORDER BY id;

-- name: event_type_names
-- Every event type of the catalogue.
SELECT name FROM event_type;

-- name: create_token
-- Store a new token's digest; returns its id.
INSERT INTO token (organisation, role, digest, name) VALUES ($1, $2, $3, $4) RETURNING id;

-- name: list_webhooks
-- Webhooks of organisation $1 (every organisation when NULL), oldest first, without secrets.
SELECT id, organisation, name, description, url, events, format, state, paused, last_error, last_error_at,
       failure_count, failing_since, version, created_at, updated_at
FROM webhook
WHERE deleted_at IS NULL AND ($1::text IS NULL OR organisation = $1)
ORDER BY id;


-- name: try_advisory_lock
-- Take transaction-scoped advisory lock $1 if free (a maintenance job runs in one process at a time).
SELECT pg_try_advisory_xact_lock($1);

-- name: undispatched_events
-- Ids of up to $1 events not yet routed, oldest first (for routing them one by one after a batch failed).
SELECT id FROM events WHERE dispatched_at IS NULL ORDER BY id LIMIT $1;

-- ---- management API ------------------------------------------------------------------------------------

-- name: authenticate
-- The live token whose digest is $1 (revoked ones never match); its last use is noted at most once a minute.
WITH t AS (
    SELECT id, organisation, role, webhook_id, last_used_at FROM token WHERE digest = $1 AND revoked_at IS NULL
), touched AS (
    UPDATE token SET last_used_at = clock_timestamp()
    WHERE id IN (SELECT id FROM t WHERE last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
)
SELECT id, organisation, role, webhook_id FROM t;

-- name: rate_limit_hit
-- Count one use of action $2 by token $1 in the current window of $4 seconds; returns whether it is within $3
-- uses and the seconds until the window ends. Kept in PostgreSQL so the limit holds across processes.
INSERT INTO rate_limit AS r (token_id, action, window_start, uses)
VALUES ($1, $2, to_timestamp(floor(extract(epoch FROM now()) / $4::int) * $4::int), 1)
ON CONFLICT (token_id, action) DO UPDATE
SET uses = CASE WHEN r.window_start = EXCLUDED.window_start THEN r.uses + 1 ELSE 1 END,
    window_start = EXCLUDED.window_start
RETURNING r.uses <= $3 AS allowed,
          ceil(extract(epoch FROM r.window_start + make_interval(secs => $4::int) - now()))::int AS retry_after;

-- name: list_webhook_configs
-- Webhooks of organisation $1 for the ricloud list: states $2 (NULL: all but deactivated), created after/at or
-- before/at $3..$6, ids below $7 (paging, newest first), at most $8 rows.
SELECT id, organisation, name, description, url, events, format, state, paused, last_error, last_error_at,
       failure_count, failing_since, version, created_at, updated_at
FROM webhook
WHERE organisation = $1 AND deleted_at IS NULL
  AND (CASE WHEN $2::text[] IS NULL THEN state <> 'deactivated' ELSE state = ANY($2::text[]) END)
  AND ($3::timestamptz IS NULL OR created_at > $3) AND ($4::timestamptz IS NULL OR created_at >= $4)
  AND ($5::timestamptz IS NULL OR created_at < $5) AND ($6::timestamptz IS NULL OR created_at <= $6)
  AND ($7::int IS NULL OR id < $7)
ORDER BY id DESC
LIMIT $8;

-- name: get_token
-- Token $1 of organisation $2 (revoked ones too), without its digest.
SELECT id, organisation, role, name, webhook_id, created_at, last_used_at, revoked_at
FROM token WHERE id = $1 AND organisation = $2;

-- name: bind_token
-- Bind token $1 of organisation $2 to webhook $3 (NULL: unbind); the webhook must be the organisation's.
UPDATE token t SET webhook_id = $3
WHERE t.id = $1 AND t.organisation = $2
  AND ($3::int IS NULL OR EXISTS (SELECT FROM webhook w WHERE w.id = $3 AND w.organisation = $2 AND w.deleted_at IS NULL))
RETURNING id, organisation, role, name, webhook_id, created_at, last_used_at, revoked_at;

-- name: list_tokens
-- Tokens of organisation $1, newest first, ids below $2, at most $3.
SELECT id, organisation, role, name, webhook_id, created_at, last_used_at, revoked_at
FROM token WHERE organisation = $1 AND ($2::int IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3;

-- name: create_token_bound
-- A new token of organisation $1 with role $2, digest $3, name $4, bound to webhook $5 (NULL: none), which must
-- be a live webhook of the organisation: nothing is made otherwise.
INSERT INTO token (organisation, role, digest, name, webhook_id)
SELECT $1, $2, $3, $4, $5
WHERE $5::int IS NULL
   OR EXISTS (SELECT FROM webhook w WHERE w.id = $5 AND w.organisation = $1 AND w.deleted_at IS NULL)
RETURNING id, organisation, role, name, webhook_id, created_at, last_used_at, revoked_at;

-- name: revoke_token
-- Revoke token $1 of organisation $2.
UPDATE token SET revoked_at = coalesce(revoked_at, clock_timestamp())
WHERE id = $1 AND organisation = $2
RETURNING id, organisation, role, name, webhook_id, created_at, last_used_at, revoked_at;

-- name: get_organisation
-- Organisation $1.
SELECT id, name, default_webhook_id, contact_emails, created_at FROM organisation WHERE id = $1;

-- name: set_default_webhook
-- Make webhook $2 (NULL: none) organisation $1's default; the webhook must be the organisation's.
UPDATE organisation o SET default_webhook_id = $2
WHERE o.id = $1
  AND ($2::int IS NULL OR EXISTS (SELECT FROM webhook w WHERE w.id = $2 AND w.organisation = $1 AND w.deleted_at IS NULL))
RETURNING id, name, default_webhook_id, contact_emails, created_at;

-- name: list_event_resources
-- Events of organisation $1 as ricloud event resources: type $2 and action $3 filters (ricloud's halves of
-- the dotted type), ids below $4, newest first, at most $5.
SELECT e.id, e.type, e.payload::text AS payload, e.created_at, e.dispatched_at, e.delivery_count, s.*
FROM events e
CROSS JOIN LATERAL (
    SELECT count(d.id) AS deliveries,
           count(d.id) FILTER (WHERE d.state = 'delivered') AS delivered,
           count(d.id) FILTER (WHERE d.state = 'failed') AS failed,
           greatest(coalesce(sum(d.attempts), 0) - count(d.id), 0)::int AS retries,
           max(d.finished_at) FILTER (WHERE d.state = 'delivered') AS delivered_at
    FROM delivery d WHERE d.event_id = e.id AND d.kind IN ('original', 'redeliver', 'replay')
) s
WHERE e.organisation = $1 AND e.kind = 'event'
  AND ($2::text IS NULL OR split_part(e.type, '.', 1) = $2)
  AND ($3::text IS NULL OR substr(e.type, length(split_part(e.type, '.', 1)) + 2) = $3)
  AND ($4::uuid IS NULL OR e.id < $4)
ORDER BY e.id DESC
LIMIT $5;

-- name: get_event_resource
-- Event $2 of organisation $1 as a ricloud event resource (as list_event_resources), test events included.
SELECT e.id, e.type, e.payload::text AS payload, e.created_at, e.dispatched_at, e.delivery_count, s.*
FROM events e
CROSS JOIN LATERAL (
    SELECT count(d.id) AS deliveries,
           count(d.id) FILTER (WHERE d.state = 'delivered') AS delivered,
           count(d.id) FILTER (WHERE d.state = 'failed') AS failed,
           greatest(coalesce(sum(d.attempts), 0) - count(d.id), 0)::int AS retries,
           max(d.finished_at) FILTER (WHERE d.state = 'delivered') AS delivered_at
    FROM delivery d WHERE d.event_id = e.id
) s
WHERE e.organisation = $1 AND e.id = $2;

-- name: emit_event_full
-- Insert an event through dispatcher_emit (idempotency key honoured); returns its id.
SELECT dispatcher_emit($1, $2, $3::jsonb, object_id => $4, actor => $5::jsonb, key_id => $6, idempotency_key => $7);

-- ---- 4me: webhooks with every field, webhook policies -----------------------------------------------------

-- name: create_webhook_full
-- Make a webhook of organisation $1 with url $2, patterns $3, format $4, name $5, secret $6, description $7,
-- static headers $8 (a JSON object), rate_limit $9, mail_exceptions_to $10, source $11, source_id $12, policy
-- $13 (of the same organisation, or NULL), state $14 (new, or deactivated when made disabled) and verify $15.
INSERT INTO webhook (organisation, url, events, format, name, secrets, description, headers, rate_limit,
                     mail_exceptions_to, source, source_id, policy_id, state, verify)
VALUES ($1, $2, $3, $4, $5, jsonb_build_array(jsonb_build_object('secret', $6::text, 'expires_at', NULL)), $7,
        $8::jsonb, $9, $10, $11, $12, $13, $14, $15)
RETURNING id, organisation, name, description, url, events, format, state, paused, policy_id, headers::text AS headers,
       rate_limit, mail_exceptions_to, source, source_id, last_error, last_error_at, failure_count, failing_since,
       version, created_at, updated_at, verify, verify_code_digest IS NOT NULL AS verification_pending,
       concurrency_limit, throttled_until;

-- name: get_webhook_detail
-- Webhook $1 of organisation $2 with every field but its secrets, not deleted.
SELECT id, organisation, name, description, url, events, format, state, paused, policy_id, headers::text AS headers,
       rate_limit, mail_exceptions_to, source, source_id, last_error, last_error_at, failure_count, failing_since,
       version, created_at, updated_at, verify, verify_code_digest IS NOT NULL AS verification_pending,
       concurrency_limit, throttled_until
FROM webhook
WHERE id = $1 AND organisation = $2 AND deleted_at IS NULL;

-- name: count_webhook_details
-- How many live webhooks organisation $1 has: all ($2 NULL), disabled ($2 true: invalid or deactivated) or
-- enabled ($2 false).
SELECT count(*) FROM webhook
WHERE organisation = $1 AND deleted_at IS NULL
  AND ($2::boolean IS NULL OR (state IN ('invalid', 'deactivated')) = $2);

-- name: list_webhook_details
-- A page of organisation $1's live webhooks (filter $2 as count_webhook_details), newest first: $3 rows after
-- the first $4.
SELECT id, organisation, name, description, url, events, format, state, paused, policy_id, headers::text AS headers,
       rate_limit, mail_exceptions_to, source, source_id, last_error, last_error_at, failure_count, failing_since,
       version, created_at, updated_at, verify, verify_code_digest IS NOT NULL AS verification_pending,
       concurrency_limit, throttled_until
FROM webhook
WHERE organisation = $1 AND deleted_at IS NULL
  AND ($2::boolean IS NULL OR (state IN ('invalid', 'deactivated')) = $2)
ORDER BY id DESC
LIMIT $3 OFFSET $4;

-- name: update_webhook_fields
-- Change the fields of webhook $1 of organisation $2 that $13 names (name $3, description $4, events $5, format
-- $6, headers $7, rate_limit $8, mail_exceptions_to $9, source $10, source_id $11, policy_id $12, verify $14); the
-- others are left as they are. URL and state have operations of their own.
UPDATE webhook
SET name = CASE WHEN 'name' = ANY($13::text[]) THEN $3 ELSE name END,
    description = CASE WHEN 'description' = ANY($13::text[]) THEN $4 ELSE description END,
    events = CASE WHEN 'events' = ANY($13::text[]) THEN $5 ELSE events END,
    format = CASE WHEN 'format' = ANY($13::text[]) THEN $6 ELSE format END,
    headers = CASE WHEN 'headers' = ANY($13::text[]) THEN $7::jsonb ELSE headers END,
    rate_limit = CASE WHEN 'rate_limit' = ANY($13::text[]) THEN $8 ELSE rate_limit END,
    mail_exceptions_to = CASE WHEN 'mail_exceptions_to' = ANY($13::text[]) THEN $9 ELSE mail_exceptions_to END,
    source = CASE WHEN 'source' = ANY($13::text[]) THEN $10 ELSE source END,
    source_id = CASE WHEN 'source_id' = ANY($13::text[]) THEN $11 ELSE source_id END,
    policy_id = CASE WHEN 'policy_id' = ANY($13::text[]) THEN $12 ELSE policy_id END,
    verify = CASE WHEN 'verify' = ANY($13::text[]) THEN $14 ELSE verify END,
    -- Turning verification off ends a pending one (the caller then tests the webhook).
    verify_code_digest = CASE WHEN 'verify' = ANY($13::text[]) AND NOT $14 THEN NULL ELSE verify_code_digest END,
    verify_expires_at = CASE WHEN 'verify' = ANY($13::text[]) AND NOT $14 THEN NULL ELSE verify_expires_at END,
    updated_at = clock_timestamp()
WHERE id = $1 AND organisation = $2 AND deleted_at IS NULL
RETURNING id, organisation, name, description, url, events, format, state, paused, policy_id, headers::text AS headers,
       rate_limit, mail_exceptions_to, source, source_id, last_error, last_error_at, failure_count, failing_since,
       version, created_at, updated_at, verify, verify_code_digest IS NOT NULL AS verification_pending,
       concurrency_limit, throttled_until;

-- name: create_policy
-- Make a webhook policy of organisation $1: name $2, disabled $3, jwt_alg $4, jwt_audience $5,
-- jwt_claim_expires_in $6 (minutes), signing key $7 (a private key PEM, or the hs256 shared key).
INSERT INTO webhook_policy (organisation, name, disabled, jwt_alg, jwt_audience, jwt_claim_expires_in, signing_key)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id, organisation, name, disabled, jwt_alg, jwt_audience, jwt_claim_expires_in, created_at, updated_at;

-- name: get_policy
-- Webhook policy $1 of organisation $2, without its key.
SELECT id, organisation, name, disabled, jwt_alg, jwt_audience, jwt_claim_expires_in, created_at, updated_at
FROM webhook_policy WHERE id = $1 AND organisation = $2;

-- name: count_policies
-- How many webhook policies organisation $1 has: all ($2 NULL), disabled ($2 true) or enabled ($2 false).
SELECT count(*) FROM webhook_policy WHERE organisation = $1 AND ($2::boolean IS NULL OR disabled = $2);

-- name: list_policies
-- A page of organisation $1's webhook policies (filter $2 as count_policies), newest first: $3 rows after the
-- first $4.
SELECT id, organisation, name, disabled, jwt_alg, jwt_audience, jwt_claim_expires_in, created_at, updated_at
FROM webhook_policy
WHERE organisation = $1 AND ($2::boolean IS NULL OR disabled = $2)
ORDER BY id DESC
LIMIT $3 OFFSET $4;

-- name: update_policy
-- Change the fields of policy $1 of organisation $2 that $7 names (name $3, disabled $4, jwt_audience $5,
-- jwt_claim_expires_in $6). A disabled policy holds the pending deliveries of its webhooks (tests excepted);
-- maintenance releases them once it is enabled again (release_held).
WITH changed AS (
    UPDATE webhook_policy
    SET name = CASE WHEN 'name' = ANY($7::text[]) THEN $3 ELSE name END,
        disabled = CASE WHEN 'disabled' = ANY($7::text[]) THEN $4 ELSE disabled END,
        jwt_audience = CASE WHEN 'jwt_audience' = ANY($7::text[]) THEN $5 ELSE jwt_audience END,
        jwt_claim_expires_in = CASE WHEN 'jwt_claim_expires_in' = ANY($7::text[]) THEN $6
                                    ELSE jwt_claim_expires_in END,
        updated_at = clock_timestamp()
    WHERE id = $1 AND organisation = $2
    RETURNING *
), held AS (
    UPDATE delivery d
    SET state = 'held', held_since = clock_timestamp()
    FROM webhook w, changed p
    WHERE p.disabled AND w.policy_id = p.id AND d.webhook_id = w.id AND d.state = 'pending' AND d.kind <> 'test'
)
SELECT id, organisation, name, disabled, jwt_alg, jwt_audience, jwt_claim_expires_in, created_at, updated_at
FROM changed;

-- ---- recovery: the delivery log, redeliver, replay, rotation, event types, organisation settings -------------

-- name: list_webhook_deliveries
-- Deliveries of webhook $2 of organisation $1, newest first: states $3, kinds $4 (NULL: any), event type $5
-- (patterns), created in [$6, $7), older than delivery $8 (the cursor), at most $9.
SELECT l.* FROM delivery_log l
WHERE l.organisation = $1 AND l.webhook_id = $2
  AND ($3::text[] IS NULL OR l.state = ANY($3::text[])) AND ($4::text[] IS NULL OR l.kind = ANY($4::text[]))
  AND ($5::text[] IS NULL OR dispatcher_matches($5::text[], l.event_type))
  AND ($6::timestamptz IS NULL OR l.created_at >= $6) AND ($7::timestamptz IS NULL OR l.created_at < $7)
  AND ($8::uuid IS NULL OR (l.created_at, l.id) < (SELECT c.created_at, c.id FROM delivery c WHERE c.id = $8))
ORDER BY l.created_at DESC, l.id DESC
LIMIT $9;

-- name: list_event_deliveries
-- Deliveries of event $2 of organisation $1, newest first, filtered and paged as list_webhook_deliveries.
SELECT l.* FROM delivery_log l
WHERE l.organisation = $1 AND l.event_id = $2
  AND ($3::text[] IS NULL OR l.state = ANY($3::text[])) AND ($4::text[] IS NULL OR l.kind = ANY($4::text[]))
  AND ($5::text[] IS NULL OR dispatcher_matches($5::text[], l.event_type))
  AND ($6::timestamptz IS NULL OR l.created_at >= $6) AND ($7::timestamptz IS NULL OR l.created_at < $7)
  AND ($8::uuid IS NULL OR (l.created_at, l.id) < (SELECT c.created_at, c.id FROM delivery c WHERE c.id = $8))
ORDER BY l.created_at DESC, l.id DESC
LIMIT $9;

-- name: get_delivery
-- Delivery $2 of organisation $1 with what its requests were sent with: the webhook's format, URL, static
-- headers (JSON text), state, pause and whether it was deleted.
SELECT l.*, w.format, w.url, w.headers::text AS headers, w.state AS webhook_state, w.paused,
       w.deleted_at IS NOT NULL AS webhook_deleted
FROM delivery_log l
JOIN webhook w ON w.id = l.webhook_id
WHERE l.organisation = $1 AND l.id = $2;

-- name: delivery_attempts
-- The attempts of delivery $1, first first.
SELECT number, started_at, finished_at, status, error_class, error, duration_ms, response
FROM attempt WHERE delivery_id = $1 ORDER BY number;

-- name: redeliver
-- A new delivery (kind redeliver) of delivery $2's event to its webhook, organisation $1: one attempt, due now,
-- held when the webhook is paused. Returns it.
WITH made AS (
    INSERT INTO delivery (event_id, webhook_id, kind, state, max_attempts, held_since)
    SELECT d.event_id, d.webhook_id, 'redeliver', CASE WHEN w.paused THEN 'held' ELSE 'pending' END, 1,
           CASE WHEN w.paused THEN clock_timestamp() END
    FROM delivery d
    JOIN events e ON e.id = d.event_id
    JOIN webhook w ON w.id = d.webhook_id
    WHERE d.id = $2 AND e.organisation = $1 AND w.deleted_at IS NULL AND w.state <> 'deactivated'
    RETURNING *
)
SELECT m.id, e.organisation, m.event_id, m.webhook_id, e.type AS event_type, m.kind, m.state, m.attempts,
       m.max_attempts, m.next_attempt_at, m.last_status, m.last_error, m.replay_id, m.created_at, m.finished_at
FROM made m JOIN events e ON e.id = m.event_id;

-- name: count_replay_events
-- How many events (counting at most $6) a replay of webhook $1 over [$2, $3) with only_failed $4 and types $5
-- would send again now.
SELECT count(*)::int FROM (
    SELECT FROM dispatcher_replay_events($1, $2, $3, $4, $5::text[], NULL, NULL, 2147483647)
    WHERE wanted LIMIT $6
) c;

-- name: create_replay
-- Start a replay of webhook $2 of organisation $1 over [$3, $4), only_failed $5, types $6, at most $7 events;
-- nothing when one is running for the webhook (the caller reads it with running_replay).
INSERT INTO replay (organisation, webhook_id, since, until, only_failed, types, max_events)
SELECT $1, $2, $3, $4, $5, $6::text[], $7
WHERE EXISTS (SELECT FROM webhook w WHERE w.id = $2 AND w.organisation = $1 AND w.deleted_at IS NULL)
ON CONFLICT (webhook_id) WHERE state = 'running' DO NOTHING
RETURNING id;

-- name: running_replay
-- The running replay of webhook $2 of organisation $1, if any, with its progress.
SELECT * FROM replay_progress WHERE organisation = $1 AND webhook_id = $2 AND state = 'running';

-- name: get_replay
-- Replay $2 of organisation $1 with its progress.
SELECT * FROM replay_progress WHERE organisation = $1 AND id = $2;

-- name: list_replays
-- Replays of webhook $2 of organisation $1, newest first, older than replay $3, at most $4.
SELECT * FROM replay_progress
WHERE organisation = $1 AND webhook_id = $2 AND ($3::uuid IS NULL OR id < $3)
ORDER BY id DESC
LIMIT $4;

-- name: replay_step
-- One batch of the oldest running replay still walking its window: the next $1 events after its cursor, a
-- delivery (kind replay, $2 attempts; held when the webhook is paused or invalid) for each one wanted, the cursor
-- and counters moved on, the walk marked done after a short batch. A replay whose webhook was deleted or
-- deactivated is cancelled. Returns the replay and what this batch did.
WITH r AS (
    SELECT * FROM replay
    WHERE state = 'running' AND scanned_at IS NULL
    ORDER BY created_at
    LIMIT 1
    FOR NO KEY UPDATE SKIP LOCKED
), w AS (
    SELECT w.id,
           w.paused OR w.state = 'invalid'
               OR EXISTS (SELECT FROM webhook_policy p WHERE p.id = w.policy_id AND p.disabled) AS hold,
           w.deleted_at IS NOT NULL OR w.state = 'deactivated' AS gone
    FROM webhook w JOIN r ON r.webhook_id = w.id
), batch AS (
    SELECT b.* FROM r
    CROSS JOIN LATERAL dispatcher_replay_events(r.webhook_id, r.since, r.until, r.only_failed, r.types,
                                                r.cursor_at, r.cursor_id, $1) b
), made AS (
    INSERT INTO delivery (event_id, webhook_id, kind, state, max_attempts, held_since, replay_id)
    SELECT b.id, r.webhook_id, 'replay', CASE WHEN w.hold THEN 'held' ELSE 'pending' END, $2::int,
           CASE WHEN w.hold THEN clock_timestamp() END, r.id
    FROM batch b, r, w
    WHERE b.wanted AND NOT w.gone AND r.deliveries_created < r.max_events
    RETURNING id
), last AS (
    SELECT b.created_at, b.id FROM batch b ORDER BY b.created_at DESC, b.id DESC LIMIT 1
), counted AS (
    SELECT (SELECT count(*) FROM batch)::int AS considered, (SELECT count(*) FROM made)::int AS created
)
UPDATE replay p
SET cursor_at = coalesce((SELECT created_at FROM last), p.cursor_at),
    cursor_id = coalesce((SELECT id FROM last), p.cursor_id),
    events_considered = p.events_considered + c.considered,
    deliveries_created = p.deliveries_created + c.created,
    scanned_at = CASE WHEN c.considered < $1 OR w.gone OR p.deliveries_created + c.created >= p.max_events
                      THEN clock_timestamp() END,
    state = CASE WHEN w.gone THEN 'cancelled' ELSE p.state END,
    error = CASE WHEN w.gone THEN 'the webhook was deleted or deactivated' END,
    completed_at = CASE WHEN w.gone THEN clock_timestamp() END,
    updated_at = clock_timestamp()
FROM r, w, counted c
WHERE p.id = r.id
RETURNING p.id, p.webhook_id, p.state, c.considered, c.created, p.scanned_at IS NOT NULL AS scanned;

-- name: finish_replays
-- Complete running replays whose walk is done and whose deliveries have all finished.
UPDATE replay r
SET state = 'completed', completed_at = clock_timestamp(), updated_at = clock_timestamp()
WHERE r.state = 'running' AND r.scanned_at IS NOT NULL
  AND NOT EXISTS (SELECT FROM delivery d WHERE d.replay_id = r.id AND d.state IN ('pending', 'leased', 'held'))
RETURNING r.id, r.webhook_id;

-- name: rotate_secret
-- Give webhook $1 of organisation $2 the new current secret $3; the secrets still live sign on for $4 more
-- seconds (those already expiring sooner keep their expiry). Returns the webhook's id and the old secrets' end.
UPDATE webhook w
SET secrets = jsonb_build_array(jsonb_build_object('secret', $3::text, 'expires_at', NULL)) || coalesce((
        SELECT jsonb_agg(jsonb_set(s, '{expires_at}', to_jsonb(
                   CASE WHEN s->>'expires_at' IS NULL
                        THEN clock_timestamp() + make_interval(secs => $4::float8)
                        ELSE least((s->>'expires_at')::timestamptz, clock_timestamp() + make_interval(secs => $4::float8))
                   END)) ORDER BY n)
        FROM jsonb_array_elements(w.secrets) WITH ORDINALITY AS x(s, n)
        WHERE s->>'expires_at' IS NULL OR (s->>'expires_at')::timestamptz > clock_timestamp()), '[]'),
    updated_at = clock_timestamp()
WHERE w.id = $1 AND w.organisation = $2 AND w.deleted_at IS NULL
RETURNING w.id, clock_timestamp() + make_interval(secs => $4::float8) AS previous_expires_at;

-- name: prune_expired_secrets
-- Drop rotated-out secrets whose overlap has ended; returns the webhooks changed.
UPDATE webhook w
SET secrets = (SELECT coalesce(jsonb_agg(s ORDER BY n), '[]')
               FROM jsonb_array_elements(w.secrets) WITH ORDINALITY AS x(s, n)
               WHERE s->>'expires_at' IS NULL OR (s->>'expires_at')::timestamptz > clock_timestamp())
WHERE EXISTS (SELECT FROM jsonb_array_elements(w.secrets) s
              WHERE (s->>'expires_at')::timestamptz <= clock_timestamp())
RETURNING w.id;

-- name: list_event_types
-- Event types of the catalogue by name, after name $1, at most $2.
SELECT name, description, source, created_at FROM event_type
WHERE $1::text IS NULL OR name > $1
ORDER BY name
LIMIT $2;

-- name: create_event_type
-- Add event type $1 (description $2) to the catalogue; nothing when it exists.
INSERT INTO event_type (name, description, source) VALUES ($1, $2, 'api')
ON CONFLICT (name) DO NOTHING
RETURNING name, description, source, created_at;

-- name: set_organisation_settings
-- Set organisation $1's name ($2, NULL: unchanged) and contact_emails ($3, NULL: unchanged).
UPDATE organisation SET name = coalesce($2, name), contact_emails = coalesce($3::text[], contact_emails)
WHERE id = $1
RETURNING id, name, default_webhook_id, contact_emails, created_at;

-- name: start_verification
-- Ask webhook $1 of organisation $2 to prove it owns its URL, when its verify flag is set (or $6 forces it) and it
-- is not deactivated: store the digest $3 of a new one-time code valid until $4 (an older code no longer works),
-- hold its pending deliveries (tests excepted), and queue a webhook.verify event with payload $5 targeted at it
-- (kind test: one attempt, never held, no task, no state change). Returns the event id, or nothing.
WITH w AS (
    UPDATE webhook
    SET verify_code_digest = $3, verify_expires_at = $4, updated_at = clock_timestamp()
    WHERE id = $1 AND organisation = $2 AND deleted_at IS NULL AND state <> 'deactivated' AND (verify OR $6::boolean)
    RETURNING id, organisation
), held AS (
    UPDATE delivery
    SET state = 'held', held_since = clock_timestamp()
    WHERE webhook_id IN (SELECT id FROM w) AND state = 'pending' AND kind <> 'test'
)
INSERT INTO events (organisation, type, object_id, payload, webhook_id, kind)
SELECT w.organisation, 'webhook.verify', w.id::text, $5::jsonb, w.id, 'test'
FROM w
RETURNING id;

-- name: confirm_verification
-- The callback of webhook $1 was fetched with the code whose digest is $2: when it is the webhook's current code
-- and has not expired, the webhook is verified (the code is used up). Returns the webhook's organisation, or
-- nothing for a wrong, used or expired code.
UPDATE webhook
SET verify_code_digest = NULL, verify_expires_at = NULL, updated_at = clock_timestamp()
WHERE id = $1 AND deleted_at IS NULL AND verify_code_digest = $2 AND verify_expires_at > now()
RETURNING organisation;

-- ---- producer logins ----

-- name: create_producer_login
-- A new PostgreSQL login $1 (password $3, a SCRAM verifier), member of dispatcher_producer, bound to
-- organisation $2: returns 'created', 'exists' (a role of that name exists) or 'no_createrole'.
SELECT dispatcher_create_producer_login($1, $2, $3);

-- ---- secrets at rest ----

-- name: secrets_webhooks_to_reseal
-- Up to $3 webhooks (deleted ones too) after id $2, in id order, with a secret not sealed under the key whose
-- values start with $1 ('enc:v1:<key id>:'), locked until the transaction re-seals them. Returns id and secrets.
SELECT id, secrets::text AS secrets
FROM webhook w
WHERE id > $2
  AND EXISTS (SELECT FROM jsonb_array_elements(w.secrets) s WHERE NOT starts_with(s->>'secret', $1::text))
ORDER BY id
LIMIT $3
FOR UPDATE;

-- name: secrets_set_webhooks
-- Store the re-sealed secrets $2 (JSON texts) of webhooks $1 (arrays of the same length).
UPDATE webhook w
SET secrets = v.secrets::jsonb
FROM unnest($1::integer[], $2::text[]) AS v(id, secrets)
WHERE w.id = v.id;

-- name: secrets_policies_to_reseal
-- Up to $3 webhook policies after id $2, in id order, whose key is not sealed under the key whose values start
-- with $1, locked until the transaction re-seals them. Returns id and signing_key.
SELECT id, signing_key
FROM webhook_policy
WHERE id > $2 AND NOT starts_with(signing_key, $1::text)
ORDER BY id
LIMIT $3
FOR UPDATE;

-- name: secrets_set_policy_keys
-- Store the re-sealed keys $2 of webhook policies $1 (arrays of the same length).
UPDATE webhook_policy p
SET signing_key = v.signing_key
FROM unnest($1::integer[], $2::text[]) AS v(id, signing_key)
WHERE p.id = v.id;

-- ---- the console's figures (one organisation) ----

-- name: organisation_queue_status
-- Delivery counts by state of organisation $1's webhooks (failed tests are not dead letters: not counted).
SELECT s.state, count(d.id)::bigint AS count
FROM unnest(ARRAY['pending', 'leased', 'held', 'delivered', 'failed', 'cancelled']) AS s(state)
LEFT JOIN (delivery d JOIN webhook w ON w.id = d.webhook_id AND w.organisation = $1)
    ON d.state = s.state AND NOT (d.state = 'failed' AND d.kind = 'test')
GROUP BY s.state
ORDER BY array_position(ARRAY['pending', 'leased', 'held', 'delivered', 'failed', 'cancelled'], s.state);

-- name: organisation_queue_ages
-- For organisation $1: seconds since its oldest due pending delivery became due, since its oldest unrouted event
-- was made, and how many events wait to be routed.
SELECT (SELECT extract(epoch FROM now() - min(d.next_attempt_at))::float8
        FROM delivery d JOIN webhook w ON w.id = d.webhook_id
        WHERE w.organisation = $1 AND d.state = 'pending' AND d.next_attempt_at <= now()) AS oldest_due_seconds,
       (SELECT extract(epoch FROM now() - min(created_at))::float8
        FROM events WHERE organisation = $1 AND dispatched_at IS NULL) AS oldest_unrouted_seconds,
       (SELECT count(*) FROM events WHERE organisation = $1 AND dispatched_at IS NULL)::bigint AS unrouted_events;

-- name: organisation_rates
-- Attempts to organisation $1's webhooks finished in the last minute, by outcome.
SELECT count(*) FILTER (WHERE a.status BETWEEN 200 AND 299)::bigint AS delivered,
       count(*) FILTER (WHERE a.status IS NULL OR a.status NOT BETWEEN 200 AND 299)::bigint AS failed
FROM attempt a
JOIN delivery d ON d.id = a.delivery_id
JOIN webhook w ON w.id = d.webhook_id
WHERE w.organisation = $1 AND a.finished_at > now() - interval '1 minute';

-- name: webhook_hour_stats
-- Per live webhook of organisation $1 (only webhook $2 unless NULL) with attempts in the last hour: attempts, those
-- answered 2xx, and the mean and 95th percentile of their durations in milliseconds. Deliveries of the last 4 days
-- are looked at (retries and holds end before then).
SELECT d.webhook_id, count(*)::bigint AS attempts,
       count(*) FILTER (WHERE a.status BETWEEN 200 AND 299)::bigint AS succeeded,
       avg(a.duration_ms)::float8 AS mean_ms,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms)::float8 AS p95_ms
FROM webhook w
JOIN delivery d ON d.webhook_id = w.id AND d.created_at > now() - interval '4 days'
JOIN attempt a ON a.delivery_id = d.id AND a.finished_at > now() - interval '1 hour'
WHERE w.organisation = $1 AND ($2::int IS NULL OR w.id = $2) AND w.deleted_at IS NULL
GROUP BY d.webhook_id;

-- name: webhook_minutes
-- Attempts to webhook $1 of organisation $2 finished in the last day, per minute (minutes without any left out):
-- those answered 2xx (delivered) and the others (failed), oldest minute first.
SELECT date_trunc('minute', a.finished_at) AS minute,
       count(*) FILTER (WHERE a.status BETWEEN 200 AND 299)::bigint AS delivered,
       count(*) FILTER (WHERE a.status IS NULL OR a.status NOT BETWEEN 200 AND 299)::bigint AS failed
FROM webhook w
JOIN delivery d ON d.webhook_id = w.id AND d.created_at > now() - interval '4 days'
JOIN attempt a ON a.delivery_id = d.id AND a.finished_at > now() - interval '1 day'
WHERE w.id = $1 AND w.organisation = $2 AND w.deleted_at IS NULL
GROUP BY 1
ORDER BY 1;
