-- Computed trait states are gathered over a whole process_inbox call and
-- written when it ends: exact when profiles merge in a later batch of the
-- same call (the merge derives values from the states written so far; the
-- end of the call derives them again from every state), and a chunk that
-- rolls back after counting its events takes their counts with it.  The
-- rows of many new people go in a chunk at a time, every one of them.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(8);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/computed_oracle.psql
TRUNCATE cdp.trait_states;
DELETE FROM cdp.computed_traits;

SELECT cdp.define_computed_trait('n', 'count', 'T');
SELECT cdp.define_computed_trait('spent', 'sum', 'T', 'x');
SELECT cdp.define_computed_trait('plans', 'unique_list', 'T', 'plan');
SELECT cdp.define_computed_trait('n_3d', 'count', 'T', time_window => '3 days');

-- two messages a batch: the device's and the user's events in early
-- batches, the identify that merges them in a later one, more after it
SET LOCAL cdp.batch_size = 2;
SELECT pg_temp.send('d1', '{"event": "T", "anonymousId": "d3", "properties": {"x": 1, "plan": "free"}}', now() - interval '1 hour');
SELECT pg_temp.send('d2', '{"event": "T", "anonymousId": "d3", "properties": {"x": 2}}', now() - interval '2 hours');
SELECT pg_temp.send('u1', '{"event": "T", "userId": "u3", "properties": {"x": 10, "plan": "pro"}}', now() - interval '4 days');
SELECT pg_temp.send('u2', '{"event": "T", "userId": "u3", "properties": {"x": 20}}', now() - interval '1 minute');
SELECT pg_temp.send('o1', '{"event": "T", "userId": "u4", "properties": {"x": 5}}', now() - interval '1 minute');
SELECT pg_temp.send('id', '{"type": "identify", "userId": "u3", "anonymousId": "d3"}', now() - interval '1 minute');
SELECT pg_temp.send('d3', '{"event": "T", "anonymousId": "d3", "properties": {"x": 100, "plan": "team"}}', now() - interval '1 minute');
SELECT pg_temp.send('u3', '{"event": "T", "userId": "u3", "properties": {"x": 200}}', now() - interval '1 minute');
SELECT pg_temp.send('o2', '{"event": "T", "userId": "u4", "properties": {"x": 6}}', now() - interval '1 minute');
SELECT is(pg_temp.run(), 9::bigint, 'one call, five batches');
SELECT ok((SELECT count(*) FROM cdp.merges) = 1, 'the device merged into the user in a later batch');
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:u3')),
          '{"n": 6, "spent": 333, "plans": ["free", "pro", "team"], "n_3d": 5}'::jsonb,
          'the merged profile counts every event of both, before and after the merge');
SELECT is((SELECT count(*) FROM pg_temp.oracle_diff()), 0::bigint, 'every value equals the oracle');
RESET cdp.batch_size;

-- a chunk that fails after counting its events (its dead letter cannot be
-- written, once) is tried again in halves: every event counts once (the
-- person is known already, so both tries count for the same profile)
SELECT pg_temp.send('r0', '{"event": "T", "userId": "u5", "properties": {"x": 8}}');
SELECT pg_temp.run();
CREATE SEQUENCE pg_temp.dead_letter_writes;
CREATE FUNCTION pg_temp.fail_first_dead_letter() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('pg_temp.dead_letter_writes') = 1 THEN
        RAISE EXCEPTION 'dead letter refused once' USING ERRCODE = 'data_exception';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER fail_first BEFORE INSERT ON cdp.dead_letters
    FOR EACH ROW EXECUTE FUNCTION pg_temp.fail_first_dead_letter();
SELECT pg_temp.send('r1', '{"event": "T", "userId": "u5", "properties": {"x": 1}}');
SELECT pg_temp.send('r2', '{"event": "T", "userId": "u5", "properties": {"x": 2}}');
SELECT cdp.ingest('{"type": "nonsense", "messageId": "bad", "userId": "u5"}'::jsonb);
SELECT pg_temp.send('r3', '{"event": "T", "userId": "u5", "properties": {"x": 4}}');
SELECT pg_temp.run();
SELECT is((SELECT count(*) FROM cdp.dead_letters), 1::bigint, 'the bad message is dead-lettered once');
SELECT is(cdp.computed_traits_of(pg_temp.pid('user_id:u5')) - 'plans',
          '{"n": 4, "spent": 15, "n_3d": 0}'::jsonb, 'the chunk that rolled back counted nothing');
SELECT is((SELECT count(*) FROM cdp.trait_states s
            WHERE NOT EXISTS (SELECT FROM cdp.profile_records r WHERE r.profile_id = s.profile_id)),
          0::bigint, 'no state of a profile that does not exist');
DROP TRIGGER fail_first ON cdp.dead_letters;

-- 2500 new people in one call: their rows go in by the thousand
RESET cdp.batch_size;
SELECT count(cdp.ingest(jsonb_build_object('type', 'track', 'event', 'T', 'messageId', 'many' || i,
                                           'userId', 'many' || i, 'timestamp', now() - interval '1 minute',
                                           'properties', jsonb_build_object('x', i))))
  FROM generate_series(1, 2500) AS i;
SELECT pg_temp.run();
SELECT results_eq($$SELECT count(*), sum((s.traits->>'spent')::numeric), sum((s.traits->>'n')::bigint)
                     FROM cdp.trait_states s
                    WHERE s.profile_id IN (SELECT cdp.resolve(('user_id:many' || i)::cdp.identifier)
                                             FROM generate_series(1, 2500) AS i)$$,
                  $$VALUES (2500::bigint, 3126250::numeric, 2500::numeric)$$,
                  'every new person has a row, with the values of their event');

SELECT * FROM finish();
ROLLBACK;
