-- Least privilege: nothing (function or procedure) is callable by PUBLIC.  Grant writers
-- EXECUTE on cdp.ingest (and INSERT on cdp.inbox for COPY); the admin
-- functions stay with the extension owner unless granted.
REVOKE ALL ON ALL ROUTINES IN SCHEMA cdp FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA cdp FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA cdp FROM PUBLIC;
-- ... and what is made in cdp later (partitions, upgrades): PostgreSQL makes
-- new functions executable by PUBLIC unless told otherwise.
ALTER DEFAULT PRIVILEGES IN SCHEMA cdp REVOKE ALL ON FUNCTIONS FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA cdp REVOKE ALL ON TABLES FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA cdp REVOKE ALL ON SEQUENCES FROM PUBLIC;

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
