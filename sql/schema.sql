-- The canonical schema: what the migrations in sql/migrations build, as one file.
-- tests/integration/test_schema.py proves the two agree; change both together.


-- A time-ordered UUID (version 7) made in SQL: PostgreSQL before 18 has no uuidv7().
-- 48 bits of unix milliseconds, then the random bits of a v4 UUID with the version nibble set to 7.
CREATE FUNCTION dispatcher_uuidv7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- The smallest time-ordered UUID of a moment: ids below it were made before it (retention scans by id).
CREATE FUNCTION dispatcher_uuid_floor(moment timestamptz) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT encode(substring(int8send(floor(extract(epoch FROM moment) * 1000)::bigint) FROM 3)
                  || '\x00000000000000000000'::bytea, 'hex')::uuid
$$;

-- Settings the daemon copies from its configuration so that producers' statements see them.
CREATE TABLE dispatcher_settings (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    max_payload_bytes integer NOT NULL DEFAULT 262144 CHECK (max_payload_bytes > 0),
    notify boolean NOT NULL DEFAULT true
);
INSERT INTO dispatcher_settings DEFAULT VALUES;

CREATE TABLE organisation (
    id text PRIMARY KEY CONSTRAINT organisation_id_format CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    name text NOT NULL DEFAULT '',
    default_webhook_id integer,
    contact_emails text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE webhook_policy (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation text NOT NULL REFERENCES organisation ON DELETE CASCADE,
    name text NOT NULL DEFAULT '',
    disabled boolean NOT NULL DEFAULT false,
    jwt_alg text NOT NULL DEFAULT 'rs256' CONSTRAINT webhook_policy_jwt_alg CHECK (jwt_alg IN ('rs256', 'es256', 'hs256')),
    jwt_audience text,
    jwt_claim_expires_in integer CHECK (jwt_claim_expires_in > 0),
    signing_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (organisation, id)
);

CREATE TABLE webhook (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation text NOT NULL REFERENCES organisation ON DELETE CASCADE,
    name text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT '',
    url text NOT NULL CONSTRAINT webhook_url_scheme CHECK (url ~* '^https?://'),
    events text[] NOT NULL DEFAULT '{}',
    format text NOT NULL DEFAULT 'standard' CONSTRAINT webhook_format CHECK (format IN ('standard', '4me', 'ricloud')),
    state text NOT NULL DEFAULT 'new'
        CONSTRAINT webhook_state CHECK (state IN ('new', 'valid', 'invalid', 'deactivated')),
    paused boolean NOT NULL DEFAULT false,
    -- [{"secret": "whsec_...", "expires_at": null | "<timestamptz>"}], current secret first.
    secrets jsonb NOT NULL DEFAULT '[]' CONSTRAINT webhook_secrets_array CHECK (jsonb_typeof(secrets) = 'array'),
    policy_id integer,
    headers jsonb NOT NULL DEFAULT '{}' CONSTRAINT webhook_headers_object CHECK (jsonb_typeof(headers) = 'object'),
    rate_limit real CHECK (rate_limit > 0),
    -- The most requests in flight its receiver has shown it takes (halved on a 429 or 503, grown back by one per
    -- quiet window): NULL when not throttled ([worker] per_webhook_concurrency). Written by its claiming process.
    concurrency_limit integer CONSTRAINT webhook_concurrency_limit CHECK (concurrency_limit > 0),
    -- No delivery is claimed for it before this time (its receiver's Retry-After on a 429 or 503).
    throttled_until timestamptz,
    mail_exceptions_to text,
    source text,
    source_id text,
    last_error text,
    last_error_at timestamptz,
    -- The current streak of failed attempts (tests and 429s left out) and when it began.
    failure_count integer NOT NULL DEFAULT 0,
    failing_since timestamptz,
    state_changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    probed_at timestamptz,
    version integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted_at timestamptz,
    UNIQUE (organisation, id),
    CONSTRAINT webhook_policy_in_organisation FOREIGN KEY (organisation, policy_id)
        REFERENCES webhook_policy (organisation, id)
);
CREATE INDEX webhook_organisation ON webhook (organisation) WHERE deleted_at IS NULL;
CREATE INDEX webhook_policy_webhooks ON webhook (policy_id) WHERE policy_id IS NOT NULL;

ALTER TABLE organisation ADD CONSTRAINT organisation_default_webhook_in_organisation
    FOREIGN KEY (id, default_webhook_id) REFERENCES webhook (organisation, id) ON DELETE SET NULL (default_webhook_id);

CREATE TABLE token (
    id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation text NOT NULL REFERENCES organisation ON DELETE CASCADE,
    role text NOT NULL CONSTRAINT token_role CHECK (role IN ('admin', 'producer', 'viewer')),
    digest bytea NOT NULL UNIQUE,
    name text NOT NULL DEFAULT '',
    webhook_id integer,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_used_at timestamptz,
    revoked_at timestamptz,
    UNIQUE (organisation, id),
    CONSTRAINT token_webhook_in_organisation FOREIGN KEY (organisation, webhook_id)
        REFERENCES webhook (organisation, id) ON DELETE SET NULL (webhook_id)
);

-- Per-token rate limits of the API (tests, replays, redeliveries), shared by every process.
CREATE TABLE rate_limit (
    token_id integer NOT NULL REFERENCES token ON DELETE CASCADE,
    action text NOT NULL,
    window_start timestamptz NOT NULL,
    uses integer NOT NULL,
    PRIMARY KEY (token_id, action)
);

CREATE TABLE event_type (
    name text PRIMARY KEY CONSTRAINT event_type_name_format
        CHECK (length(name) <= 100 AND name ~ '^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$'),
    description text NOT NULL DEFAULT '',
    source text NOT NULL DEFAULT 'builtin' CHECK (source IN ('builtin', 'config', 'api')),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

INSERT INTO event_type (name)
SELECT unnest(ARRAY[
    'automation_rule', 'broadcast.create', 'broadcast.update', 'workflow.create', 'workflow.manager-changed',
    'workflow.note-added', 'workflow.status-changed', 'workflow.update', 'ci.create', 'ci.update',
    'contract.create', 'contract.update', 'flsa.create', 'flsa.update', 'knowledge_article.create',
    'knowledge_article.update', 'organization.create', 'organization.update', 'out_of_office_period.create',
    'out_of_office_period.update', 'out_of_office_period.delete', 'person.create', 'person.update',
    'problem.create', 'problem.manager-changed', 'problem.member-changed', 'problem.note-added',
    'problem.status-changed', 'problem.team-changed', 'problem.update', 'product.create', 'product.update',
    'project.create', 'project.manager-changed', 'project.note-added', 'project.status-changed',
    'project.update', 'project_task.create', 'project_task.note-added', 'project_task.status-changed',
    'project_task.update', 'release.create', 'release.manager-changed', 'release.note-added', 'release.update',
    'request.agile-board-column-changed', 'request.create', 'request.major-incident-status-changed',
    'request.member-changed', 'request.note-added', 'request.status-changed', 'request.team-changed',
    'request.update', 'risk.create', 'risk.update', 'risk.note-added', 'risk.status-changed',
    'risk.manager-changed', 'service.create', 'service.update', 'service_instance.create',
    'service_instance.update', 'service_offering.create', 'service_offering.update', 'sla.create',
    'sla.update', 'task.create', 'task.member-changed', 'task.note-added', 'task.status-changed',
    'task.team-changed', 'task.update', 'team.create', 'team.update', 'time_entry.create', 'time_entry.update',
    'time_entry.delete',
    -- ricloud
    'webhook_config.test', 'session.expired', 'poll.created', 'poll.completed', 'task.created',
    'task.succeeded', 'task.failed',
    -- tests of standard and 4me webhooks
    'webhook.test'
]);

CREATE TABLE events (
    id uuid PRIMARY KEY DEFAULT dispatcher_uuidv7(),
    organisation text NOT NULL,
    type text NOT NULL,
    object_id text,
    payload jsonb NOT NULL DEFAULT '{}',
    actor jsonb,
    key_id integer,
    webhook_id integer,
    kind text NOT NULL DEFAULT 'event' CONSTRAINT event_kind CHECK (kind IN ('event', 'test')),
    idempotency_key text CONSTRAINT event_idempotency_key_length CHECK (length(idempotency_key) <= 255),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- NULL until routed; then the number of deliveries made for it (0 when routed to nobody).
    dispatched_at timestamptz,
    delivery_count integer,
    dispatch_error text,
    CONSTRAINT event_organisation_unknown FOREIGN KEY (organisation) REFERENCES organisation ON DELETE CASCADE,
    CONSTRAINT event_type_unknown FOREIGN KEY (type) REFERENCES event_type,
    CONSTRAINT event_key_not_in_organisation FOREIGN KEY (organisation, key_id) REFERENCES token (organisation, id),
    CONSTRAINT event_webhook_not_in_organisation FOREIGN KEY (organisation, webhook_id)
        REFERENCES webhook (organisation, id),
    CONSTRAINT event_actor_object CHECK (actor IS NULL OR jsonb_typeof(actor) = 'object'),
    CONSTRAINT event_idempotency_key_repeated UNIQUE (organisation, idempotency_key)
);
CREATE INDEX events_undispatched ON events (id) WHERE dispatched_at IS NULL;
CREATE INDEX events_created ON events (organisation, created_at);
-- Events targeted at a webhook, for pruning deleted webhooks (migration 009).
CREATE INDEX events_webhook ON events (webhook_id) WHERE webhook_id IS NOT NULL;
ALTER TABLE events SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

-- Producer logins bound to one organisation (dispatcher producer create); see dispatcher_check_event.
CREATE TABLE producer_login (
    role_name text PRIMARY KEY,
    organisation text NOT NULL REFERENCES organisation ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The payload limit is a setting, which a CHECK constraint cannot read: a row trigger raises the same
-- check_violation a constraint would, under the constraint name event_payload_too_large. It checks object_id's
-- length too (event_object_id_length), on INSERT and when object_id changes only: routing updates rows that
-- may have been stored before the limit (migration 006). A login bound to an organisation in producer_login may
-- insert events of that organisation only (event_organisation_not_allowed, migration 007): it checks session_user,
-- since current_user is the function's owner here.
CREATE FUNCTION dispatcher_check_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    max_bytes integer;
    size integer;
    bound text;
BEGIN
    SELECT organisation INTO bound FROM producer_login WHERE role_name = session_user;
    IF FOUND AND NEW.organisation IS DISTINCT FROM bound THEN
        RAISE EXCEPTION 'login % may emit events of organisation % only, not of %', session_user, bound,
                        NEW.organisation
            USING ERRCODE = 'check_violation', CONSTRAINT = 'event_organisation_not_allowed', TABLE = 'events',
                  HINT = 'each producer login is bound to one organisation; use the login made for this one'
                         ' (dispatcher producer create --organisation ...)';
    END IF;
    IF length(NEW.object_id) > 255
       AND (TG_OP = 'INSERT' OR NEW.object_id IS DISTINCT FROM OLD.object_id) THEN
        RAISE EXCEPTION 'event object_id is % characters, more than the 255 allowed', length(NEW.object_id)
            USING ERRCODE = 'check_violation', CONSTRAINT = 'event_object_id_length', TABLE = 'events',
                  HINT = 'object_id names the object the event is about; send its id, not the object';
    END IF;
    SELECT max_payload_bytes INTO max_bytes FROM dispatcher_settings;
    size := octet_length(NEW.payload::text) + coalesce(octet_length(NEW.actor::text), 0);
    IF size > max_bytes THEN
        RAISE EXCEPTION 'event payload and actor are % bytes, more than the % allowed', size, max_bytes
            USING ERRCODE = 'check_violation', CONSTRAINT = 'event_payload_too_large', TABLE = 'events',
                  HINT = 'send a reference to the data instead, or raise [events] max_payload_bytes';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER events_check BEFORE INSERT OR UPDATE OF payload, actor, object_id ON events
    FOR EACH ROW EXECUTE FUNCTION dispatcher_check_event();

-- One NOTIFY per producer statement, with an empty payload on a constant channel: a doorbell, not a message.
-- SET dispatcher.notify = off (per session) or [events] notify = false (for all) leaves polling as the wake-up.
CREATE FUNCTION dispatcher_notify_events() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF lower(trim(coalesce(current_setting('dispatcher.notify', true), ''))) NOT IN ('off', 'false', 'f', 'no', 'n', '0')
       AND (SELECT notify FROM dispatcher_settings) THEN
        PERFORM pg_notify('dispatcher_events', '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION dispatcher_notify_events();

CREATE TABLE delivery (
    id uuid PRIMARY KEY DEFAULT dispatcher_uuidv7(),
    event_id uuid NOT NULL REFERENCES events ON DELETE CASCADE,
    webhook_id integer NOT NULL REFERENCES webhook,
    kind text NOT NULL DEFAULT 'original'
        CONSTRAINT delivery_kind CHECK (kind IN ('original', 'test', 'redeliver', 'replay')),
    state text NOT NULL DEFAULT 'pending'
        CONSTRAINT delivery_state CHECK (state IN ('pending', 'leased', 'held', 'delivered', 'failed', 'cancelled')),
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL CHECK (max_attempts > 0),
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The retry delay (seconds) chosen at claim time for the attempt under way; NULL when none is left.
    retry_delay real,
    leased_until timestamptz,
    lease_owner text,
    lease_token bigint,
    held_since timestamptz,
    last_status integer,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz,
    CONSTRAINT delivery_lease_complete CHECK (state <> 'leased' OR (leased_until IS NOT NULL AND lease_token IS NOT NULL))
);
CREATE SEQUENCE delivery_lease_token;
-- The claim path: only pending rows are in this index; held and finished rows cost the claim nothing.
CREATE INDEX delivery_due ON delivery (webhook_id, next_attempt_at) WHERE state = 'pending';
CREATE INDEX delivery_leased ON delivery (webhook_id, leased_until) WHERE state = 'leased';
CREATE INDEX delivery_held ON delivery (webhook_id, held_since) WHERE state = 'held';
CREATE INDEX delivery_event ON delivery (event_id);
CREATE INDEX delivery_webhook ON delivery (webhook_id, created_at);
-- One original and one test delivery per (event, webhook); redeliveries and replays add rows.
CREATE UNIQUE INDEX delivery_once ON delivery (event_id, webhook_id, kind) WHERE kind IN ('original', 'test');
ALTER TABLE delivery SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02,
                          fillfactor = 80);

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
LANGUAGE plpgsql VOLATILE
-- Counting leases by bitmap scan would revisit every lease finished since the last VACUUM (migration 003).
SET enable_bitmapscan = off
AS $$
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
CREATE FUNCTION dispatcher_claim(
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

-- The claim with each row's webhook policy (migration 004): JWT-signed webhooks need the policy's key.
CREATE FUNCTION dispatcher_claim_with_policy(
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
    webhook_version integer, webhook_state text,
    policy_id integer, policy_disabled boolean, jwt_alg text, jwt_audience text, jwt_claim_expires_in integer,
    signing_key text
)
LANGUAGE sql VOLATILE AS $$
    SELECT c.*, p.id, p.disabled, p.jwt_alg, p.jwt_audience, p.jwt_claim_expires_in, p.signing_key
    FROM dispatcher_claim(p_batch, p_per_webhook, p_lease_seconds, p_owner, p_schedule, p_jitter,
                          p_test_lease_seconds, p_answered) c
    JOIN webhook w ON w.id = c.webhook_id
    LEFT JOIN webhook_policy p ON p.id = w.policy_id;
$$;

-- The claim since migration 008: no lock for the whole cluster. A webhook's deliveries are leased by one process at
-- a time (the one holding leases of it), which enforces the cap and the rate limit in its own memory and may lease
-- ahead of its free slots (p_ahead times the cap), so that a slot that frees starts its next request at once.
-- Step 1 try-locks the webhooks with due deliveries, the longest waiting first (skipping any another claim holds
-- at that moment); step 2 takes its snapshot under those locks, so it sees every lease committed for them.
-- The older functions above stay for daemons from before 008 during a rolling upgrade.
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

CREATE TABLE attempt (
    delivery_id uuid NOT NULL REFERENCES delivery ON DELETE CASCADE,
    number integer NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    status integer,
    error_class text,
    error text,
    duration_ms integer NOT NULL,
    response text,
    PRIMARY KEY (delivery_id, number)
);
ALTER TABLE attempt SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

CREATE TABLE task (
    id uuid PRIMARY KEY DEFAULT dispatcher_uuidv7(),
    organisation text NOT NULL REFERENCES organisation ON DELETE CASCADE,
    type text NOT NULL,
    webhook_id integer REFERENCES webhook,
    event_id uuid REFERENCES events ON DELETE SET NULL,
    webhook_version integer,
    state text NOT NULL DEFAULT 'pending' CONSTRAINT task_state CHECK (state IN ('pending', 'succeeded', 'failed')),
    result jsonb,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at timestamptz
);
-- At most one pending test per webhook: a test asked for while one is pending returns that one.
CREATE UNIQUE INDEX task_one_pending_test ON task (webhook_id) WHERE state = 'pending';
CREATE INDEX task_event ON task (event_id);

-- Failure mail waits here until a worker sends it over SMTP ([mail]).
CREATE TABLE mail_outbox (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation text NOT NULL REFERENCES organisation ON DELETE CASCADE,
    webhook_id integer REFERENCES webhook,
    reason text NOT NULL CONSTRAINT mail_reason CHECK (reason IN ('failing', 'invalid')),
    recipients text[] NOT NULL,
    subject text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    sent_at timestamptz
);
CREATE INDEX mail_outbox_unsent ON mail_outbox (next_attempt_at) WHERE sent_at IS NULL;

-- When each webhook's last "failing" mail was queued: at most one per webhook per 20 minutes.
CREATE TABLE mail_throttle (
    webhook_id integer PRIMARY KEY REFERENCES webhook,
    failing_mail_at timestamptz NOT NULL
);

-- Who gets a webhook's failure mail and how it is named there: mail_exceptions_to (comma-separated), else the
-- organisation's contact_emails; the URL without credentials. Both mail queries read it.
CREATE VIEW webhook_mail_target AS
SELECT w.id, w.organisation, w.last_error, w.failure_count, w.failing_since,
       regexp_replace(w.url, '://[^/]*@', '://***@') AS url,
       CASE WHEN coalesce(w.mail_exceptions_to, '') <> ''
            THEN array(SELECT trim(x) FROM unnest(string_to_array(w.mail_exceptions_to, ',')) AS x)
            ELSE o.contact_emails END AS recipients
FROM webhook w
JOIN organisation o ON o.id = w.organisation
WHERE w.deleted_at IS NULL;

-- Producers: INSERT on the producer columns and dispatcher_emit(), nothing else.
CREATE FUNCTION dispatcher_emit(
    organisation text,
    type text,
    payload jsonb DEFAULT '{}',
    object_id text DEFAULT NULL,
    actor jsonb DEFAULT NULL,
    key_id integer DEFAULT NULL,
    idempotency_key text DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    new_id uuid;
BEGIN
    INSERT INTO events AS e (organisation, type, payload, object_id, actor, key_id, idempotency_key)
    VALUES ($1, $2, coalesce($3, '{}'), $4, $5, $6, $7)
    ON CONFLICT ON CONSTRAINT event_idempotency_key_repeated DO NOTHING
    RETURNING e.id INTO new_id;
    IF new_id IS NULL THEN
        SELECT e.id INTO new_id FROM events e WHERE e.organisation = $1 AND e.idempotency_key = $7;
    END IF;
    RETURN new_id;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'dispatcher_producer') THEN
        CREATE ROLE dispatcher_producer NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION dispatcher_emit(text, text, jsonb, text, jsonb, integer, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION dispatcher_emit(text, text, jsonb, text, jsonb, integer, text) TO dispatcher_producer;
GRANT INSERT (organisation, type, payload, object_id, actor, key_id, idempotency_key) ON events
    TO dispatcher_producer;

-- A new login (LOGIN, member of dispatcher_producer) bound to an organisation, in one statement: 'created',
-- 'exists' when a role of that name exists, or 'no_createrole' when the caller may not create roles. The
-- names are quoted by format(); the password is best given as a SCRAM verifier, so that no clear text reaches
-- the server. Runs with the caller's rights (CREATEROLE is the caller's, not the owner's).
CREATE FUNCTION dispatcher_create_producer_login(login text, organisation text, password text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = login) THEN
        RETURN 'exists';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = current_user AND (rolcreaterole OR rolsuper)) THEN
        RETURN 'no_createrole';
    END IF;
    EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE dispatcher_producer', login, password);
    -- a binding left by a dropped role of the same name is replaced
    INSERT INTO producer_login (role_name, organisation) VALUES (login, $2)
    ON CONFLICT (role_name) DO UPDATE SET organisation = EXCLUDED.organisation, created_at = clock_timestamp();
    RETURN 'created';
END
$$;

-- ---- recovery (migration 005) ----------------------------------------------------------------------

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

-- ---- 4me (migration 004) -----------------------------------------------------------------------------

-- Ownership verification (4me's webhook.verify), off by default, per webhook: a new or re-pointed webhook with
-- `verify` set first receives a webhook.verify event whose payload holds a one-time callback URL on the API; until
-- that URL is fetched (verify_code_digest set) it stays new and its deliveries are held.
ALTER TABLE webhook ADD COLUMN verify boolean NOT NULL DEFAULT false;
ALTER TABLE webhook ADD COLUMN verify_code_digest bytea;
ALTER TABLE webhook ADD COLUMN verify_expires_at timestamptz;
INSERT INTO event_type (name) VALUES ('webhook.verify');
