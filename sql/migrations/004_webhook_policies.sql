-- 004_webhook_policies: the claim carries each webhook's JWT policy, so that deliveries of webhooks under a
-- policy are signed as {"jwt": ...} bodies (4me webhook policies); and 4me's ownership verification.
--
-- A new function beside dispatcher_claim (whose columns daemons before 004 read): the same claim, each row with
-- its webhook's policy (NULL columns when it has none). The key never leaves the database but for the worker.
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

-- Disabling a policy holds the deliveries of its webhooks: they are found through this index.
CREATE INDEX webhook_policy_webhooks ON webhook (policy_id) WHERE policy_id IS NOT NULL;

-- Ownership verification (4me's webhook.verify), off by default, per webhook: a new or re-pointed webhook with
-- `verify` set first receives a webhook.verify event whose payload holds a one-time callback URL on the API; until
-- that URL is fetched (verify_code_digest set) it stays new and its deliveries are held.
ALTER TABLE webhook ADD COLUMN verify boolean NOT NULL DEFAULT false;
ALTER TABLE webhook ADD COLUMN verify_code_digest bytea;
ALTER TABLE webhook ADD COLUMN verify_expires_at timestamptz;
INSERT INTO event_type (name) VALUES ('webhook.verify') ON CONFLICT (name) DO NOTHING;
