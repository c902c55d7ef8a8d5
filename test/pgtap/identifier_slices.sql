-- cdp.identifier_slices(ids, lo, hi) cuts a batch's evidence rows' arrays
-- from one array in one pass: each slice must be exactly what SQL's
-- ids[lo:hi] gives, bounds outside the array and empty slices included.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(5);
SET LOCAL search_path = public, cdp;

CREATE TEMP TABLE bounds AS
SELECT row_number() OVER (ORDER BY lo, hi) AS n, lo, hi
  FROM generate_series(-1, 6) lo, generate_series(-1, 6) hi;
CREATE TEMP TABLE ids AS
SELECT ARRAY['anonymous_id:a', 'user_id:u', 'email:e@x.io', 'device_id:d']::cdp.identifier[] AS a;

SELECT results_eq(
    $$SELECT s::text FROM cdp.identifier_slices((SELECT a FROM ids),
                                                ARRAY(SELECT lo FROM bounds ORDER BY n),
                                                ARRAY(SELECT hi FROM bounds ORDER BY n)) s$$,
    $$SELECT (SELECT a FROM ids)[lo:hi]::text FROM bounds ORDER BY n$$,
    'every slice equals SQL''s, in the order of the bounds');
SELECT results_eq(
    $$SELECT s::text FROM cdp.identifier_slices('[0:3]={anonymous_id:a,user_id:u,email:e@x.io,device_id:d}'::cdp.identifier[],
                                                ARRAY(SELECT lo FROM bounds ORDER BY n),
                                                ARRAY(SELECT hi FROM bounds ORDER BY n)) s$$,
    $$SELECT ('[0:3]={anonymous_id:a,user_id:u,email:e@x.io,device_id:d}'::cdp.identifier[])[lo:hi]::text
        FROM bounds ORDER BY n$$,
    'an array that does not start at 1 is cut as SQL cuts it');
SELECT results_eq(
    $$SELECT s::text FROM cdp.identifier_slices('{}', '{1,0}', '{0,1}') s$$,
    $$VALUES ('{}'), ('{}')$$,
    'an empty array gives empty slices');
SELECT throws_ok(
    $$SELECT cdp.identifier_slices((SELECT a FROM ids), '{1,2}', '{2}')$$,
    '2202E', NULL, 'as many upper bounds as lower bounds are needed');
SELECT throws_ok(
    $$SELECT cdp.identifier_slices((SELECT a FROM ids), '{1,NULL}', '{2,3}')$$,
    '22023', NULL, 'a null bound is refused');

SELECT * FROM finish();
ROLLBACK;
