-- At the end of a cdp.process_inbox call the profile records take their
-- event counts and seen times in the statement that writes their traits
-- and consent: a profile made in one batch and seen again in a later one
-- is rewritten once for the call, not once for its counts and again for
-- its state (a new version of a grown row each time, a new index entry
-- too when it does not fit on its page).  Profiles with only counts or
-- only state take theirs, through a merge inside the call too.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(11);

\set send_ts '2026-06-01 10:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql
SET LOCAL cdp.batch_size = 2;

CREATE FUNCTION pg_temp.state_msg(mid text, body jsonb, plan text, ads bool, ts timestamptz)
RETURNS void LANGUAGE sql AS $$
    SELECT pg_temp.send(mid, body || jsonb_build_object('context', coalesce(body -> 'context', '{}') ||
        jsonb_build_object(
            'traits', jsonb_build_object('plan', plan),
            'consent', jsonb_build_object('categoryPreferences',
                                          jsonb_build_object('Analytics', true, 'Advertising', ads)))), ts)
$$;
\ir include/profile_stats_checks.psql

-- two visitors made in the first batch, each seen again with its state in
-- the next two: three batches of two, one call
DO $$ BEGIN
    PERFORM pg_temp.state_msg('o-1', '{"anonymousId": "o1"}', 'free', true, '2026-06-01 10:00+00');
    PERFORM pg_temp.state_msg('o-2', '{"anonymousId": "o2"}', 'free', true, '2026-06-01 09:00+00');
    PERFORM pg_temp.state_msg('o-3', '{"anonymousId": "o1"}', 'pro', false, '2026-06-01 11:00+00');
    PERFORM pg_temp.state_msg('o-4', '{"anonymousId": "o2"}', 'pro', true, '2026-06-01 08:00+00');
    PERFORM pg_temp.state_msg('o-5', '{"anonymousId": "o1"}', 'team', true, '2026-06-01 12:00+00');
    PERFORM pg_temp.state_msg('o-6', '{"anonymousId": "o2"}', 'team', false, '2026-06-01 07:00+00');
END $$;
CREATE TEMP TABLE updates_before AS SELECT pg_temp.record_updates() AS n;
SELECT is(pg_temp.run(), 6::bigint, 'one call takes the six messages, two a batch');
SELECT is(pg_temp.record_updates() - (SELECT n FROM updates_before), 2::bigint,
          'each of the two records is updated once for the call: its counts with its state');
SELECT results_eq(
    $$SELECT event_count, first_seen, last_seen, traits ->> 'plan' FROM cdp.profile_records
       WHERE profile_id = pg_temp.pid('anonymous_id:o1')$$,
    $$VALUES (3::bigint, '2026-06-01 10:00+00'::timestamptz, '2026-06-01 12:00+00'::timestamptz, 'team')$$,
    'a profile counts the events of every batch, and shows its latest traits');
SELECT results_eq(
    $$SELECT event_count, first_seen, last_seen, traits ->> 'plan' FROM cdp.profile_records
       WHERE profile_id = pg_temp.pid('anonymous_id:o2')$$,
    $$VALUES (3::bigint, '2026-06-01 07:00+00'::timestamptz, '2026-06-01 09:00+00'::timestamptz, 'free')$$,
    'so does one whose later messages are older');
SELECT is(pg_temp.granted('anonymous_id:o1', 'advertising'), true, 'its latest decision wins');

-- counts without state (o1 again, no traits), state of a profile made in
-- the last batch (no counts to add), and two profiles merged in a later
-- batch than the one that counted them
DO $$ BEGIN
    PERFORM pg_temp.state_msg('p-1', '{"anonymousId": "p1"}', 'free', true, '2026-06-02 10:00+00');
    PERFORM pg_temp.state_msg('p-2', '{"anonymousId": "p2"}', 'pro', false, '2026-06-02 07:00+00');
    PERFORM pg_temp.send('p-3', '{"anonymousId": "o1"}', '2026-06-02 13:00+00');
    PERFORM pg_temp.send('p-4', '{"anonymousId": "o1"}', '2026-06-02 14:00+00');
    PERFORM pg_temp.state_msg('p-5', '{"anonymousId": "p2", "context": {"device": {"id": "pd"}}}', 'team', true,
                              '2026-06-02 11:00+00');
    PERFORM pg_temp.state_msg('p-6', '{"anonymousId": "p1", "context": {"device": {"id": "pd"}}}', 'team', false,
                              '2026-06-02 11:01+00');
    PERFORM pg_temp.state_msg('p-7', '{"anonymousId": "p3"}', 'free', true, '2026-06-02 12:00+00');
END $$;
SELECT is(pg_temp.run(), 7::bigint, 'a second call takes the seven messages');
SELECT results_eq(
    $$SELECT event_count, last_seen, traits ->> 'plan' FROM cdp.profile_records
       WHERE profile_id = pg_temp.pid('anonymous_id:o1')$$,
    $$VALUES (5::bigint, '2026-06-02 14:00+00'::timestamptz, 'team')$$,
    'a profile with counts and no state takes its counts, its traits unchanged');
SELECT results_eq(
    $$SELECT event_count, first_seen, last_seen, traits ->> 'plan' FROM cdp.profile_records
       WHERE profile_id = pg_temp.pid('anonymous_id:p1')$$,
    $$VALUES (4::bigint, '2026-06-02 07:00+00'::timestamptz, '2026-06-02 11:01+00'::timestamptz, 'team')$$,
    'the merged profile holds the events and the latest traits of both visitors');
SELECT is(pg_temp.traits('anonymous_id:p3'), '{"plan": "free"}'::jsonb,
          'a profile made in the last batch shows its traits');
SELECT is_empty('SELECT * FROM pg_temp.miscounted()',
                'every profile counts exactly the events that resolve to it');
SELECT is(pg_temp.state_drift(), 0::bigint, 'every profile is what a recompute makes it');

SELECT * FROM finish();
ROLLBACK;
