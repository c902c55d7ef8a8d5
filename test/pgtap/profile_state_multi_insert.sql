-- The traits and consent of identifiers new to the state tables go in with
-- one multi-insert per table (cdp.identifier_traits, cdp.identifier_consent,
-- cdp.consent_log) and then their index entries, as COPY writes: a WAL
-- record per page instead of per row, and no statement.  Their rows are
-- what the statement writes: the maps as gathered, every change of decision
-- in the history.  Identifiers with stored state keep the statement (their
-- rows are merged, a first decision like the stored one is no history), and
-- a trigger users put on one of the tables still fires.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
CREATE EXTENSION IF NOT EXISTS pg_walinspect;
SELECT plan(17);

\set send_ts '2026-06-01 10:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql

\ir include/row_writes.psql
CREATE FUNCTION pg_temp.state_msg(mid text, anon text, plan text, ads bool, ts timestamptz)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_temp.send(mid, jsonb_build_object('anonymousId', anon, 'context', jsonb_build_object(
        'traits', jsonb_build_object('plan', plan, 'company', jsonb_build_object('name', 'C-' || anon)),
        'consent', jsonb_build_object('categoryPreferences',
                                      jsonb_build_object('Analytics', true, 'Advertising', ads)))), ts)
$$;

-- a decision recorded before any message: that identifier has stored state
SELECT cdp.set_consent('anonymous_id:mi-stored', 'advertising', true, '2026-06-01 09:00:00+00');
DO $$ BEGIN
    FOR v IN 1..3 LOOP
        PERFORM pg_temp.state_msg('mi-' || v || '-1', 'mi-' || v, 'free', true, '2026-06-01 10:00:00+00');
        PERFORM pg_temp.state_msg('mi-' || v || '-2', 'mi-' || v, 'pro', false, '2026-06-01 10:01:00+00');
        PERFORM pg_temp.state_msg('mi-' || v || '-3', 'mi-' || v, 'pro', true, '2026-06-01 10:02:00+00');
    END LOOP;
    PERFORM pg_temp.state_msg('mi-s-1', 'mi-stored', 'free', true, '2026-06-01 10:00:00+00');
    PERFORM pg_temp.state_msg('mi-s-2', 'mi-stored', 'pro', false, '2026-06-01 10:01:00+00');
END $$;
CREATE TEMP TABLE start AS SELECT pg_current_wal_insert_lsn() AS lsn;

SELECT is(pg_temp.run(), 11::bigint, 'the call takes the eleven messages');
SELECT pg_switch_wal() IS NOT NULL AS flushed \gset
SELECT is(pg_temp.records((SELECT lsn FROM start), 'cdp.identifier_consent', 'Heap', 'INSERT'), 0::bigint,
          'no row of cdp.identifier_consent is inserted alone');
SELECT is(pg_temp.records((SELECT lsn FROM start), 'cdp.identifier_traits', 'Heap', 'INSERT'), 1::bigint,
          'one row of cdp.identifier_traits goes in by the statement: the stored identifier''s');
SELECT cmp_ok(pg_temp.records((SELECT lsn FROM start), t, 'Heap2', 'MULTI_INSERT'), '>=', 1::bigint,
              format('the rows of %s are inserted together', t))
  FROM unnest('{cdp.identifier_traits, cdp.identifier_consent, cdp.consent_log}'::regclass[]) AS t;
SELECT is(pg_temp.records((SELECT lsn FROM start), 'cdp.consent_log', 'Heap', 'INSERT'), 2::bigint,
          'two history rows go in by the statement: the stored identifier''s changes');

SELECT is((SELECT traits FROM cdp.identifier_traits WHERE identifier = 'anonymous_id:mi-2'),
          '{"plan": "pro", "company": {"name": "C-mi-2"}}'::jsonb, 'a new identifier''s latest traits');
SELECT is((SELECT trait_times FROM cdp.identifier_traits WHERE identifier = 'anonymous_id:mi-2'),
          '{"plan": "2026-06-01T10:02:00.000000Z", "company": "2026-06-01T10:02:00.000000Z"}'::jsonb,
          'and their times, as cdp.state_time writes them');
SELECT is((SELECT consent FROM cdp.identifier_consent WHERE identifier = 'anonymous_id:mi-2'),
          jsonb_build_object(
              'analytics', cdp.consent_entry(true, '2026-06-01 10:02:00+00', 'sql', 'mi-2-3'),
              'advertising', cdp.consent_entry(true, '2026-06-01 10:02:00+00', 'sql', 'mi-2-3')),
          'a new identifier''s latest decisions');
SELECT is((SELECT array_agg(purpose || ':' || granted || ':' || message_id ORDER BY purpose, at)
             FROM cdp.consent_log WHERE identifier = 'anonymous_id:mi-2'),
          '{advertising:true:mi-2-1,advertising:false:mi-2-2,advertising:true:mi-2-3,analytics:true:mi-2-1}'::text[],
          'its history: every change of decision, the repeats left out');
SELECT is((SELECT array_agg(purpose || ':' || granted || ':' || coalesce(message_id, '-') ORDER BY purpose, at)
             FROM cdp.consent_log WHERE identifier = 'anonymous_id:mi-stored'),
          '{advertising:true:-,advertising:false:mi-s-2,analytics:true:mi-s-1}'::text[],
          'a stored identifier''s history: a first decision like the stored one is no change');
SELECT is((SELECT consent -> 'advertising' ->> 'message_id' FROM cdp.identifier_consent
            WHERE identifier = 'anonymous_id:mi-stored'),
          'mi-s-2', 'its stored decision merged with the call''s');
SELECT is(pg_temp.traits('anonymous_id:mi-3'), '{"plan": "pro", "company": {"name": "C-mi-3"}}'::jsonb,
          'the profile shows the traits');
SELECT is(pg_temp.state_drift(), 0::bigint, 'every profile is what a recompute makes it');

-- a trigger users put on the history fires for each row (the statement is used then)
CREATE TRIGGER note_row AFTER INSERT ON cdp.consent_log FOR EACH ROW EXECUTE FUNCTION pg_temp.note_row();
SELECT pg_temp.state_msg('mi-t-1', 'mi-trigger', 'free', true, '2026-06-01 10:00:00+00');
SELECT pg_temp.state_msg('mi-t-2', 'mi-trigger', 'free', false, '2026-06-01 10:01:00+00');
SELECT is(pg_temp.run(), 2::bigint, 'two more messages are taken');
SELECT is((SELECT count(*) FROM pg_temp.written WHERE tab = 'consent_log'), 3::bigint,
          'a trigger on cdp.consent_log fires for each history row');

SELECT * FROM finish();
ROLLBACK;
