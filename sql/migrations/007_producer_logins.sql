-- Producers confined to their organisation: a producer login bound to one organisation (producer_login) may
-- insert events of that organisation only. The row trigger checks session_user, the login that connected:
-- current_user is the function's owner inside SECURITY DEFINER code (the trigger, dispatcher_emit). Logins
-- that are not bound (the daemon's own, an operator's) are unaffected. The object_id and size checks of
-- migration 006 are kept as they were. dispatcher_emit's answer to a repeated idempotency key is then always
-- an event of the caller's own organisation: the trigger refuses another before the conflict is looked at.

CREATE TABLE producer_login (
    role_name text PRIMARY KEY,
    organisation text NOT NULL REFERENCES organisation ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE OR REPLACE FUNCTION dispatcher_check_event() RETURNS trigger
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
