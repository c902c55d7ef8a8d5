-- The per-identifier stores (cdp.identifier_traits, cdp.identifier_consent)
-- are written once per cdp.process_inbox call, not once per batch: SDKs
-- repeat traits and consent on every message, and a row rewritten batch
-- after batch left a dead version per batch that the rest of the call (one
-- transaction) stepped over.  The stores must end as writing them batch by
-- batch made them, and the history must hold each change of decision, in
-- time order, whatever order the messages arrived in over the call.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(9);

\set send_ts '2026-06-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql
SET LOCAL cdp.batch_size = 1;

CREATE FUNCTION pg_temp.writes(rel regclass) RETURNS bigint LANGUAGE sql AS $$
    SELECT n_tup_ins + n_tup_upd FROM pg_stat_xact_user_tables WHERE relid = rel
$$;
-- a message that states a plan and the marketing decision
CREATE FUNCTION pg_temp.state(anon text, plan text, marketing bool) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('anonymousId', anon, 'context', jsonb_build_object(
        'traits', jsonb_build_object('plan', plan),
        'consent', jsonb_build_object('categoryPreferences', jsonb_build_object('Marketing', marketing))))
$$;
CREATE FUNCTION pg_temp.history(who text) RETURNS text[] LANGUAGE sql AS $$
    SELECT array_agg(message_id || ':' || granted ORDER BY at) FROM cdp.consent_log
     WHERE identifier = who::cdp.identifier AND purpose = 'marketing'
$$;

-- w1 has rows from an earlier call; then w1 and the new w2 send five and
-- four messages, one a batch, in one call (w1's out of time order)
DO $$ BEGIN
    PERFORM pg_temp.send('w-0', pg_temp.state('w1', 'free', false), '2026-06-01 07:00+00');
    PERFORM pg_temp.run();
END $$;
CREATE TEMP TABLE before AS
    SELECT pg_temp.writes('cdp.identifier_traits') AS t, pg_temp.writes('cdp.identifier_consent') AS c;
DO $$ BEGIN
    PERFORM pg_temp.send('w-1', pg_temp.state('w1', 'starter', true), '2026-06-01 10:00+00');
    PERFORM pg_temp.send('v-1', pg_temp.state('w2', 'a', true), '2026-06-01 10:00+00');
    PERFORM pg_temp.send('w-2', pg_temp.state('w1', 'pro', false), '2026-06-01 11:00+00');
    PERFORM pg_temp.send('v-2', pg_temp.state('w2', 'b', true), '2026-06-01 10:10+00');
    PERFORM pg_temp.send('w-3', pg_temp.state('w1', 'old', true), '2026-06-01 08:00+00');
    PERFORM pg_temp.send('v-3', pg_temp.state('w2', 'c', false), '2026-06-01 10:20+00');
    PERFORM pg_temp.send('w-4', pg_temp.state('w1', 'enterprise', true), '2026-06-01 12:00+00');
    PERFORM pg_temp.send('v-4', pg_temp.state('w2', 'd', true), '2026-06-01 10:30+00');
    PERFORM pg_temp.send('w-5', pg_temp.state('w1', 'team', true), '2026-06-01 12:30+00');
END $$;
SELECT is(pg_temp.run(), 9::bigint, 'one call takes the nine messages, one a batch');
SELECT is(pg_temp.writes('cdp.identifier_traits') - (SELECT t FROM before), 2::bigint,
          'each identifier''s traits row is written once for the call (one update, one insert)');
SELECT is(pg_temp.writes('cdp.identifier_consent') - (SELECT c FROM before), 2::bigint,
          '... and its consent row');
SELECT is((SELECT traits FROM cdp.identifier_traits WHERE identifier = 'anonymous_id:w1'),
          '{"plan": "team"}'::jsonb, 'the latest trait of the call wins');
SELECT is((SELECT trait_times ->> 'plan' FROM cdp.identifier_traits WHERE identifier = 'anonymous_id:w2'),
          '2026-06-01T10:30:00.000000Z', '... with its time, for a new identifier too');
SELECT is((SELECT consent -> 'marketing' ->> 'message_id' FROM cdp.identifier_consent
            WHERE identifier = 'anonymous_id:w1'), 'w-5', 'the latest decision of the call wins');
SELECT is(pg_temp.history('anonymous_id:w1'), ARRAY['w-0:false', 'w-3:true', 'w-2:false', 'w-4:true'],
          'the history holds each change in time order: the earliest message of a change (w-3, not w-1), no repeat');
SELECT is(pg_temp.history('anonymous_id:w2'), ARRAY['v-1:true', 'v-3:false', 'v-4:true'],
          '... from the first decision of an identifier on');
SELECT is(pg_temp.state_drift(), 0::bigint, 'the derived columns equal a recompute');

SELECT * FROM finish();
ROLLBACK;
