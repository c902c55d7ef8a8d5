-- From ingest to a BI view: traits and consent the pipeline derives from
-- messages are what the generated views show, and they follow a merge and
-- a withdrawal of consent (set_consent) at once.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
\ir include/profile_state_setup.psql
CREATE SCHEMA bi;
DO $$ BEGIN
    PERFORM cdp.define_trait('email', 'text', 'marketing');
    PERFORM cdp.define_trait('plan', 'text');
    PERFORM cdp.create_profile_view('bi.newsletter', 'marketing');
END $$;

DO $$ BEGIN
    -- ann grants marketing with the consent manager; bob says nothing (marketing is off by default)
    PERFORM pg_temp.send('sv-1', '{"type": "identify", "userId": "sv-ann", "traits": {"email": "ann@x.io", "plan": "pro"},
        "context": {"consent": {"categoryPreferences": {"Marketing": true}}}}');
    PERFORM pg_temp.send('sv-2', '{"type": "identify", "userId": "sv-bob", "traits": {"email": "bob@x.io", "plan": "free"}}');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq($$SELECT email, plan FROM bi.newsletter$$, $$VALUES ('ann@x.io', 'pro')$$,
                  'a view for marketing holds the person whose message granted it, with the traits messages set');

-- an anonymous visit with a newer plan, then the alias that merges it into ann
DO $$ BEGIN
    PERFORM pg_temp.send('sv-3', '{"type": "page", "anonymousId": "sv-a1", "context": {"traits": {"plan": "enterprise"}}}',
                         '2026-04-02 00:00+00');
    PERFORM pg_temp.run();
    PERFORM pg_temp.send('sv-4', '{"type": "alias", "userId": "sv-ann", "previousId": "sv-a1"}', '2026-04-03 00:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT results_eq($$SELECT email, plan FROM bi.newsletter$$, $$VALUES ('ann@x.io', 'enterprise')$$,
                  'after a merge the view shows the newest value over both profiles');

-- bob grants by API, ann withdraws through the anonymous id she was merged with
DO $$ BEGIN
    PERFORM cdp.set_consent('user_id:sv-bob', 'marketing', true, '2026-04-04');
    PERFORM cdp.set_consent('anonymous_id:sv-a1', 'marketing', false, '2026-04-05');
END $$;
SELECT results_eq($$SELECT email FROM bi.newsletter$$, $$VALUES ('bob@x.io')$$,
                  'set_consent grants and withdraws at once, through any identifier of the person');
SELECT is(pg_temp.state_drift(), 0::bigint, '... and every profile equals a recompute from its identifiers');

SELECT * FROM finish();
ROLLBACK;
