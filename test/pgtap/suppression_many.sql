-- Past 65 536 suppressed identifiers a backend stops keeping them in memory
-- and looks a batch's hashes up by index: a forgotten person's message is
-- still dropped, someone else's stored, on both sides of the boundary.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql

DO $$ BEGIN
    PERFORM pg_temp.send('n1', '{"userId": "many-user"}');
    PERFORM pg_temp.run();
    PERFORM cdp.forget('user_id:many-user');
    -- 65 535 more: 65 536 in all, the most a backend keeps in memory
    INSERT INTO cdp.suppressions (hash)
    SELECT sha256(convert_to('filler ' || g, 'UTF8')) FROM generate_series(1, 65535) g;
    PERFORM pg_temp.send('n2', '{"userId": "many-user"}');
    PERFORM pg_temp.send('n3', '{"userId": "many-keep"}');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT array_agg(message_id ORDER BY message_id) FROM cdp.events), '{n3}',
          'at 65 536 suppressions (in memory): the person''s message is dropped, the other stored');

DO $$ BEGIN
    INSERT INTO cdp.suppressions (hash) VALUES (sha256(convert_to('filler 65536', 'UTF8')));
    PERFORM pg_temp.send('n4', '{"userId": "many-user"}');
    PERFORM pg_temp.send('n5', '{"userId": "many-keep"}');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT array_agg(message_id ORDER BY message_id) FROM cdp.events), '{n3,n5}',
          'at 65 537 (looked up by index): the same');
SELECT is((SELECT dropped FROM cdp.suppressions
            WHERE hash = (SELECT cdp.suppression_hash(salt, 'user_id:many-user') FROM cdp.suppression_salt)),
          2::bigint, 'both drops are counted on the person''s hash');
SELECT ok(cdp.identifier_suppressed('user_id:many-user') AND NOT cdp.identifier_suppressed('user_id:many-keep'),
          'identifier_suppressed answers by index too');

SELECT * FROM finish();
ROLLBACK;
