-- 005_recovery: replays (a webhook's window of events sent again, in batches by maintenance), the delivery rows
-- they made, and the API's event types. Additive: a new table, a nullable column, an index, a function.

-- A replay: for each event of the window that the webhook's subscriptions match (or that was routed to it),
-- whose last delivery to it was not delivered (or any, with only_failed false), a new delivery of kind replay.
-- Maintenance walks the window in batches, remembering where it stopped (cursor_at, cursor_id), so a replay
-- survives a restart; it is completed once the walk is done and every delivery it made has finished.
CREATE TABLE replay (
    id uuid PRIMARY KEY DEFAULT dispatcher_uuidv7(),
    organisation text NOT NULL REFERENCES organisation ON DELETE CASCADE,
    webhook_id integer NOT NULL REFERENCES webhook,
    since timestamptz NOT NULL,
    until timestamptz NOT NULL,
    only_failed boolean NOT NULL DEFAULT true,
    types text[],
    state text NOT NULL DEFAULT 'running'
        CONSTRAINT replay_state CHECK (state IN ('running', 'completed', 'cancelled')),
    max_events integer NOT NULL CHECK (max_events > 0),
    cursor_at timestamptz,
    cursor_id uuid,
    scanned_at timestamptz,
    events_considered integer NOT NULL DEFAULT 0,
    deliveries_created integer NOT NULL DEFAULT 0,
    error text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at timestamptz,
    CONSTRAINT replay_window CHECK (since < until)
);
-- One running replay per webhook: the same request while it runs returns it.
CREATE UNIQUE INDEX replay_one_running ON replay (webhook_id) WHERE state = 'running';
CREATE INDEX replay_webhook ON replay (webhook_id, created_at);

ALTER TABLE delivery ADD COLUMN replay_id uuid REFERENCES replay ON DELETE SET NULL;
CREATE INDEX delivery_replay ON delivery (replay_id) WHERE replay_id IS NOT NULL;

-- Whether event type `type` is one that webhook patterns `patterns` subscribe to (exact, `prefix.*` or `*`).
CREATE FUNCTION dispatcher_matches(patterns text[], type text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT EXISTS (
        SELECT FROM unnest(patterns) AS p(pattern)
        WHERE p.pattern = type OR p.pattern = '*' OR (p.pattern LIKE '%.*' AND starts_with(type, left(p.pattern, -1))))
$$;

-- The events of webhook p_webhook's replay window [p_since, p_until) after the cursor (p_after_at, p_after_id),
-- oldest first, at most p_limit, each with whether the replay sends it again: a routed event (tests left out)
-- of the webhook's organisation, of a type in p_types (patterns; NULL: any), that the webhook's patterns match
-- or that was routed to it before, and, with p_only_failed, whose last delivery to the webhook failed or was
-- cancelled (or that has none): events with a delivery still under way are left to it.
CREATE FUNCTION dispatcher_replay_events(
    p_webhook integer, p_since timestamptz, p_until timestamptz, p_only_failed boolean, p_types text[],
    p_after_at timestamptz, p_after_id uuid, p_limit integer
) RETURNS TABLE (id uuid, created_at timestamptz, wanted boolean)
LANGUAGE sql STABLE AS $$
    SELECT e.id, e.created_at,
           (p_types IS NULL OR dispatcher_matches(p_types, e.type))
           AND (dispatcher_matches(w.events, e.type)
                OR EXISTS (SELECT FROM delivery d WHERE d.event_id = e.id AND d.webhook_id = w.id AND d.kind <> 'test'))
           AND (NOT p_only_failed
                OR coalesce((SELECT d.state FROM delivery d
                             WHERE d.event_id = e.id AND d.webhook_id = w.id AND d.kind <> 'test'
                             ORDER BY d.created_at DESC, d.id DESC LIMIT 1), 'failed') IN ('failed', 'cancelled'))
    FROM webhook w
    JOIN events e ON e.organisation = w.organisation
    WHERE w.id = p_webhook AND e.kind = 'event' AND e.dispatched_at IS NOT NULL
      AND e.created_at >= p_since AND e.created_at < p_until
      AND (p_after_at IS NULL OR (e.created_at, e.id) > (p_after_at, p_after_id))
    ORDER BY e.created_at, e.id
    LIMIT p_limit
$$;

-- A delivery as the log shows it: with its event's organisation and type.
CREATE VIEW delivery_log AS
SELECT d.id, e.organisation, d.event_id, d.webhook_id, e.type AS event_type, d.kind, d.state, d.attempts,
       d.max_attempts, d.next_attempt_at, d.last_status, d.last_error, d.replay_id, d.created_at, d.finished_at
FROM delivery d
JOIN events e ON e.id = d.event_id;

-- A replay with the progress of the deliveries it made.
CREATE VIEW replay_progress AS
SELECT r.id, r.organisation, r.webhook_id, r.since, r.until, r.only_failed, r.types, r.state, r.max_events,
       r.events_considered, r.deliveries_created, r.error, r.created_at, r.updated_at, r.completed_at,
       r.scanned_at, s.delivered, s.failed, s.in_progress
FROM replay r
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE d.state = 'delivered')::int AS delivered,
           count(*) FILTER (WHERE d.state IN ('failed', 'cancelled'))::int AS failed,
           count(*) FILTER (WHERE d.state IN ('pending', 'leased', 'held'))::int AS in_progress
    FROM delivery d WHERE d.replay_id = r.id
) s;
