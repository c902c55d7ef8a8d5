-- A trait's type dropped with CASCADE (a domain, or an extension's type)
-- takes the views showing it and the trait itself: nothing left behind
-- makes the next view fail.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(5);

CREATE SCHEMA bi;
CREATE DOMAIN public.regress_code AS text CHECK (VALUE ~ '^[A-Z]+$');
SELECT cdp.define_trait('code', 'public.regress_code');
SELECT cdp.define_trait('plan', 'text');
SELECT cdp.create_profile_view('bi.people', 'analytics');
SELECT cdp.create_profile_view('bi.plans', 'analytics', ARRAY['plan']);

DROP DOMAIN public.regress_code CASCADE;
SELECT is((SELECT array_agg(view::text ORDER BY view::text) FROM cdp.generated_views), ARRAY['bi.plans'],
          'the view dropped with the type leaves the registry');
SELECT is((SELECT array_agg(name) FROM cdp.trait_definitions), ARRAY['plan'], 'the trait of the dropped type is gone');
SELECT lives_ok($$SELECT cdp.create_profile_view('bi.people', 'analytics')$$, 'a view of every trait is made again');
SELECT lives_ok($$SELECT cdp.define_trait('age', 'int')$$, 'define_trait makes every view again');
SELECT is((SELECT count(*)::int FROM cdp.generated_views), 2, 'both views are generated');

SELECT * FROM finish();
ROLLBACK;
