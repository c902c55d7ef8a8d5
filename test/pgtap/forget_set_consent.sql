-- cdp.set_consent must not record anything about a forgotten person: the
-- identifier would be kept in clear again (consent_log, identifier_consent).
-- It is refused like cdp.link (55000); other identifiers still work.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql

DO $$ BEGIN
    PERFORM pg_temp.send('c1', '{"type": "identify", "userId": "cs-user", "traits": {"email": "cs@example.com"}}');
    PERFORM pg_temp.run();
    PERFORM cdp.forget('user_id:cs-user');
END $$;

SELECT throws_ok($$SELECT cdp.set_consent('email:CS@Example.com', 'marketing', true)$$, '55000',
                 'cannot record consent for a suppressed identifier',
                 'set_consent refuses a forgotten person''s identifier, in any spelling');
SELECT throws_ok($$SELECT cdp.set_consent('user_id:cs-user', 'analytics', false)$$, '55000', NULL,
                 'and their user id');
SELECT lives_ok($$SELECT cdp.set_consent('user_id:cs-other', 'marketing', true)$$,
                'set_consent still records for others');
SELECT is_empty($$SELECT * FROM pg_temp.find_values(ARRAY['cs-user', 'cs@example.com'])$$,
                'nothing of the forgotten person is recorded again');

SELECT * FROM finish();
ROLLBACK;
