-- A message of the person can carry a value that is no identifier (an email
-- with a control character): its violation names no identifier but keeps
-- the value as sent in its detail.  cdp.forget erases it (found through the
-- person's event) and export_subject lists it; other people's stay.  A split
-- violation names the person in its detail when their identifier is the
-- anchor another one was split apart from: erased too.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(9);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql

DO $$ BEGIN
    PERFORM pg_temp.send('v1', '{"type": "identify", "userId": "vio-user",
        "traits": {"email": "Vio@Example.com\u0001"}}');
    -- someone else's message with the same kind of value
    PERFORM pg_temp.send('v2', '{"userId": "vio-keep", "context": {"traits": {"email": "Keep@Example.com\u0002"}}}');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*) FROM cdp.identity_violations WHERE identifier IS NULL), 2::bigint,
          'setup: two violations without an identifier');
SELECT is(jsonb_array_length(cdp.export_subject('user_id:vio-user') -> 'identity_violations'), 1,
          'export_subject lists the violation of the person''s message');

SELECT is((cdp.forget('user_id:vio-user') ->> 'identity_violations')::int, 1,
          'forget counts the violation of the person''s message');
SELECT is_empty($$SELECT * FROM pg_temp.find_values(ARRAY['vio@example.com', 'vio-user'])$$,
                'no trace of the value that was no identifier');
SELECT is((SELECT count(*) FROM cdp.identity_violations WHERE detail LIKE 'email:Keep@%'), 1::bigint,
          'the violation of someone else''s message stays');
SELECT is((SELECT count(*) FROM cdp.events WHERE user_id = 'vio-keep'), 1::bigint,
          'and so does their event');

DO $$ BEGIN
    PERFORM pg_temp.send('s1', '{"userId": "anchor-user", "anonymousId": "split-anon"}');
    PERFORM pg_temp.run();
    PERFORM cdp.split_profile(pg_temp.pid('user_id:anchor-user'), 'anonymous_id:split-anon');
    PERFORM pg_temp.send('s2', '{"userId": "anchor-user", "anonymousId": "split-anon"}');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*) FROM cdp.identity_violations
            WHERE rule = 'split' AND detail LIKE '%user_id:anchor-user%'
              AND identifier IS DISTINCT FROM 'user_id:anchor-user'), 1::bigint,
          'setup: a split violation names the anchor in its detail only');
SELECT is((cdp.forget('user_id:anchor-user') ->> 'identity_violations')::int, 1, 'forget counts the split violation');
SELECT is_empty($$SELECT * FROM pg_temp.find_values(ARRAY['anchor-user'])$$,
                'the split violation naming the anchor is erased');

SELECT * FROM finish();
ROLLBACK;
