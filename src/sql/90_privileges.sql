-- Least privilege: nothing (function or procedure) is callable by PUBLIC.  Grant writers
-- EXECUTE on cdp.ingest (and INSERT on cdp.inbox for COPY); the admin
-- functions stay with the extension owner unless granted.
REVOKE ALL ON ALL ROUTINES IN SCHEMA cdp FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA cdp FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA cdp FROM PUBLIC;

-- The identifier type is a plain value type: anyone who may see one may
-- compare and print it (analysts join on it), so its support functions are
-- public like any built-in type's.
GRANT EXECUTE ON FUNCTION
    cdp.identifier_in(cstring), cdp.identifier_out(cdp.identifier),
    cdp.identifier_recv(internal), cdp.identifier_send(cdp.identifier),
    cdp.identifier(text, text), cdp.id_type(cdp.identifier), cdp.id_value(cdp.identifier),
    cdp.identifier_eq(cdp.identifier, cdp.identifier), cdp.identifier_ne(cdp.identifier, cdp.identifier),
    cdp.identifier_lt(cdp.identifier, cdp.identifier), cdp.identifier_le(cdp.identifier, cdp.identifier),
    cdp.identifier_gt(cdp.identifier, cdp.identifier), cdp.identifier_ge(cdp.identifier, cdp.identifier),
    cdp.identifier_cmp(cdp.identifier, cdp.identifier), cdp.identifier_hash(cdp.identifier),
    cdp.identifier_hash_extended(cdp.identifier, bigint)
TO PUBLIC;

-- ... and routines made in cdp later (upgrades, an administrator's own):
-- PostgreSQL makes every new function, procedure or aggregate executable
-- by PUBLIC, and default privileges per schema cannot take that back.  New tables, views and
-- sequences (partitions, generated views) are never PUBLIC's to begin with.
CREATE FUNCTION cdp.revoke_public_on_new_routines()
RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT d.objid, d.object_type FROM pg_event_trigger_ddl_commands() d
              WHERE d.schema_name = 'cdp' AND d.object_type IN ('function', 'procedure', 'aggregate') LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', c.objid::regprocedure);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION cdp.revoke_public_on_new_routines() FROM PUBLIC;
CREATE EVENT TRIGGER cdp_revoke_public_on_new_routines ON ddl_command_end
    WHEN TAG IN ('CREATE FUNCTION', 'CREATE PROCEDURE', 'CREATE AGGREGATE')
    EXECUTE FUNCTION cdp.revoke_public_on_new_routines();
