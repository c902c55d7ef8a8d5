--
-- 90_walkthrough: the README's walk from ingest to a view an analyst reads
-- and an erasure request, as written there, in a fresh install: one profile
-- per person with merged traits and consent, views holding only people who
-- granted their purpose, the analyst refused the base tables, and after
-- forget the person gone from the views and a later message dropped.
--
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bi CASCADE;
DROP EXTENSION pg_cdp CASCADE;
CREATE EXTENSION pg_cdp;
DROP ROLE IF EXISTS regress_analyst;  -- left by an earlier failed run
RESET client_min_messages;

-- 1. events arrive (here through SQL; SDKs send the same JSON)
SELECT cdp.ingest('{"type":"identify","userId":"u-7","anonymousId":"a-7",
                    "traits":{"email":"Ann@Example.com","plan":"pro","age":"41"},
                    "context":{"consent":{"categoryPreferences":{"Marketing":true,"Advertising":false}}},
                    "timestamp":"2026-11-20T09:00:00Z","messageId":"w-1"}');
SELECT cdp.ingest('{"type":"track","anonymousId":"a-8","event":"Viewed Pricing",
                    "context":{"traits":{"plan":"free"}},
                    "timestamp":"2026-11-21T09:00:00Z","messageId":"w-2"}');
SELECT cdp.ingest('{"type":"identify","userId":"u-8","anonymousId":"a-8",
                    "traits":{"email":"bo@example.com","age":"unknown"},
                    "timestamp":"2026-11-21T10:00:00Z","messageId":"w-3"}');
SELECT cdp.process_inbox();

-- 2. one profile per person, traits merged, consent recorded
SELECT profile_id, event_count, traits FROM cdp.profiles ORDER BY profile_id;
SELECT cdp.consent_of(cdp.resolve('user_id:u-7')) -> 'marketing' ->> 'granted' AS ann_marketing;

-- 3. declare traits, make views, let an analyst read them
SELECT cdp.define_trait('email', 'text', 'marketing');
SELECT cdp.define_trait('plan', 'text');
SELECT cdp.define_trait('age', 'integer');
CREATE SCHEMA bi;
SELECT cdp.create_profile_view('bi.people', 'analytics');
SELECT cdp.create_profile_view('bi.newsletter', 'marketing');
CREATE ROLE regress_analyst;
SELECT cdp.grant_analyst('regress_analyst');
SET ROLE regress_analyst;
SELECT email, plan, age FROM bi.people ORDER BY plan;
SELECT email, plan FROM bi.newsletter;
SELECT count(*) FROM cdp.events;       -- refused: analysts read views only
RESET ROLE;

-- 4. an erasure request
SELECT cdp.forget('email:ann@example.com', 'ticket 4711') ->> 'events' AS events_erased;
SELECT cdp.ingest('{"type":"track","userId":"u-7","event":"Came Back","messageId":"w-4"}');
SELECT cdp.process_inbox();
SELECT count(*) AS ann_events FROM cdp.events WHERE user_id = 'u-7';
SELECT dropped FROM cdp.suppressions WHERE dropped > 0;
SELECT email, plan FROM bi.people ORDER BY plan;

DROP SCHEMA bi CASCADE;
SELECT cdp.revoke_analyst('regress_analyst');
DROP OWNED BY regress_analyst;
DROP ROLE regress_analyst;
