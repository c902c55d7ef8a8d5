-- A group call's traits describe the group (the company's email and phone),
-- not the person sending it (identity.md "Our model"): visitors who send
-- the same group call stay apart.  email and phone come from an identify
-- call's traits, or from context.traits on any type.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(9);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql

DO $$ BEGIN
    -- two visitors join the same company
    PERFORM pg_temp.send('gt-1', '{"type": "group", "anonymousId": "gt-v1", "groupId": "acme",
        "traits": {"name": "Acme", "email": "sales@acme.com", "phone": "+1 555 0100"}}');
    PERFORM pg_temp.send('gt-2', '{"type": "group", "anonymousId": "gt-v2", "groupId": "acme",
        "traits": {"name": "Acme", "email": "sales@acme.com", "phone": "+1 555 0100"}}');
    PERFORM pg_temp.send('gt-3', '{"type": "group", "userId": "gt-u3", "groupId": "acme",
        "traits": {"email": "sales@acme.com"}}');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(DISTINCT pg_temp.pid(i))::int FROM unnest(ARRAY['anonymous_id:gt-v1', 'anonymous_id:gt-v2', 'user_id:gt-u3']) i),
          3, 'three people sending one group call with the company''s email stay three profiles');
SELECT is(pg_temp.pid('email:sales@acme.com'), NULL,
          'a group''s traits.email is no identifier of anyone');
SELECT is(pg_temp.pid('phone:+15550100'), NULL,
          'a group''s traits.phone is no identifier of anyone');
SELECT is_empty($$SELECT 1 FROM cdp.identity_evidence e, unnest(e.identifiers) i
                   WHERE cdp.id_type(i) IN ('email', 'phone') AND e.message_id LIKE 'gt-%'$$,
                'no evidence row names a group''s email or phone');
SELECT is_empty($$SELECT 1 FROM cdp.merges$$, 'no merge comes of the group calls');

DO $$ BEGIN
    -- the person's own email in context.traits of a group call still counts
    PERFORM pg_temp.send('gt-4', '{"type": "group", "anonymousId": "gt-v4", "groupId": "acme",
        "traits": {"email": "sales@acme.com"}, "context": {"traits": {"email": "Ann@Acme.com"}}}');
    -- an identify call's traits are the person's
    PERFORM pg_temp.send('gt-5', '{"type": "identify", "anonymousId": "gt-v5",
        "traits": {"email": "bob@acme.com", "phone": "+1 555 0199"}}');
    -- traits at the top of a track call are not the identify traits
    PERFORM pg_temp.send('gt-6', '{"type": "track", "anonymousId": "gt-v6", "traits": {"email": "bob@acme.com"}}');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('email:ann@acme.com'), pg_temp.pid('anonymous_id:gt-v4'),
          'context.traits.email of a group call is the sender''s and is linked');
SELECT is(pg_temp.pid('email:sales@acme.com'), NULL,
          'beside it the group''s traits.email is still not linked');
SELECT is(ARRAY[pg_temp.pid('email:bob@acme.com'), pg_temp.pid('phone:+15550199')],
          ARRAY[pg_temp.pid('anonymous_id:gt-v5'), pg_temp.pid('anonymous_id:gt-v5')],
          'an identify call''s traits.email and traits.phone are linked');
SELECT isnt(pg_temp.pid('anonymous_id:gt-v6'), pg_temp.pid('anonymous_id:gt-v5'),
            'top-level traits of a track call link nothing');

SELECT * FROM finish();
ROLLBACK;
