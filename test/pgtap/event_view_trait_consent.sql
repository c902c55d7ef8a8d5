-- An event view shows the traits a message carried (traits, context.traits)
-- only where each declared trait's purpose is granted, as profile views do:
-- a person who never granted marketing has no email in any view.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(6);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE SCHEMA bi;

SELECT pg_temp.send('m1', '{"type": "identify", "userId": "a", "traits": {"email": "a@x.io", "plan": "pro"}}');
SELECT pg_temp.send('m2', '{"type": "track", "userId": "a", "context": {"traits": {"email": "a@x.io", "plan": "pro"}, "ip": "1.2.3.4"}}');
SELECT pg_temp.send('m3', '{"type": "identify", "userId": "b", "traits": {"email": "b@x.io", "plan": "free"}}');
SELECT pg_temp.send('m4', '{"type": "track", "userId": "b", "context": {"traits": "odd"}}');
SELECT pg_temp.run();
UPDATE cdp.profile_records SET consent = '{"marketing": {"granted": true}}' WHERE profile_id = pg_temp.pid('user_id:b');
SELECT cdp.define_trait('email', 'text', 'marketing');
SELECT cdp.define_trait('plan', 'text');
SELECT cdp.create_event_view('bi.events', 'analytics');

SELECT results_eq($$SELECT message_id, traits, context->'traits' FROM bi.events WHERE user_id = 'a' ORDER BY message_id$$,
                  $$VALUES ('m1'::text, '{"plan": "pro"}'::jsonb, NULL::jsonb), ('m2', NULL, '{"plan": "pro"}')$$,
                  'a marketing trait is withheld from traits and context.traits of a person without marketing consent');
SELECT is((SELECT context->>'ip' FROM bi.events WHERE message_id = 'm2'), '1.2.3.4', 'the rest of the context stays');
SELECT results_eq($$SELECT message_id, traits, context->'traits' FROM bi.events WHERE user_id = 'b' ORDER BY message_id$$,
                  $$VALUES ('m3'::text, '{"email": "b@x.io", "plan": "free"}'::jsonb, NULL::jsonb), ('m4', NULL, '"odd"')$$,
                  'a person who granted it sees it; traits that are no object pass unchanged');

-- a trait declared later, or whose purpose changes, is withheld at once
SELECT cdp.define_trait('plan', 'text', 'advertising');
SELECT is((SELECT traits FROM bi.events WHERE message_id = 'm3'), '{"email": "b@x.io"}'::jsonb,
          'a trait whose purpose changed is withheld from then on');
SELECT is((SELECT context->'traits' FROM bi.events WHERE message_id = 'm2'), '{}'::jsonb, '... in context.traits too');
SELECT is(cdp.create_event_view('bi.marketing_events', 'marketing')::text, 'bi.marketing_events',
          'an event view of another purpose is made');
SELECT * FROM finish();
ROLLBACK;
