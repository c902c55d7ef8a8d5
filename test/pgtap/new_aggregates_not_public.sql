-- An aggregate made in schema cdp later is no more PUBLIC's than a
-- function made there (PostgreSQL makes every new routine executable by
-- PUBLIC); outside cdp nothing changes.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(3);

CREATE AGGREGATE cdp.regress_total(int) (SFUNC = int4pl, STYPE = int, INITCOND = '0');
CREATE AGGREGATE public.regress_total(int) (SFUNC = int4pl, STYPE = int, INITCOND = '0');
CREATE FUNCTION cdp.regress_later() RETURNS int LANGUAGE sql AS 'SELECT 1';
SELECT ok(NOT has_function_privilege('public', 'cdp.regress_total(int)', 'EXECUTE'), 'an aggregate made in cdp is not PUBLIC''s');
SELECT ok(NOT has_function_privilege('public', 'cdp.regress_later()', 'EXECUTE'), 'nor is a function');
SELECT ok(has_function_privilege('public', 'public.regress_total(int)', 'EXECUTE'), 'an aggregate elsewhere is left alone');

SELECT * FROM finish();
ROLLBACK;
