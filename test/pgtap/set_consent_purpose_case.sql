-- Consent categories in messages match purposes case-insensitively
-- ("Marketing" is marketing); cdp.set_consent, the same decision made
-- through the API, matches them the same way instead of refusing the
-- spelling a message may use.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

\set send_ts '2026-06-01 10:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql

SELECT pg_temp.send('pc-1', '{"anonymousId": "pc-a"}');
SELECT is(pg_temp.run(), 1::bigint, 'the visitor has a profile');
SELECT lives_ok($$SELECT cdp.set_consent('anonymous_id:pc-a', 'Marketing', true, '2026-06-01 11:00+00')$$,
                'set_consent takes the purpose as a message spells it');
SELECT is(pg_temp.granted('anonymous_id:pc-a', 'marketing'), true, 'the profile has marketing granted');
SELECT is((SELECT array_agg(purpose) FROM cdp.consent_log), ARRAY['marketing'],
          'the history names the purpose as defined');

SELECT * FROM finish();
ROLLBACK;
