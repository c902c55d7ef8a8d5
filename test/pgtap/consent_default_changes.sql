-- A purpose's default read by cdp.consent_granted follows changes made in
-- the same transaction, also where one expression is evaluated many times
-- (a PL/pgSQL loop keeps its expressions for the whole transaction).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(3);

CREATE FUNCTION pg_temp.defaults_seen() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    seen text := '';
BEGIN
    FOR i IN 1..3 LOOP
        seen := seen || cdp.consent_granted('{}', 'marketing')::text || ' ';
        UPDATE cdp.purposes SET default_granted = NOT default_granted WHERE name = 'marketing';
    END LOOP;
    RETURN seen;
END
$$;
SELECT is(pg_temp.defaults_seen(), 'false true false ', 'a changed default is read by the next statement');
SELECT is(cdp.consent_granted('{"marketing": {"granted": false}}', 'marketing'), false, 'a decision wins over the default');
SELECT is(cdp.consent_granted('{}', 'marketing'), true, 'the default as it was left');

SELECT * FROM finish();
ROLLBACK;
