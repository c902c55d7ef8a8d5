-- Consent: purposes and define_purpose, the three forms consent arrives in
-- (Segment categoryPreferences on any message, the Segment Consent
-- Preference Updated event as a full statement, RudderStack
-- consentManagement), set_consent and consent_of, the latest decision by
-- time winning, and the history.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(31);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql

-- purposes
SELECT is((SELECT jsonb_object_agg(name, default_granted) FROM cdp.purposes),
          '{"analytics": true, "personalization": false, "marketing": false, "advertising": false}',
          'installed purposes: analytics granted by default, the others not');
SELECT throws_ok($$SELECT cdp.define_purpose('Bad Name')$$, '22023', NULL, 'define_purpose refuses a name that is no purpose name');
SELECT throws_ok($$SELECT cdp.define_purpose('x"; drop table cdp.purposes; --')$$, '22023', NULL, '... or an injection attempt');
SELECT throws_ok($$SELECT cdp.define_purpose(NULL)$$, '22023', NULL, '... or NULL');
SELECT lives_ok($$SELECT cdp.define_purpose('newsletter')$$, 'define_purpose defines one');
SELECT lives_ok($$SELECT cdp.define_purpose('newsletter', true)$$, '... redefining it updates its default');
SELECT is((SELECT default_granted FROM cdp.purposes WHERE name = 'newsletter'), true, '... to the new value');

-- Segment categoryPreferences on any message, names case-insensitively
DO $$ BEGIN
    PERFORM pg_temp.send('cs-1', '{"type": "page", "userId": "cs-u1", "context": {"consent": {"categoryPreferences":
        {"Marketing": true, "ADVERTISING": false, "Functional Cookies": true, "Newsletter": "yes"}}}}');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.granted('user_id:cs-u1', 'marketing'), true, 'categoryPreferences grants a purpose named in any case');
SELECT is((SELECT (cdp.consent_of(pg_temp.pid('user_id:cs-u1')) -> 'advertising') - 'at'),
          '{"granted": false, "source": "sql", "message_id": "cs-1"}',
          '... denies one, with its source and message');
SELECT is((SELECT cdp.consent_of(pg_temp.pid('user_id:cs-u1')) -> 'analytics'),
          '{"granted": true, "at": null, "source": "default", "message_id": null}',
          'consent_of shows a purpose nobody decided with its default');
SELECT is((SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(cdp.consent_of(pg_temp.pid('user_id:cs-u1'))) k),
          ARRAY['advertising', 'analytics', 'marketing', 'newsletter', 'personalization'],
          '... every defined purpose is present');
SELECT is((SELECT count(*) FROM cdp.consent_log WHERE message_id = 'cs-1')::int, 2,
          'categories that name no purpose and values that are not booleans are not recorded');

-- the Segment Consent Preference Updated event is a full statement
DO $$ BEGIN
    PERFORM pg_temp.send('cs-2', '{"type": "track", "event": "Segment Consent Preference Updated", "userId": "cs-u1",
        "context": {"consent": {"categoryPreferences": {"Advertising": true}}}}', '2026-04-02 00:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT jsonb_object_agg(k, v -> 'granted') FROM jsonb_each(cdp.consent_of(pg_temp.pid('user_id:cs-u1'))) AS e(k, v)),
          '{"advertising": true, "analytics": false, "marketing": false, "newsletter": false, "personalization": false}',
          'Segment Consent Preference Updated denies every defined purpose it leaves out');

-- RudderStack consentManagement
DO $$ BEGIN
    PERFORM pg_temp.send('cs-3', '{"type": "track", "userId": "cs-u2", "context": {"consentManagement":
        {"provider": "custom", "allowedConsentIds": ["Marketing", "analytics"], "deniedConsentIds": ["personalization", 7]}}}');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT jsonb_object_agg(k, v -> 'granted') FROM jsonb_each(cdp.consent_of(pg_temp.pid('user_id:cs-u2'))) AS e(k, v)
            WHERE v ->> 'source' <> 'default'),
          '{"marketing": true, "analytics": true, "personalization": false}',
          'RudderStack allowedConsentIds grant and deniedConsentIds deny');

-- the latest decision by time wins, in any arrival order
DO $$ BEGIN
    PERFORM pg_temp.send('cs-5', '{"userId": "cs-u3", "context": {"consent": {"categoryPreferences": {"marketing": false}}}}',
                         '2026-04-03 00:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('cs-4', '{"userId": "cs-u3", "context": {"consent": {"categoryPreferences": {"marketing": true}}}}',
                         '2026-04-02 00:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.granted('user_id:cs-u3', 'marketing'), false, 'an older decision arriving later does not win');
SELECT is((SELECT array_agg(message_id || ':' || granted ORDER BY at) FROM cdp.consent_log WHERE identifier = 'user_id:cs-u3'),
          ARRAY['cs-4:true', 'cs-5:false'], '... both are in the history, with their message');
-- repeating the current decision is no history; changing it is
DO $$ BEGIN
    PERFORM pg_temp.send('cs-5b', '{"userId": "cs-u3", "context": {"consent": {"categoryPreferences": {"marketing": false}}}}',
                         '2026-04-04 00:00+00');
    PERFORM pg_temp.send('cs-5c', '{"userId": "cs-u3", "context": {"consent": {"categoryPreferences": {"marketing": true}}}}',
                         '2026-04-05 00:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT array_agg(message_id || ':' || granted ORDER BY at) FROM cdp.consent_log WHERE identifier = 'user_id:cs-u3'),
          ARRAY['cs-4:true', 'cs-5:false', 'cs-5c:true'], 'a repeated decision is not logged again, a change is');
SELECT is((SELECT at FROM cdp.identifier_consent WHERE identifier = 'user_id:cs-u3' AND purpose = 'marketing'),
          '2026-04-05 00:00+00'::timestamptz, '... and the latest decision''s time is kept');
-- the same time: a denial wins over a grant
DO $$ BEGIN
    PERFORM pg_temp.send('cs-6', '{"userId": "cs-u4", "context": {"consent": {"categoryPreferences": {"marketing": false}},
        "consentManagement": {"allowedConsentIds": ["marketing"]}}}');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.granted('user_id:cs-u4', 'marketing'), false, 'at the same time a denial wins over a grant');

-- set_consent
SELECT throws_ok($$SELECT cdp.set_consent('user_id:cs-u1', 'nosuch', true)$$, '42704', NULL,
                 'set_consent refuses an undefined purpose');
SELECT throws_ok($$SELECT cdp.set_consent('user_id:cs-u1', 'marketing', NULL)$$, '22004', NULL,
                 '... and a NULL decision');
SELECT lives_ok($$SELECT cdp.set_consent('user_id:cs-u1', 'marketing', true, '2026-04-05')$$, 'set_consent records a decision');
SELECT is((SELECT (cdp.consent_of(pg_temp.pid('user_id:cs-u1')) -> 'marketing') - 'message_id'),
          '{"granted": true, "at": "2026-04-05T00:00:00.000000Z", "source": "api"}', '... the profile shows it, source api');
SELECT lives_ok($$SELECT cdp.set_consent('user_id:cs-u1', 'marketing', false, '2026-04-04')$$, 'an older set_consent');
SELECT is(pg_temp.granted('user_id:cs-u1', 'marketing'), true, '... does not win over a newer decision');
SELECT is((SELECT count(*) FROM cdp.consent_log WHERE identifier = 'user_id:cs-u1' AND source = 'api' AND message_id IS NULL)::int,
          2, '... both calls are in the history');

-- set_consent before the identifier exists: it brings the decision when it joins a profile
SELECT lives_ok($$SELECT cdp.set_consent('email:cs-new@example.com', 'advertising', true, '2026-03-01')$$,
                'set_consent for an identifier no message carried yet');
DO $$ BEGIN
    PERFORM pg_temp.send('cs-7', '{"type": "identify", "userId": "cs-u5", "traits": {"email": "cs-new@example.com"}}');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.granted('user_id:cs-u5', 'advertising'), true, '... the profile it joins holds the decision');

-- consent_of for a merged-away profile answers for the canonical one; unknown profiles are an error
DO $$ BEGIN
    PERFORM pg_temp.send('cs-8', '{"anonymousId": "cs-a6", "context": {"consent": {"categoryPreferences": {"personalization": true}}}}');
    PERFORM pg_temp.run();
    INSERT INTO saved VALUES ('a6', pg_temp.pid('anonymous_id:cs-a6'));
    PERFORM pg_temp.send('cs-9', '{"type": "alias", "userId": "cs-u5", "previousId": "cs-a6"}');
    PERFORM pg_temp.run();
END $$;
SELECT is(cdp.consent_of(pg_temp.saved('a6')), cdp.consent_of(pg_temp.pid('user_id:cs-u5')),
          'consent_of a merged-away profile answers for the profile it was merged into');
SELECT throws_ok($$SELECT cdp.consent_of(-1)$$, '42704', NULL, 'consent_of an unknown profile is an error');

SELECT is(pg_temp.state_drift(), 0::bigint, 'every profile''s consent equals a recompute from its identifiers');

SELECT * FROM finish();
ROLLBACK;
