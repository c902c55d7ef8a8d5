-- The identity evidence (README "The evidence"): every distinct pair of
-- identifiers a message carried is kept with the first message that did, so
-- split_profile and explain_link see the real graph, and what is stored
-- does not depend on how messages were batched.  explain_link returns the
-- shortest chain of links that hold, and can be cancelled.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(30);

\set send_ts '2026-05-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE FUNCTION pg_temp.ids(p bigint) RETURNS text[] LANGUAGE sql AS $$
    SELECT array_agg(i::text ORDER BY i) FROM cdp.profile_identifiers(p) i
$$;
CREATE FUNCTION pg_temp.evidence_of(mid text) RETURNS int LANGUAGE sql AS $$
    SELECT count(*)::int FROM cdp.identity_evidence WHERE message_id = mid
$$;
CREATE FUNCTION pg_temp.chain(a text, b text) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(from_id::text || '>' || to_id::text || '@' || message_id, ' ' ORDER BY step)
      FROM cdp.explain_link(a::cdp.identifier, b::cdp.identifier)
$$;

--
-- a message that joins two identifiers already in one profile is evidence
--
DO $$ BEGIN
    PERFORM pg_temp.send('ua', '{"userId": "ev-u", "anonymousId": "ev-a"}', '2026-05-01 10:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('ud', '{"userId": "ev-u", "context": {"device": {"id": "ev-d"}}}', '2026-05-01 10:01+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('ad', '{"anonymousId": "ev-a", "context": {"device": {"id": "ev-d"}}}', '2026-05-01 10:02+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('ad-again', '{"anonymousId": "ev-a", "context": {"device": {"id": "ev-d"}}}', '2026-05-01 10:03+00');
    PERFORM pg_temp.send('ua-again', '{"userId": "ev-u", "anonymousId": "ev-a"}', '2026-05-01 10:04+00');
    PERFORM pg_temp.run();
    INSERT INTO saved VALUES ('ev', pg_temp.pid('user_id:ev-u'));
END $$;
SELECT is(pg_temp.ids(pg_temp.saved('ev')), ARRAY['anonymous_id:ev-a', 'device_id:ev-d', 'user_id:ev-u'],
          'setup: three identifiers in one profile');
SELECT is(pg_temp.evidence_of('ad'), 1,
          'a message joining two identifiers of one profile for the first time is evidence');
SELECT results_eq(
    $$SELECT a::text, b::text, message_id, observed_at FROM cdp.identity_pairs ORDER BY seq$$,
    $$VALUES ('anonymous_id:ev-a', 'user_id:ev-u', 'ua', '2026-05-01 10:00+00'::timestamptz),
             ('device_id:ev-d', 'user_id:ev-u', 'ud', '2026-05-01 10:01+00'),
             ('anonymous_id:ev-a', 'device_id:ev-d', 'ad', '2026-05-01 10:02+00')$$,
    'each pair is kept once (a < b), with the first message that carried it and its time');
SELECT is(pg_temp.evidence_of('ad-again') + pg_temp.evidence_of('ua-again'), 0,
          'a message whose pairs are all known and that changes nothing adds no evidence');
SELECT is((SELECT count(*)::int FROM cdp.identity_pairs p JOIN cdp.identity_evidence e USING (seq)
            WHERE e.message_id = p.message_id), 3,
          'each pair names the evidence row of its message');
SELECT is(pg_temp.chain('anonymous_id:ev-a', 'device_id:ev-d'), 'anonymous_id:ev-a>device_id:ev-d@ad',
          'explain_link takes the direct link, not the way round through the user');

CREATE TEMP TABLE split_result AS
SELECT p FROM cdp.split_profile(pg_temp.saved('ev'), 'user_id:ev-u') p;
SELECT is(pg_temp.ids(pg_temp.saved('ev')), ARRAY['anonymous_id:ev-a', 'device_id:ev-d'],
          'split_profile keeps together what a message joined directly');
SELECT is(pg_temp.ids(pg_temp.pid('user_id:ev-u')), ARRAY['user_id:ev-u'], '... and takes keep_out out');
SELECT is((SELECT count(*)::int FROM split_result), 2, '... two profiles result');
SELECT is((cdp.rebuild_identities(dry_run => true)->>'changed')::int, 0,
          'a rebuild after the split reproduces it (dry run 0)');
SELECT is(pg_temp.chain('anonymous_id:ev-a', 'device_id:ev-d'), 'anonymous_id:ev-a>device_id:ev-d@ad',
          'explain_link after the split still finds the direct link');
SELECT is_empty($$SELECT * FROM cdp.explain_link('user_id:ev-u', 'anonymous_id:ev-a')$$,
                'explain_link across the split returns no rows');

--
-- the shortest chain: a later message is a shortcut through a long chain
--
DO $$ BEGIN
    PERFORM pg_temp.send('c1', '{"anonymousId": "ch-1", "context": {"device": {"id": "ch-d1"}}}', '2026-05-02 10:01+00');
    PERFORM pg_temp.send('c2', '{"anonymousId": "ch-2", "context": {"device": {"id": "ch-d1"}}}', '2026-05-02 10:02+00');
    PERFORM pg_temp.send('c3', '{"anonymousId": "ch-2", "context": {"device": {"id": "ch-d2"}}}', '2026-05-02 10:03+00');
    PERFORM pg_temp.send('c4', '{"anonymousId": "ch-3", "context": {"device": {"id": "ch-d2"}}}', '2026-05-02 10:04+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('cut', '{"anonymousId": "ch-3", "context": {"device": {"id": "ch-d1"}}}', '2026-05-02 10:05+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.chain('anonymous_id:ch-1', 'anonymous_id:ch-3'),
          'anonymous_id:ch-1>device_id:ch-d1@c1 device_id:ch-d1>anonymous_id:ch-3@cut',
          'explain_link returns the shortest chain, through the shortcut');
SELECT is(pg_temp.chain('anonymous_id:ch-3', 'anonymous_id:ch-1'),
          'anonymous_id:ch-3>device_id:ch-d1@cut device_id:ch-d1>anonymous_id:ch-1@c1',
          '... the other way round too');
SELECT is(pg_temp.chain('anonymous_id:ch-2', 'device_id:ch-d2'), 'anonymous_id:ch-2>device_id:ch-d2@c3',
          'two directly linked identifiers: one step');

-- a pair a split took apart is not walked, even with both ends in one profile
-- (written straight into the tables: this state takes two splits to reach)
DO $$ BEGIN
    INSERT INTO cdp.profile_records (profile_id) VALUES (-5);
    INSERT INTO cdp.identities VALUES ('cut:x', -5, '2026-05-02', 'cx'), ('cut:m', -5, '2026-05-02', 'cx'),
                                      ('cut:k', -5, '2026-05-02', 'ck');
    INSERT INTO cdp.identity_pairs VALUES ('cut:m', 'cut:x', 'cx', '2026-05-02', -3),
                                          ('cut:k', 'cut:m', 'ck', '2026-05-02', -2),
                                          ('cut:k', 'cut:x', 'ck2', '2026-05-02', -1);
    INSERT INTO cdp.identity_splits (keep_out, members, anchors) VALUES ('cut:x', '{cut:m}', '{cut:m}');
END $$;
SELECT is(pg_temp.chain('cut:x', 'cut:m'), 'cut:x>cut:k@ck2 cut:k>cut:m@ck',
          'explain_link does not walk a pair a split took apart');

--
-- whether a message leaves evidence does not depend on its batch
--
DO $$ BEGIN
    PERFORM pg_temp.send('bl-1', '{"userId": "bl-u"}', '2026-05-03 10:00+00');
    PERFORM pg_temp.send('bl-2', '{"userId": "bl-v"}', '2026-05-03 10:00+00');
    PERFORM pg_temp.run();
    -- a batch that changes nothing: the next one starts without the identity lock
    PERFORM pg_temp.send('bl-0', '{"userId": "bl-u"}', '2026-05-03 10:00+00');
    PERFORM pg_temp.run();
    -- alone in its batch: nothing else changes the graph
    PERFORM pg_temp.send('bl-alone', '{"userId": "bl-u", "anonymousId": "guest"}', '2026-05-03 10:01+00');
    PERFORM pg_temp.run();
    -- beside a message that does
    PERFORM pg_temp.send('bl-new', '{"userId": "bl-w"}', '2026-05-03 10:02+00');
    PERFORM pg_temp.send('bl-beside', '{"userId": "bl-v", "anonymousId": "guest"}', '2026-05-03 10:02+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(ARRAY[pg_temp.evidence_of('bl-alone'), pg_temp.evidence_of('bl-beside')], ARRAY[1, 1],
          'a message with a blocked value is evidence alone in its batch as beside others');
SELECT is(pg_temp.pid('anonymous_id:guest'), NULL, '... the blocked value links nothing');
DO $$ BEGIN
    DELETE FROM cdp.blocked_identifiers WHERE pattern = 'guest';
    PERFORM cdp.rebuild_identities();
END $$;
SELECT is(pg_temp.pid('anonymous_id:guest'), pg_temp.pid('user_id:bl-u'),
          'after unblocking the value, a rebuild links it from the stored evidence');
SELECT isnt(pg_temp.pid('user_id:bl-v'), pg_temp.pid('user_id:bl-u'), '... under the rules (one user_id a profile)');
DO $$ BEGIN
    INSERT INTO cdp.blocked_identifiers VALUES ('*', 'guest', false);
    PERFORM cdp.rebuild_identities();
END $$;
SELECT is(pg_temp.pid('anonymous_id:guest'), NULL, 'blocking it again and rebuilding takes it out again');

-- the same messages one at a time and in one batch store the same evidence
CREATE TEMP TABLE stored (run text, what text);
CREATE FUNCTION pg_temp.workload(batched bool) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    msgs text[] := ARRAY[
        '{"userId": "w-u", "anonymousId": "w-a"}', '{"userId": "w-u", "context": {"device": {"id": "w-d"}}}',
        '{"anonymousId": "w-a", "context": {"device": {"id": "w-d"}}}', '{"userId": "w-u", "anonymousId": "w-a"}',
        '{"userId": "w-u", "anonymousId": "undefined"}', '{"userId": "w-x", "anonymousId": "w-a"}',
        '{"userId": "w-u", "anonymousId": "w-a", "traits": {"email": "w@x.io"}}', '{"anonymousId": "w-b"}',
        '{"anonymousId": "w-b", "context": {"device": {"id": "w-d"}}}', '{"userId": "w-u", "anonymousId": "undefined"}'];
BEGIN
    TRUNCATE cdp.inbox, cdp.message_ids, cdp.events, cdp.identities, cdp.identity_evidence, cdp.identity_pairs,
             cdp.merges, cdp.identity_violations, cdp.identity_splits, cdp.profile_records;
    FOR i IN 1 .. array_length(msgs, 1) LOOP
        PERFORM pg_temp.send('w-' || i, msgs[i]::jsonb, '2026-05-04 10:00+00'::timestamptz + i * interval '1 minute');
        IF NOT batched THEN
            PERFORM pg_temp.run();
        END IF;
    END LOOP;
    PERFORM pg_temp.run();
    INSERT INTO stored SELECT CASE WHEN batched THEN 'batched' ELSE 'alone' END, 'evidence ' || message_id
      FROM cdp.identity_evidence;
    INSERT INTO stored SELECT CASE WHEN batched THEN 'batched' ELSE 'alone' END,
           'pair ' || a::text || ' ' || b::text || ' ' || message_id FROM cdp.identity_pairs;
END
$$;
DO $$ BEGIN
    PERFORM pg_temp.workload(false);
    PERFORM pg_temp.workload(true);
END $$;
SELECT cmp_ok((SELECT count(*)::int FROM stored WHERE run = 'alone'), '>', 10, 'batching: the workload stores evidence');
SELECT set_eq($$SELECT what FROM stored WHERE run = 'alone'$$, $$SELECT what FROM stored WHERE run = 'batched'$$,
              'batching: one message a batch and one batch store the same evidence rows and pairs');

--
-- a message links at most 32 identifiers (it asserts every pair of them)
--
DO $$ BEGIN
    PERFORM pg_temp.send('many', jsonb_build_object('userId', 'many-u', 'context', jsonb_build_object('externalIds',
        (SELECT jsonb_agg(jsonb_build_object('type', 'crm', 'id', 'x' || lpad(k::text, 2, '0'))) FROM generate_series(1, 40) k))));
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT cardinality(identifiers) FROM cdp.identity_evidence WHERE message_id = 'many'), 32,
          'a message with 41 identifiers: only the first 32 are used');
SELECT is((SELECT count(*)::int FROM cdp.identity_pairs WHERE message_id = 'many'), 32 * 31 / 2,
          '... every pair of them is kept');
SELECT results_eq(
    $$SELECT identifier::text, rule, detail FROM cdp.identity_violations WHERE message_id = 'many'
       AND rule = 'too_many_identifiers'$$,
    $$VALUES ('crm:x32', 'too_many_identifiers', 'the message carries 41 identifiers; only the first 32 link')$$,
    '... and the rest is a violation naming the first identifier left out');
SELECT is(pg_temp.pid('crm:x35'), NULL, '... which links nothing');
SELECT is((SELECT count(*)::int FROM cdp.events WHERE message_id = 'many'), 1, '... and the event is stored');

--
-- explain_link on a large profile: linear, and cancellable
--
DO $$ BEGIN
    INSERT INTO cdp.profile_records (profile_id) VALUES (-7);
    INSERT INTO cdp.identities
    SELECT ('big:n' || lpad(k::text, 6, '0'))::cdp.identifier, -7, '2026-05-05', 'big' FROM generate_series(0, 60000) k;
    -- a chain n0 - n1 - ... - n60000, and a shortcut n0 - n30000
    INSERT INTO cdp.identity_pairs
    SELECT ('big:n' || lpad(k::text, 6, '0'))::cdp.identifier, ('big:n' || lpad((k + 1)::text, 6, '0'))::cdp.identifier,
           'big-' || k, '2026-05-05', k FROM generate_series(0, 59999) k;
    INSERT INTO cdp.identity_pairs VALUES ('big:n000000', 'big:n030000', 'big-cut', '2026-05-05', 60000);
END $$;
SELECT is((SELECT count(*)::int FROM cdp.explain_link('big:n000000', 'big:n060000')), 30001,
          'explain_link on a profile of 60001 identifiers: the shortest chain, through the shortcut');
CREATE FUNCTION pg_temp.cancelled() RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count(*) FROM cdp.explain_link('big:n000000', 'big:n060000');
    RETURN 'finished';
EXCEPTION WHEN query_canceled THEN
    RETURN SQLSTATE;
END
$$;
SET LOCAL statement_timeout = '5ms';
SELECT is(pg_temp.cancelled(), '57014', 'statement_timeout cancels explain_link on a large profile (57014)');
SET LOCAL statement_timeout = 0;

SELECT * FROM finish();
ROLLBACK;
