-- The source on an inbox row is free text (anyone with INSERT on cdp.inbox
-- sets it), so processing checks it: a row for an unknown source is one
-- dead letter `unknown_source`, for a disabled one `source_disabled`, its
-- payload verbatim and unparsed; replaying it once the source exists stores
-- it.  A loader granted INSERT (payload) only can queue under 'copy' alone.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(19);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids RESTART IDENTITY;
TRUNCATE cdp.events;
DO $$ BEGIN
    PERFORM cdp.create_source('web');
    PERFORM cdp.disable_source('web');
    PERFORM cdp.create_source('app');
END $$;

INSERT INTO cdp.inbox (payload, source) VALUES
    ('{"type":"track","userId":"u","event":"Good","messageId":"g-1"}', 'app'),
    ('{"type":"track","userId":"u","event":"Disabled","messageId":"d-1"}', 'web'),
    ('{"type":"track","userId":"u","event":"Upper","messageId":"w-1"}', 'WEB'),
    ('{"type":"track","userId":"u","event":"Empty","messageId":"e-1"}', ''),
    ('{"type":"track","userId":"u","event":"Long","messageId":"l-1"}', repeat('x', 100000)),
    ('{"batch":[{"type":"track","userId":"u","event":"B1","messageId":"b-1"},'
     '{"type":"track","userId":"u","event":"B2","messageId":"b-2"}]}', 'later'),
    ('not json at all', 'later');
INSERT INTO cdp.inbox (payload) VALUES ('{"type":"track","userId":"u","event":"Copy","messageId":"c-1"}');

SELECT is(cdp.process_inbox(), 8::bigint,
          'every inbox row is taken; a refused envelope counts as one message');
SELECT results_eq($$SELECT message_id, source FROM cdp.events ORDER BY 1$$,
                  $$VALUES ('c-1', 'copy'), ('g-1', 'app')$$,
                  'only rows of registered, enabled sources are stored (copy is the inbox''s default)');
SELECT results_eq($$SELECT left(source, 10), error_code FROM cdp.dead_letters ORDER BY id$$,
                  $$VALUES ('web', 'source_disabled'), ('WEB', 'unknown_source'), ('', 'unknown_source'),
                           ('xxxxxxxxxx', 'unknown_source'), ('later', 'unknown_source'),
                           ('later', 'unknown_source')$$,
                  'a disabled source, another case, an empty and a 100,000-character name are dead letters');
SELECT is((SELECT error_message FROM cdp.dead_letters WHERE source = 'web'), 'source "web" is disabled',
          'source_disabled names the source');
SELECT is((SELECT error_message FROM cdp.dead_letters WHERE source = 'WEB'), 'source "WEB" is not registered',
          'unknown_source names the source exactly as given (names are case-sensitive)');
SELECT is((SELECT max(length(error_message)) FROM cdp.dead_letters) < 100, true,
          'a 100,000-character name is quoted only in part');
SELECT is((SELECT length(source) FROM cdp.dead_letters WHERE error_code = 'unknown_source' AND source LIKE 'xxx%'),
          128, 'the dead letter keeps the first 128 characters of a source no name can be (what a batch holds stays bounded)');
SELECT is((SELECT payload FROM cdp.dead_letters WHERE payload LIKE '{"batch"%'),
          '{"batch":[{"type":"track","userId":"u","event":"B1","messageId":"b-1"},'
          '{"type":"track","userId":"u","event":"B2","messageId":"b-2"}]}',
          'a refused envelope is one dead letter with its payload verbatim');
SELECT is((SELECT error_code FROM cdp.dead_letters WHERE payload = 'not json at all'), 'unknown_source',
          'a refused row is not parsed: bad JSON from an unknown source is unknown_source');
SELECT is((SELECT count(*)::int FROM cdp.message_ids), 2,
          'refused rows use up no messageId');

-- the source registered, the rows replay
DO $$ BEGIN PERFORM cdp.create_source('later'); END $$;
SELECT is(cdp.replay_dead_letters((SELECT array_agg(id) FROM cdp.dead_letters WHERE source = 'later'))
          + cdp.process_inbox(), 5::bigint, 'the rows of a source registered later replay');
SELECT results_eq($$SELECT message_id FROM cdp.events WHERE source = 'later' ORDER BY 1$$,
                  $$VALUES ('b-1'), ('b-2')$$, 'the replayed envelope''s messages are stored');
SELECT is((SELECT error_code FROM cdp.dead_letters WHERE payload = 'not json at all'), 'invalid_json',
          'the replayed bad row is now judged on its content');

-- sources are looked up once per batch and name, not once per row
CREATE TEMP TABLE lookups AS
SELECT seq_scan + coalesce(idx_scan, 0) AS before FROM pg_stat_xact_user_tables
 WHERE relid = 'cdp.source_keys'::regclass;
INSERT INTO cdp.inbox (payload, source)
SELECT format('{"type":"track","userId":"u","event":"Many","messageId":"m-%s"}', g),
       CASE WHEN g % 3 = 0 THEN 'app' WHEN g % 3 = 1 THEN 'copy' ELSE 'nobody' END
  FROM generate_series(1, 300) g;
SELECT is(cdp.process_inbox(), 300::bigint, '300 rows from three sources are processed in one batch');
SELECT cmp_ok((SELECT seq_scan + coalesce(idx_scan, 0) - before FROM pg_stat_xact_user_tables, lookups
                WHERE relid = 'cdp.source_keys'::regclass), '<=', 3::bigint,
              'with at most one lookup per source');

-- the built-in copy source can be disabled like any other
DO $$ BEGIN PERFORM cdp.disable_source('copy'); END $$;
INSERT INTO cdp.inbox (payload) VALUES ('{"type":"track","userId":"u","event":"Copy","messageId":"c-2"}');
SELECT cdp.process_inbox();
SELECT is((SELECT error_code FROM cdp.dead_letters WHERE payload LIKE '%c-2%'), 'source_disabled',
          'rows queued for the disabled built-in copy source are dead letters');

-- a loader granted INSERT (payload) queues under 'copy' and cannot name a source
CREATE ROLE regress_cdp_loader;
GRANT USAGE ON SCHEMA cdp TO regress_cdp_loader;
GRANT INSERT (payload) ON cdp.inbox TO regress_cdp_loader;
SET LOCAL ROLE regress_cdp_loader;
SELECT lives_ok($$INSERT INTO cdp.inbox (payload) VALUES ('{"type":"track","userId":"u","event":"L"}')$$,
                'a loader with INSERT (payload) queues a payload');
SELECT throws_ok($$INSERT INTO cdp.inbox (payload, source) VALUES ('{}', 'app')$$, '42501', NULL,
                 'it cannot name a source');
SELECT throws_ok($$INSERT INTO cdp.inbox (payload, received_at) VALUES ('{}', now() - interval '1 year')$$,
                 '42501', NULL, 'nor backdate its receipt');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
