-- Traits and consent reach a profile's record once per cdp.process_inbox
-- call, not once per batch: a record updated once per batch left a dead
-- version per batch that every later lookup of the profile walked.  The
-- derived columns must be exactly what writing them batch by batch gave:
-- through merges inside the call, and without the state of a message that
-- fails after its state was written (its part is rolled back and retried).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(8);

\set send_ts '2026-06-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql
SET LOCAL cdp.batch_size = 2;

\ir include/profile_stats_checks.psql
-- a message that states a plan and the marketing decision
CREATE FUNCTION pg_temp.state(anon text, plan text, marketing bool) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('anonymousId', anon, 'context', jsonb_build_object(
        'traits', jsonb_build_object('plan', plan),
        'consent', jsonb_build_object('categoryPreferences', jsonb_build_object('Marketing', marketing))))
$$;

-- the profile exists (its record is made), then six messages, three batches of two, one call
DO $$ BEGIN
    PERFORM pg_temp.send('k-0', pg_temp.state('k1', 'free', false), '2026-06-01 07:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('k-1', pg_temp.state('k1', 'starter', true), '2026-06-01 10:00+00');
    PERFORM pg_temp.send('k-2', pg_temp.state('k1', 'pro', false), '2026-06-01 11:00+00');
    PERFORM pg_temp.send('k-3', pg_temp.state('k1', 'old', true), '2026-06-01 08:00+00');
    PERFORM pg_temp.send('k-4', pg_temp.state('k1', 'enterprise', true), '2026-06-01 12:00+00');
    PERFORM pg_temp.send('k-5', pg_temp.state('k1', 'older', false), '2026-06-01 09:00+00');
    PERFORM pg_temp.send('k-6', pg_temp.state('k1', 'team', true), '2026-06-01 10:30+00');
END $$;
CREATE TEMP TABLE updates_before AS SELECT pg_temp.record_updates() AS n;
SELECT is(pg_temp.run(), 6::bigint, 'one call takes the six messages, two a batch');
SELECT is(pg_temp.record_updates() - (SELECT n FROM updates_before), 1::bigint,
          'its record is updated once for the call (its counts with its traits and consent), not once per batch');
SELECT is(pg_temp.traits('anonymous_id:k1'), '{"plan": "enterprise"}'::jsonb,
          'the latest trait wins over the batches of the call');
SELECT is(cdp.consent_of(pg_temp.pid('anonymous_id:k1')) -> 'marketing' ->> 'at', '2026-06-01T12:00:00.000000Z',
          '... and the latest decision');
SELECT is(pg_temp.state_drift(), 0::bigint, 'the derived columns equal a recompute');

-- two visitors with state in one batch, merged in the next, more state
-- after; a message a trigger on cdp.events refuses after its state was
-- written is rolled back with that state (its batch is retried without it)
\ir include/refuse_bad_events.psql
DO $$ BEGIN
    PERFORM pg_temp.send('m-1', pg_temp.state('m1', 'm1-plan', true), '2026-06-02 10:00+00');
    PERFORM pg_temp.send('m-2', pg_temp.state('m2', 'm2-plan', false) || '{"context": {"traits": {"m2": 1}}}',
                         '2026-06-02 07:00+00');
    PERFORM pg_temp.send('m-3', '{"anonymousId": "m2", "context": {"device": {"id": "md"}}}', '2026-06-02 11:00+00');
    PERFORM pg_temp.send('m-4', '{"anonymousId": "m1", "context": {"device": {"id": "md"}}}', '2026-06-02 11:01+00');
    PERFORM pg_temp.send('m-5', pg_temp.state('m1', 'bad-plan', false) || '{"event": "Bad"}', '2026-06-02 23:00+00');
    PERFORM pg_temp.send('m-6', pg_temp.state('m2', 'last-plan', true), '2026-06-02 12:00+00');
END $$;
SELECT is(pg_temp.run(), 6::bigint, 'one call takes the six messages');
SELECT is(pg_temp.traits('anonymous_id:m1'), '{"m2": 1, "plan": "last-plan"}'::jsonb,
          'the merged profile holds both visitors'' traits, the latest plan, nothing of the refused message');
SELECT is(pg_temp.state_drift(), 0::bigint, 'every derived column equals a recompute');

SELECT * FROM finish();
ROLLBACK;
