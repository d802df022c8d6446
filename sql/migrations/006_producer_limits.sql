-- Producer limits that hold: object_id is at most 255 characters (a 5,000-digit id once reached a stage), and
-- the actor counts with the payload in [events] max_payload_bytes (it is sent in every envelope too).
-- Both are checked by the row trigger, on INSERT and on UPDATE of the columns concerned, not by a CHECK
-- constraint: a CHECK applies to every UPDATE of the row, so an event stored before this migration with a
-- longer id could no longer be marked routed (routing updates the row), and routing would stop at it.

CREATE OR REPLACE FUNCTION dispatcher_check_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    max_bytes integer;
    size integer;
BEGIN
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

DROP TRIGGER events_check ON events;
CREATE TRIGGER events_check BEFORE INSERT OR UPDATE OF payload, actor, object_id ON events
    FOR EACH ROW EXECUTE FUNCTION dispatcher_check_event();
