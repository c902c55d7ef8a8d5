-- Trait values and types a dashboard must survive: a view over a trait of a
-- domain that refuses NULL, values of text-search and jsonpath types that
-- do not parse, floats that do not fit a real.  None makes a query fail;
-- the value is NULL instead.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(12);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE SCHEMA bi;

SELECT pg_temp.send('m1', '{"type": "identify", "userId": "a"}');
SELECT pg_temp.send('m2', '{"type": "identify", "userId": "b"}');
SELECT pg_temp.run();
UPDATE cdp.profile_records SET traits = '{"score": 5, "words": "fat cat"}' WHERE profile_id = pg_temp.pid('user_id:a');
UPDATE cdp.profile_records SET traits = '{"score": -3, "words": "a:b c:"}' WHERE profile_id = pg_temp.pid('user_id:b');

-- a domain whose NULL (an absent trait, the view's type template) is refused
CREATE DOMAIN pg_temp.positive AS int NOT NULL CHECK (VALUE > 0);
CREATE FUNCTION pg_temp.checks() RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('regress.checks', (coalesce(nullif(current_setting('regress.checks', true), ''), '0')::int + 1)::text, false);
    RETURN true;
END
$$;
CREATE DOMAIN pg_temp.counted AS text CHECK (pg_temp.checks());
SELECT cdp.define_trait('score', 'pg_temp.positive');
SELECT cdp.define_trait('words', 'tsvector');
SELECT cdp.define_trait('note', 'pg_temp.counted');
SELECT cdp.create_profile_view('bi.people', 'analytics');

SELECT lives_ok($$SELECT * FROM bi.people$$, 'a view over a trait of a NOT NULL domain can be read');
SELECT results_eq($$SELECT score::int, words::text FROM bi.people ORDER BY profile_id$$,
                  $$VALUES (5, $x$'cat' 'fat'$x$), (NULL, NULL)$$,
                  'a value the domain''s check refuses, or that does not parse as tsvector, is NULL');
SELECT is((SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = 'bi.people'::regclass AND a.attname = 'score'),
          'pg_temp.positive'::regtype::oid, 'the column keeps the domain as its type');
SELECT set_config('regress.checks', '0', false);
SELECT is((SELECT count(*)::int FROM bi.people WHERE note IS NULL), 2, 'a domain trait absent everywhere is NULL');
SELECT is(current_setting('regress.checks'), '0', 'the domain''s check runs on no value when the trait is absent');

-- cdp.trait_as directly
SELECT ok(cdp.trait_as('"a:b c:"'::jsonb, NULL::tsvector) IS NULL, 'a tsvector syntax error is NULL');
SELECT ok(cdp.trait_as('"q & "'::jsonb, NULL::tsquery) IS NULL, 'a tsquery syntax error is NULL');
SELECT ok(cdp.trait_as('"$$$"'::jsonb, NULL::jsonpath) IS NULL, 'a jsonpath syntax error is NULL');
SELECT is(cdp.trait_as('1e-50'::jsonb, NULL::real), NULL, 'a number too small for real is NULL, as real''s input refuses it');
SELECT is(cdp.trait_as('"1e-50"'::jsonb, NULL::real), NULL, '... also as a string');
SELECT is(cdp.trait_as('1.5e-40'::jsonb, NULL::real), '1.5e-40'::real, 'a denormal real converts, as real''s input takes it');
SELECT throws_ok($$SELECT cdp.trait_as('"x"'::jsonb, NULL::record)$$, '0A000', NULL,
                 'an error that is not about the value is still raised');

SELECT * FROM finish();
ROLLBACK;
