-- Views for BI tools (api.md "Profiles, consent, privacy"): define_trait,
-- create_profile_view, create_event_view and cdp.trait_as.  Profiles come
-- from ingest; their derived traits and consent are written straight into
-- cdp.profile_records, as the pipeline keeps them.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(66);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE SCHEMA bi;

-- the error a call raises, as 'SQLSTATE: message'
CREATE FUNCTION pg_temp.error_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text;
    msg text;
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
    RETURN state || ': ' || msg;
END
$$;
-- a view's columns as 'name type, ...'
CREATE FUNCTION pg_temp.columns(v regclass) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(format('%s %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)
      FROM pg_attribute a WHERE a.attrelid = v AND a.attnum > 0 AND NOT a.attisdropped
$$;
CREATE FUNCTION pg_temp.set_state(id text, traits jsonb, consent jsonb) RETURNS void LANGUAGE sql AS $$
    UPDATE cdp.profile_records SET traits = $2, consent = $3 WHERE profile_id = pg_temp.pid($1)
$$;

-- four people; b and b2 merge, so b2's record is merged away
SELECT pg_temp.send('m1', '{"type": "identify", "userId": "a"}');
SELECT pg_temp.send('m2', '{"type": "identify", "userId": "b"}');
SELECT pg_temp.send('m3', '{"type": "identify", "userId": "c"}');
SELECT pg_temp.send('m4', '{"type": "identify", "userId": "d"}');
SELECT pg_temp.send('m5', '{"type": "identify", "anonymousId": "b2"}');
SELECT pg_temp.run();
SELECT pg_temp.send('m6', '{"type": "track", "anonymousId": "b2", "userId": "b", "event": "Linked"}');
SELECT pg_temp.run();
SELECT is((SELECT count(*)::int FROM cdp.profile_records WHERE merged_into IS NOT NULL), 1,
          'setup: one profile was merged away');
UPDATE cdp.profile_records SET traits = '{"email": "ghost@x.io", "plan": "gold"}', consent = '{}'
 WHERE merged_into IS NOT NULL;
-- a: defaults only; b: granted marketing; c: refused analytics, granted marketing;
-- d: refused marketing explicitly, bad values
SELECT pg_temp.set_state('user_id:a', '{"email": "a@x.io", "plan": "pro", "age": 41, "vip": true,
                                        "signup": "2026-01-02T03:04:05Z"}', '{}');
SELECT pg_temp.set_state('user_id:b', '{"email": "b@x.io", "plan": "free", "age": "33"}',
                         '{"marketing": {"granted": true, "at": "2026-04-01T00:00:00.000000Z", "source": "api", "message_id": null}}');
SELECT pg_temp.set_state('user_id:c', '{"email": "c@x.io", "plan": "pro"}',
                         '{"analytics": {"granted": false}, "marketing": {"granted": true}}');
SELECT pg_temp.set_state('user_id:d', '{"email": "d@x.io", "plan": {"nested": 1}, "age": "old", "vip": "maybe",
                                        "signup": "yesterday-ish"}',
                         '{"marketing": {"granted": false}}');
CREATE TEMP TABLE ids AS
SELECT id, pg_temp.pid('user_id:' || id) AS profile_id FROM unnest(ARRAY['a', 'b', 'c', 'd']) id;
GRANT SELECT ON ids TO PUBLIC;

-- define_trait: declared types and purposes
SELECT lives_ok($$SELECT cdp.define_trait('email', 'text', 'marketing')$$, 'define_trait with a purpose');
SELECT lives_ok($$SELECT cdp.define_trait('plan', 'text')$$, 'define_trait defaults to analytics');
SELECT lives_ok($$SELECT cdp.define_trait('age', 'int')$$, 'an integer trait');
SELECT lives_ok($$SELECT cdp.define_trait('vip', 'boolean')$$, 'a boolean trait');
SELECT lives_ok($$SELECT cdp.define_trait('signup', 'timestamptz')$$, 'a timestamptz trait');
SELECT results_eq($$SELECT name, type::text, purpose FROM cdp.trait_definitions ORDER BY position$$,
                  $$VALUES ('email', 'text', 'marketing'), ('plan', 'text', 'analytics'), ('age', 'integer', 'analytics'),
                           ('vip', 'boolean', 'analytics'), ('signup', 'timestamp with time zone', 'analytics')$$,
                  'cdp.trait_definitions lists them in definition order');

-- define_trait refuses what cannot be a trait, with clear errors
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait('p', 'text', 'nope')$$),
          '42704: purpose "nope" does not exist', 'an unknown purpose is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait('p', 'text', 'analytics''); DROP TABLE cdp.inbox; --')$$),
          '42704: purpose "analytics''); DROP TABLE cdp.inbox; --" does not exist',
          'an injection attempt through a purpose name is an unknown purpose');
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait(E'bad\nname', 'text')$$),
          E'42602: invalid trait name "bad\nname"', 'a trait name with a control character is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait('x" text, "y', 'text')$$),
          '42602: invalid trait name "x" text, "y"', 'a trait name with a double quote is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait('x''; DROP TABLE cdp.inbox; --', 'text')$$),
          '42602: invalid trait name "x''; DROP TABLE cdp.inbox; --"', 'an injection attempt through a trait name is refused');
SELECT is(pg_temp.error_of(format('SELECT cdp.define_trait(%L, %L)', repeat('x', 64), 'text')),
          '42602: invalid trait name "' || repeat('x', 64) || '"', 'a trait name over 63 bytes is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait('', 'text')$$), '42602: invalid trait name ""', 'an empty name is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait(NULL, 'text')$$), '42602: invalid trait name "<NULL>"', 'a NULL name is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait('profile_id', 'bigint')$$),
          '42602: a trait cannot be called "profile_id"', 'profile_id is every view''s own column');
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait('p', 'anyelement')$$),
          '22023: a trait cannot have type anyelement', 'a pseudo-type is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.define_trait('p', NULL)$$),
          '22023: a trait cannot have type NULL', 'a NULL type is refused');
SELECT is((SELECT count(*)::int FROM cdp.trait_definitions), 5, 'nothing refused was defined');

-- create_profile_view: columns, rows, consent, conversions
SELECT is(cdp.create_profile_view('bi.people', 'analytics')::text, 'bi.people', 'create_profile_view returns the view');
SELECT is(pg_temp.columns('bi.people'),
          'profile_id bigint, email text, plan text, age integer, vip boolean, signup timestamp with time zone',
          'profile_id, then one column per declared trait, of its declared type, in definition order');
SELECT is((SELECT c.relkind::text FROM pg_class c WHERE c.oid = 'bi.people'::regclass), 'v', 'it is a plain view');
SELECT set_eq($$SELECT profile_id FROM bi.people$$, $$SELECT profile_id FROM ids WHERE id IN ('a', 'b', 'd')$$,
              'it holds the canonical profiles that granted analytics (explicitly or by default), not c who refused');
SELECT is((SELECT count(*)::int FROM bi.people p JOIN cdp.profile_records r USING (profile_id) WHERE r.merged_into IS NOT NULL),
          0, 'no merged-away profile appears');
SELECT results_eq($$SELECT p.email, p.plan, p.age, p.vip, p.signup FROM bi.people p JOIN ids USING (profile_id) ORDER BY ids.id$$,
                  $$VALUES (NULL::text, 'pro'::text, 41, true, '2026-01-02 03:04:05+00'::timestamptz),
                           ('b@x.io', 'free', 33, NULL, NULL),
                           (NULL, '{"nested": 1}', NULL, NULL, NULL)$$,
                  'trait columns: NULL where the trait''s purpose (marketing) is not granted, by default (a) or explicitly (d); '
                  'values that do not convert are NULL, never an error; a string number converts');

SELECT is(cdp.create_profile_view('bi."Marketing list"', 'marketing', ARRAY['email', 'plan'])::text, 'bi."Marketing list"',
          'a quoted view name keeps its case and space');
SELECT is(pg_temp.columns('bi."Marketing list"'), 'profile_id bigint, email text, plan text', 'only the traits asked for, in that order');
SELECT results_eq($$SELECT ids.id, m.email, m.plan FROM bi."Marketing list" m JOIN ids USING (profile_id) ORDER BY 1$$,
                  $$VALUES ('b', 'b@x.io', 'free'), ('c', 'c@x.io', NULL)$$,
                  'a marketing view: only people who granted marketing; c''s plan (analytics, refused) is NULL');

SET LOCAL search_path = bi, public;
SELECT is(cdp.create_profile_view('plain_list', 'analytics', ARRAY['plan'])::text, 'plain_list',
          'an unqualified name ...');
RESET search_path;
SET LOCAL search_path = public, cdp;
SELECT is((SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = 'bi.plain_list'::regclass), 'bi',
          '... goes to the first schema of the search_path');

-- names: injection attempts fail with a clear error
SELECT is(pg_temp.error_of($$SELECT cdp.create_profile_view('v; DROP TABLE cdp.inbox', 'analytics')$$),
          '42602: invalid view name "v; DROP TABLE cdp.inbox"', 'an injection attempt through an unquoted view name is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.create_profile_view('bi."v"" AS SELECT 1; DROP TABLE cdp.inbox; --"', 'analytics')$$),
          '42602: invalid view name "v" AS SELECT 1; DROP TABLE cdp.inbox; --"', '... and through a quoted one');
SELECT is(pg_temp.error_of($$SELECT cdp.create_profile_view('a.b.c', 'analytics')$$),
          '42602: invalid view name "a.b.c": at most a schema and a view name', 'three parts are refused');
SELECT is(pg_temp.error_of($$SELECT cdp.create_profile_view('nosuch.v', 'analytics')$$),
          '3F000: schema "nosuch" does not exist', 'an unknown schema is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.create_profile_view('bi.v', 'marketing''; --')$$),
          '42704: purpose "marketing''; --" does not exist', 'an unknown purpose is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.create_profile_view('bi.v', 'analytics', ARRAY['email', 'x; --'])$$),
          '42704: trait "x; --" is not defined', 'an undeclared trait is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.create_profile_view('bi.v', 'analytics', ARRAY['email', 'email'])$$),
          '22023: traits must not name a trait twice', 'a trait named twice is refused');
SELECT is(pg_temp.error_of($$SELECT cdp.create_profile_view('cdp.inbox', 'analytics')$$),
          '42P07: relation cdp.inbox already exists and is not a generated view', 'an existing relation is never replaced');
SELECT is((SELECT count(*)::int FROM pg_class WHERE relname = 'inbox' AND relnamespace = 'cdp'::regnamespace
              AND relkind = 'r'), 1, 'cdp.inbox is still there');
SELECT is((SELECT count(*)::int FROM pg_class WHERE relnamespace = 'bi'::regnamespace), 3,
          'no refused call made a view');

-- views stay correct when traits and purposes change later
SELECT lives_ok($$SELECT cdp.define_trait('company', 'text', 'personalization')$$, 'a trait declared later ...');
SELECT is(pg_temp.columns('bi.people'),
          'profile_id bigint, email text, plan text, age integer, vip boolean, signup timestamp with time zone, company text',
          '... becomes the last column of every view of all traits');
SELECT is(pg_temp.columns('bi."Marketing list"'), 'profile_id bigint, email text, plan text',
          '... and no column of a view that named its traits');
SELECT lives_ok($$SELECT cdp.define_trait('age', 'numeric')$$, 'a trait redefined with another type ...');
SELECT is(pg_temp.columns('bi.people'),
          'profile_id bigint, email text, plan text, age numeric, vip boolean, signup timestamp with time zone, company text',
          '... changes its column''s type');
SELECT lives_ok($$SELECT cdp.define_trait('plan', 'text', 'marketing')$$, 'a trait moved to another purpose ...');
SELECT results_eq($$SELECT ids.id, p.plan FROM bi.people p JOIN ids USING (profile_id) ORDER BY 1$$,
                  $$VALUES ('a', NULL::text), ('b', 'free'), ('d', NULL)$$,
                  '... shows only where that purpose is granted');
-- a purpose's default changing (define_purpose) needs no new view
UPDATE cdp.purposes SET default_granted = true WHERE name = 'marketing';
SELECT results_eq($$SELECT ids.id, p.email FROM bi.people p JOIN ids USING (profile_id) ORDER BY 1$$,
                  $$VALUES ('a', 'a@x.io'), ('b', 'b@x.io'), ('d', NULL)$$,
                  'a default granted later shows the traits of people who never decided, not of those who refused');
UPDATE cdp.purposes SET default_granted = false WHERE name = 'marketing';
SELECT is((SELECT count(*)::int FROM cdp.generated_views), 3, 'the registry holds the three views');
SELECT is(pg_temp.error_of($$DROP VIEW bi.plain_list$$), 'no error', 'a generated view dropped by hand ...');
SELECT is((SELECT count(*)::int FROM cdp.generated_views), 2, '... leaves the registry at once');
SELECT lives_ok($$SELECT cdp.refresh_generated_views()$$, '... and the next refresh makes the others');

-- create_event_view
SELECT is(cdp.create_event_view('bi.marketing_events', 'marketing')::text, 'bi.marketing_events', 'create_event_view returns the view');
SELECT is(pg_temp.columns('bi.marketing_events'), pg_temp.columns('cdp.events_resolved'),
          'an event view has the columns of cdp.events_resolved');
SELECT set_eq($$SELECT message_id FROM bi.marketing_events$$, $$VALUES ('m2'), ('m3'), ('m5'), ('m6')$$,
              'it holds the events of the people who granted the purpose, under merged profiles too');
SELECT set_eq($$SELECT DISTINCT profile_id FROM bi.marketing_events$$, $$SELECT profile_id FROM ids WHERE id IN ('b', 'c')$$,
              'with their canonical profile ids');

-- cdp.trait_as: conversions never raise
SELECT results_eq(
    $$SELECT cdp.trait_as('"x"', NULL::int), cdp.trait_as('1.5', NULL::int), cdp.trait_as('"12"', NULL::bigint),
             cdp.trait_as('1e30', NULL::bigint), cdp.trait_as('70000', NULL::smallint), cdp.trait_as('" 42 "', NULL::int)$$,
    $$VALUES (NULL::int, 2, 12::bigint, NULL::bigint, NULL::smallint, 42)$$,
    'integers: numbers round as jsonb casts do, strings as the type''s input reads them, out of range is NULL');
SELECT results_eq(
    $$SELECT cdp.trait_as('1e300', NULL::real), cdp.trait_as('"2.5"', NULL::float8), cdp.trait_as('"abc"', NULL::numeric),
             cdp.trait_as('"12.50"', NULL::numeric), cdp.trait_as('[1]', NULL::numeric)$$,
    $$VALUES (NULL::real, 2.5::float8, NULL::numeric, 12.50::numeric, NULL::numeric)$$,
    'floats and numerics');
SELECT results_eq(
    $$SELECT cdp.trait_as('"2026-01-02T03:04:05Z"', NULL::timestamptz), cdp.trait_as('"garbage"', NULL::timestamptz),
             cdp.trait_as('"2026-02-30"', NULL::date), cdp.trait_as('"yes"', NULL::bool), cdp.trait_as('2', NULL::bool)$$,
    $$VALUES ('2026-01-02 03:04:05+00'::timestamptz, NULL::timestamptz, NULL::date, true, NULL::bool)$$,
    'times, dates and booleans');
SELECT results_eq(
    $$SELECT cdp.trait_as('{"a": 1}', NULL::text), cdp.trait_as('"s"', NULL::json)::text, cdp.trait_as('[1, 2]', NULL::jsonb),
             cdp.trait_as('null', NULL::text), cdp.trait_as(NULL, NULL::text), cdp.trait_as('"nope"', NULL::uuid)$$,
    $$VALUES ('{"a": 1}'::text, '"s"'::text, '[1, 2]'::jsonb, NULL::text, NULL::text, NULL::uuid)$$,
    'text, json and jsonb; JSON null and SQL NULL are NULL; other types through their input function');
CREATE DOMAIN pg_temp.positive AS int CHECK (VALUE > 0);
SELECT results_eq($$SELECT cdp.trait_as('5', NULL::pg_temp.positive)::int, cdp.trait_as('-5', NULL::pg_temp.positive)::int$$,
                  $$VALUES (5, NULL::int)$$, 'a domain''s constraint failing gives NULL');
SELECT is(pg_typeof(cdp.trait_as('5', NULL::pg_temp.positive))::text, (SELECT 'pg_temp.positive'::regtype::text),
          'a domain stays the domain');
-- the subtransaction leaves nothing behind: a failed conversion inside a
-- transaction that goes on
SELECT is((SELECT count(*)::int FROM generate_series(1, 200) i WHERE cdp.trait_as(to_jsonb('x' || i), NULL::uuid) IS NULL),
          200, 'many failed conversions in one statement');
SELECT is(cdp.trait_as('"7"', NULL::int) + 1, 8, 'the transaction goes on afterwards');

-- cdp.trait_as(traits, key, template): the value under a key, found in place
SELECT results_eq(
    $$SELECT cdp.trait_as(t, 'a', NULL::int), cdp.trait_as(t, 'n', NULL::text), cdp.trait_as(t, 'n', NULL::jsonb),
             cdp.trait_as(t, 's', NULL::json)::text, cdp.trait_as(t, 's', NULL::jsonb), cdp.trait_as(t, 'missing', NULL::text),
             cdp.trait_as(t, 'z', NULL::text), cdp.trait_as('[1]', 'a', NULL::int), cdp.trait_as(t, 's', NULL::uuid)
        FROM (SELECT '{"a": "12", "n": {"x": [1, 2]}, "s": "str", "z": null}'::jsonb AS t) x$$,
    $$VALUES (12, '{"x": [1, 2]}'::text, '{"x": [1, 2]}'::jsonb, '"str"'::text, '"str"'::jsonb, NULL::text,
              NULL::text, NULL::int, NULL::uuid)$$,
    'a key''s value converts like a whole value; a missing key, JSON null or a non-object is NULL');

-- cdp.consent_granted: the decision, else the purpose's default
SELECT results_eq(
    $$SELECT cdp.consent_granted('{}', 'analytics'), cdp.consent_granted('{}', 'marketing'),
             cdp.consent_granted('{"marketing": {"granted": true}}', 'marketing'),
             cdp.consent_granted('{"analytics": {"granted": false}}', 'analytics'),
             cdp.consent_granted('{"analytics": {"granted": "yes"}}', 'analytics'),
             cdp.consent_granted('{"analytics": true}', 'analytics'), cdp.consent_granted('[]', 'analytics'),
             cdp.consent_granted(NULL, 'analytics'), cdp.consent_granted('{}', 'nope'), cdp.consent_granted('{}', NULL)$$,
    $$VALUES (true, false, true, false, true, true, true, true, false, false)$$,
    'a decision wins; no decision (or a malformed one) takes the default; an unknown purpose is not granted');

SELECT * FROM finish();
ROLLBACK;
