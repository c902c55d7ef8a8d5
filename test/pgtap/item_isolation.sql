-- One bad item does not sink its envelope: an item whose content raises an
-- error deep in processing is dead-lettered alone, with its own payload, and
-- its siblings are stored; an integrity violation on pg_cdp's own tables is
-- a bug or a race, raised and never dead-lettered.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(19);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;

CREATE FUNCTION pg_temp.item(id text, extra text DEFAULT '') RETURNS text LANGUAGE sql AS $$
    SELECT format('{"type":"track","userId":"u","event":"e","messageId":"%s","timestamp":"2026-01-05T10:00:00Z"%s}',
                  id, extra);
$$;

-- a number beyond numeric's range in one item of an envelope
INSERT INTO cdp.inbox (payload) VALUES
    ('{"batch":[' || pg_temp.item('good-1') || ',' ||
     pg_temp.item('huge', ',"properties":{"x":1e999999}') || ',' ||
     pg_temp.item('good-2') || '],"context":{"app":"a"}}');
SELECT is(cdp.process_inbox(), 3::bigint, 'every item of the envelope is counted, the bad one too');
SELECT results_eq($$SELECT message_id FROM cdp.events ORDER BY message_id$$,
                  $$VALUES ('good-1'), ('good-2')$$,
                  'the good siblings of an item that raises an error are stored');
SELECT results_eq($$SELECT error_code, error_message FROM cdp.dead_letters$$,
                  $$VALUES ('processing_error', '22003: value overflows numeric format')$$,
                  'the bad item alone is a processing_error dead letter');
SELECT is((SELECT payload FROM cdp.dead_letters), pg_temp.item('huge', ',"properties":{"x":1e999999}'),
          'the dead letter keeps the item''s own payload, not the envelope');
SELECT is((SELECT context FROM cdp.events WHERE message_id = 'good-2'), '{"app": "a"}'::jsonb,
          'siblings after the bad item still get the envelope''s context');

-- many bad items among many good ones, in one chunk and across single rows
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;
INSERT INTO cdp.inbox (payload)
SELECT '{"batch":[' || string_agg(CASE WHEN i % 7 = 0
                                       THEN pg_temp.item('bad-' || i, ',"properties":{"x":-1e999999}')
                                       ELSE pg_temp.item('ok-' || i) END, ',' ORDER BY i) || ']}'
  FROM generate_series(1, 50) i;
INSERT INTO cdp.inbox (payload)
SELECT CASE WHEN i % 3 = 0 THEN pg_temp.item('row-bad-' || i, ',"properties":{"x":1e999999}')
            ELSE pg_temp.item('row-ok-' || i) END
  FROM generate_series(1, 9) i;
SELECT is(cdp.process_inbox(), 59::bigint, 'every message is counted once');
SELECT is((SELECT count(*)::int FROM cdp.events), 49, 'every good message is stored');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters WHERE error_code = 'processing_error'), 10,
          'every bad message is its own dead letter');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters WHERE payload LIKE '%"messageId":"%bad-%'), 10,
          'each with its own payload');

-- a \u0000 or a lone surrogate in one item: that item alone
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;
INSERT INTO cdp.inbox (payload) VALUES
    ('{"batch":[' || pg_temp.item('nul', ',"properties":{"x":"a\u0000b"}') || ',' ||
     pg_temp.item('surrogate', ',"properties":{"x":"\ud800"}') || ',' || pg_temp.item('fine') || ']}');
SELECT is(cdp.process_inbox(), 3::bigint, 'three items taken');
SELECT results_eq($$SELECT message_id FROM cdp.events$$, $$VALUES ('fine')$$,
                  'the sibling of items that jsonb cannot hold is stored');
SELECT results_eq($$SELECT error_code FROM cdp.dead_letters ORDER BY id$$,
                  $$VALUES ('null_character'), ('invalid_json')$$,
                  'each such item is its own dead letter, with its own code');

-- a \u0000 in the envelope's context concerns every item: the row is one dead letter
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
INSERT INTO cdp.inbox (payload) VALUES
    ('{"batch":[' || pg_temp.item('c-1') || '],"context":{"x":"\u0000"}}');
SELECT is(cdp.process_inbox(), 1::bigint, 'an envelope with an unusable context is one message');
SELECT results_eq($$SELECT error_code FROM cdp.dead_letters$$, $$VALUES ('null_character')$$,
                  'and one dead letter');

-- an integrity violation on pg_cdp's own tables is raised, never dead-lettered
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;
CREATE FUNCTION pg_temp.same_identity_first() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- another session's insert of the same identifier, as a race would bring
    IF pg_trigger_depth() = 1 THEN
        INSERT INTO cdp.identities VALUES (NEW.*);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER race BEFORE INSERT ON cdp.identities
    FOR EACH ROW EXECUTE FUNCTION pg_temp.same_identity_first();
SELECT is(cdp.ingest(replace(pg_temp.item('race-1'), '"userId":"u"', '"userId":"new-user"')::jsonb), 1::bigint,
          'a message with a new identifier is queued');
SELECT throws_ok($$SELECT cdp.process_inbox()$$, '23505', NULL,
                 'a unique violation on cdp.identities is raised by process_inbox');
SELECT is((SELECT count(*)::int FROM cdp.dead_letters), 0, 'and not dead-lettered');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 1, 'the message stays queued');
DROP TRIGGER race ON cdp.identities;

ALTER TABLE cdp.message_ids ADD CONSTRAINT no_new_keys CHECK (seen_at < '2000-01-01') NOT VALID;
SELECT throws_ok($$SELECT cdp.process_inbox()$$, '23514', NULL,
                 'a check violation on cdp.message_ids is raised too');
ALTER TABLE cdp.message_ids DROP CONSTRAINT no_new_keys;

SELECT * FROM finish();
ROLLBACK;
