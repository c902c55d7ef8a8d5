-- A message that states a purpose both ways (RudderStack lists one id as
-- allowed and denied, or Segment categoryPreferences names one category in
-- two spellings) made one decision, the denial: the history holds that one
-- decision, not a grant followed by a denial at the same instant.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

\set send_ts '2026-06-01 10:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql

DO $$ BEGIN
    PERFORM pg_temp.send('ho-1', '{"anonymousId": "ho-a1", "context": {"consentManagement": {
        "allowedConsentIds": ["Marketing", "advertising"], "deniedConsentIds": ["marketing"]}}}');
    PERFORM pg_temp.send('ho-2', '{"anonymousId": "ho-a2", "context": {"consent": {"categoryPreferences":
        {"Personalization": true, "personalization": false}}}}');
END $$;
SELECT is(pg_temp.run(), 2::bigint, 'both messages are taken');

SELECT is((SELECT array_agg(purpose || ':' || granted ORDER BY purpose, id) FROM cdp.consent_log
            WHERE message_id = 'ho-1'),
          ARRAY['advertising:true', 'marketing:false'],
          'allowed and denied ids overlapping: one history row, the denial');
SELECT is((SELECT array_agg(purpose || ':' || granted ORDER BY id) FROM cdp.consent_log
            WHERE message_id = 'ho-2'),
          ARRAY['personalization:false'],
          'one category in two spellings: one history row, the denial');
SELECT is(ARRAY[pg_temp.granted('anonymous_id:ho-a1', 'marketing'),
                pg_temp.granted('anonymous_id:ho-a2', 'personalization')],
          ARRAY[false, false], 'the profiles hold the denials');

SELECT * FROM finish();
ROLLBACK;
