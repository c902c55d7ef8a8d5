-- The latest decision by time wins, so a set_consent dated ahead (a typo,
-- a wrong time zone) would outrank every later decision until that date,
-- a withdrawal too.  Message times are bounded by cdp.max_future_skew;
-- set_consent refuses a time further ahead than that (22023).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

\set send_ts '2026-06-01 10:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql
SET LOCAL cdp.max_future_skew = '1h';

SELECT throws_ok($$SELECT cdp.set_consent('user_id:fut-1', 'marketing', true, now() + interval '2 hours')$$,
                 '22023', NULL, 'a decision dated beyond cdp.max_future_skew is refused');
SELECT is((SELECT count(*) FROM cdp.consent_log)::int, 0, '... and nothing is recorded');
SELECT lives_ok($$SELECT cdp.set_consent('user_id:fut-1', 'marketing', true, now() + interval '30 minutes')$$,
                'one within it is taken');
SELECT lives_ok($$SELECT cdp.set_consent('user_id:fut-1', 'marketing', false)$$,
                'so is one at now()');

SELECT * FROM finish();
ROLLBACK;
