-- A batch item that fails alone while being stored (here a BEFORE ROW
-- trigger raises a data exception) is a processing_error dead letter whose
-- payload is the message as it would have been stored: with the context,
-- integrations and sentAt its envelope gives it, so that replaying it after
-- the fix stores the same event its siblings got, not one without them.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(5);
\ir include/partition_setup.psql

CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event = 'Boom' THEN
        PERFORM 1 / 0;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER events_refuse BEFORE INSERT ON cdp.events FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse();
SELECT cdp.ingest('{"batch": [
    {"type": "track", "userId": "u-1", "event": "Fine", "messageId": "k-1", "timestamp": "2026-02-01T10:00:00Z"},
    {"type": "track", "userId": "u-1", "event": "Boom", "messageId": "f-1", "timestamp": "2026-02-01T10:00:00Z",
     "writeKey": "wk-secret"}],
  "context": {"ip": "192.0.2.7"}, "integrations": {"All": false},
  "sentAt": "2026-02-01T10:00:05Z", "writeKey": "wk-secret"}'::jsonb);
SELECT is(cdp.process_inbox(), 2::bigint, 'both messages are taken');
SELECT results_eq($$SELECT error_code, payload::jsonb->>'messageId' FROM cdp.dead_letters$$,
                  $$VALUES ('processing_error', 'f-1')$$, 'the failing item is a processing_error dead letter');
SELECT is((SELECT payload::jsonb #>> '{context,ip}' FROM cdp.dead_letters), '192.0.2.7',
          'its payload has the context its envelope gave it');
SELECT is((SELECT payload::jsonb->>'sentAt' FROM cdp.dead_letters), '2026-02-01T10:00:05Z',
          'and the envelope''s sentAt');
SELECT doesnt_match((SELECT payload FROM cdp.dead_letters), 'wk-secret', 'and no write key');

SELECT * FROM finish();
ROLLBACK;
