-- pg_cdp install script, built from src/sql/*.sql in name order.
\echo Use "CREATE EXTENSION pg_cdp" to load this file. \quit

-- Identifiers and payloads are UTF-8 by contract; refuse other encodings up front
-- rather than failing later on the first non-ASCII message.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() <> 'UTF8' THEN
        RAISE EXCEPTION 'pg_cdp requires a UTF8 database, this one is %',
            pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported';
    END IF;
END
$$;

-- Nothing in the schema is public: writers, admins and analysts get grants.
REVOKE ALL ON SCHEMA cdp FROM PUBLIC;
