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
-- default. Deliveries to invalid or paused webhooks are made held. Every event taken is marked dispatched,
-- also when routed to nobody. $2 is the number of attempts an original delivery gets.
WITH ev AS (
    SELECT e.id, e.organisation, e.type, e.key_id, e.webhook_id, e.kind
    FROM events e
    WHERE e.dispatched_at IS NULL AND ($3::uuid IS NULL OR e.id = $3::uuid)
    ORDER BY e.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
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
    SELECT ev.id, coalesce(t.webhook_id, o.default_webhook_id), false
    FROM ev
    JOIN organisation o ON o.id = ev.organisation
    LEFT JOIN token t ON t.id = ev.key_id
    WHERE ev.webhook_id IS NULL AND coalesce(t.webhook_id, o.default_webhook_id) IS NOT NULL
), made AS (
    INSERT INTO delivery (event_id, webhook_id, kind, state, max_attempts, held_since)
    SELECT r.event_id, r.webhook_id,
           CASE WHEN ev.kind = 'test' THEN 'test' ELSE 'original' END,
           CASE WHEN NOT r.targeted AND (w.paused OR w.state = 'invalid') THEN 'held' ELSE 'pending' END,
           CASE WHEN ev.kind = 'test' THEN 1 ELSE $2::int END,
           CASE WHEN NOT r.targeted AND (w.paused OR w.state = 'invalid') THEN clock_timestamp() END
    FROM routed r
    JOIN ev ON ev.id = r.event_id
    JOIN webhook w ON w.id = r.webhook_id
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
-- Lease up to $1 due deliveries to owner $4 for $3 seconds ($7 for tests), each webhook capped at its free slots
-- out of $2 counting the leases of every process; retry delays drawn from schedule $5 with jitter $6. See
-- dispatcher_claim in the schema. Returns what the sender needs: the delivery, its event and its webhook.
SELECT * FROM dispatcher_claim($1, $2, $3, $4, $5, $6, $7);

-- name: record_results
-- Write a batch of attempt results. A result applies only while its delivery is still leased with the same
-- fencing token; others (the lease expired and was rescued) are discarded. A 410 makes the webhook invalid
-- at once. Returns the deliveries updated.
WITH result AS (
    SELECT *
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::timestamptz[], $5::int[], $6::text[], $7::text[],
                $8::timestamptz[], $9::timestamptz[], $10::int[], $11::text[])
        AS r(delivery_id, lease_token, state, next_attempt_at, status, error_class, error,
             started_at, finished_at, duration_ms, response)
), updated AS (
    UPDATE delivery d
    SET state = r.state,
        next_attempt_at = coalesce(r.next_attempt_at, d.next_attempt_at),
        leased_until = NULL,
        lease_owner = NULL,
        last_status = r.status,
        last_error = r.error,
        finished_at = CASE WHEN r.state IN ('delivered', 'failed') THEN r.finished_at END
    FROM result r
    WHERE d.id = r.delivery_id AND d.lease_token = r.lease_token AND d.state = 'leased'
    RETURNING d.id, d.webhook_id, d.kind, d.attempts
), logged AS (
    INSERT INTO attempt (delivery_id, number, started_at, finished_at, status, error_class, error,
                         duration_ms, response)
    SELECT r.delivery_id, u.attempts, r.started_at, r.finished_at, r.status, r.error_class, r.error,
           r.duration_ms, r.response
    FROM result r
    JOIN updated u ON u.id = r.delivery_id
), failing AS (
    SELECT DISTINCT ON (u.webhook_id) u.webhook_id, r.error, r.finished_at, r.status = 410 AS gone
    FROM updated u
    JOIN result r ON r.delivery_id = u.id
    WHERE r.state <> 'delivered' AND u.kind <> 'test'
    ORDER BY u.webhook_id, (r.status = 410) DESC, r.finished_at DESC
), webhook_update AS (
    UPDATE webhook w
    SET last_error = f.error,
        last_error_at = f.finished_at,
        state = CASE WHEN f.gone AND w.state IN ('new', 'valid') THEN 'invalid' ELSE w.state END,
        updated_at = CASE WHEN f.gone AND w.state IN ('new', 'valid') THEN clock_timestamp() ELSE w.updated_at END
    FROM failing f
    WHERE w.id = f.webhook_id
    RETURNING w.id
)
SELECT u.id FROM updated u;

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

-- name: release_leases
-- Give back deliveries $1 (with fencing tokens $2) that this process leased but will not finish: due now, and
-- the attempt counted at claim given back too, since no result was recorded for it.
UPDATE delivery d
SET state = 'pending', next_attempt_at = clock_timestamp(), leased_until = NULL, lease_owner = NULL,
    attempts = d.attempts - 1, retry_delay = NULL
FROM unnest($1::uuid[], $2::bigint[]) AS r(id, lease_token)
WHERE d.id = r.id AND d.lease_token = r.lease_token AND d.state = 'leased'
RETURNING d.id;

-- name: release_owner_leases
-- Give back every delivery still leased to owner $1 (the last step of a graceful shutdown), as release_leases.
UPDATE delivery
SET state = 'pending', next_attempt_at = clock_timestamp(), leased_until = NULL, lease_owner = NULL,
    attempts = attempts - 1, retry_delay = NULL
WHERE state = 'leased' AND lease_owner = $1
RETURNING id;

-- name: queue_status
-- Delivery counts by state and the age of the oldest due pending delivery, for `dispatcher status`.
SELECT s.state, count(d.id)::bigint AS count
FROM unnest(ARRAY['pending', 'leased', 'held', 'delivered', 'failed', 'cancelled']) AS s(state)
LEFT JOIN delivery d ON d.state = s.state
GROUP BY s.state
ORDER BY array_position(ARRAY['pending', 'leased', 'held', 'delivered', 'failed', 'cancelled'], s.state);

-- name: oldest_pending
-- Seconds since the oldest due pending delivery became due, and since the oldest unrouted event was made.
SELECT (SELECT extract(epoch FROM now() - min(next_attempt_at))::float8
        FROM delivery WHERE state = 'pending' AND next_attempt_at <= now()) AS oldest_due_seconds,
       (SELECT extract(epoch FROM now() - min(created_at))::float8
        FROM events WHERE dispatched_at IS NULL) AS oldest_unrouted_seconds,
       (SELECT count(*) FROM events WHERE dispatched_at IS NULL)::bigint AS unrouted_events;

-- name: webhook_states
-- Webhooks by state (deleted ones left out), paused ones counted apart.
SELECT state, count(*)::bigint AS count, count(*) FILTER (WHERE paused)::bigint AS paused
FROM webhook
WHERE deleted_at IS NULL
GROUP BY state
ORDER BY state;

-- name: recent_rates
-- Attempts finished in the last minute by outcome, for `dispatcher status`.
SELECT count(*) FILTER (WHERE status BETWEEN 200 AND 299)::bigint AS delivered,
       count(*) FILTER (WHERE status IS NULL OR status NOT BETWEEN 200 AND 299)::bigint AS failed
FROM attempt
WHERE finished_at > now() - interval '1 minute';

-- name: ensure_organisation
-- Create organisation $1 if it does not exist.
INSERT INTO organisation (id, name) VALUES ($1, $1) ON CONFLICT (id) DO NOTHING;

-- name: create_token
-- Store a new token's digest; returns its id.
INSERT INTO token (organisation, role, digest, name) VALUES ($1, $2, $3, $4) RETURNING id;

-- name: count_tokens
-- Tokens of organisation $1 with role $2 that are not revoked.
SELECT count(*)::bigint FROM token WHERE organisation = $1 AND role = $2 AND revoked_at IS NULL;

-- name: create_webhook
-- Make a webhook; returns it. It starts in state new (its first test comes with the health work).
INSERT INTO webhook (organisation, url, events, format, name, secrets)
VALUES ($1, $2, $3, $4, $5, jsonb_build_array(jsonb_build_object('secret', $6::text, 'expires_at', NULL)))
RETURNING id, organisation, name, url, events, format, state, paused, created_at, updated_at;

-- name: list_webhooks
-- Webhooks of organisation $1 (every organisation when NULL), oldest first, without secrets.
SELECT id, organisation, name, url, events, format, state, paused, last_error, created_at, updated_at
FROM webhook
WHERE deleted_at IS NULL AND ($1::text IS NULL OR organisation = $1)
ORDER BY id;

-- name: emit_event
-- Insert an event through dispatcher_emit (idempotency key honoured); returns its id.
SELECT dispatcher_emit($1, $2, $3::jsonb, object_id => $4, key_id => $5, idempotency_key => $6);

-- name: undispatched_events
-- Ids of up to $1 events not yet routed, oldest first (for routing them one by one after a batch failed).
SELECT id FROM events WHERE dispatched_at IS NULL ORDER BY id LIMIT $1;
