-- Every event is written in the layout of the partition it goes to: a
-- partition made before a column was dropped from the middle of cdp.events
-- keeps a hole there, one made after has none, and a column after the hole
-- sits at another position in each.  Both get the right values, in one batch,
-- with defaults and with an AFTER ROW trigger reading NEW.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;

CREATE FUNCTION pg_temp.send(msg jsonb) RETURNS bigint LANGUAGE sql AS $$
    SELECT cdp.ingest(msg);
    SELECT cdp.process_inbox();
$$;
CREATE FUNCTION pg_temp.track(id text, day text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('type', 'track', 'userId', 'u-' || id, 'event', 'E ' || id,
                              'messageId', id, 'timestamp', day || 'T10:00:00Z')
$$;

-- the February partition is made with cdp.events' columns as they are now
SELECT pg_temp.send(pg_temp.track('first', '2026-02-01'));
ALTER TABLE cdp.events ADD COLUMN scratch int;
ALTER TABLE cdp.events ADD COLUMN tier text DEFAULT 'gold';
ALTER TABLE cdp.events DROP COLUMN scratch;

SELECT pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
           pg_temp.track('old-1', '2026-02-02'), pg_temp.track('new-1', '2026-07-01'))));
SELECT results_eq($$SELECT message_id, event, tier FROM cdp.events
                    WHERE message_id IN ('old-1', 'new-1') ORDER BY 1$$,
                  $$VALUES ('new-1', 'E new-1', 'gold'), ('old-1', 'E old-1', 'gold')$$,
                  'events in partitions of either layout are stored with their values in place');
SELECT isnt((SELECT tableoid FROM cdp.events WHERE message_id = 'old-1'),
            (SELECT tableoid FROM cdp.events WHERE message_id = 'new-1'),
            'setup: they went to two partitions');

CREATE TABLE pg_temp.seen (message_id text, event text, tier text);
CREATE FUNCTION pg_temp.keep_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pg_temp.seen VALUES (NEW.message_id, NEW.event, NEW.tier);
    RETURN NULL;
END $$;
CREATE TRIGGER events_seen AFTER INSERT ON cdp.events FOR EACH ROW EXECUTE FUNCTION pg_temp.keep_row();
SELECT pg_temp.send(jsonb_build_object('batch', jsonb_build_array(
           pg_temp.track('old-2', '2026-02-03'), pg_temp.track('new-2', '2026-07-02'))));
SELECT results_eq($$SELECT message_id, event, tier FROM pg_temp.seen ORDER BY 1$$,
                  $$VALUES ('new-2', 'E new-2', 'gold'), ('old-2', 'E old-2', 'gold')$$,
                  'an AFTER ROW trigger reads each row in its partition''s layout');
SELECT isnt((SELECT attnum FROM pg_attribute WHERE attrelid = (SELECT tableoid FROM cdp.events WHERE message_id = 'old-2')
               AND attname = 'tier'),
            (SELECT attnum FROM pg_attribute WHERE attrelid = (SELECT tableoid FROM cdp.events WHERE message_id = 'new-2')
               AND attname = 'tier'),
            'setup: tier sits at another position in each partition');

SELECT * FROM finish();
ROLLBACK;
