-- Least privilege: nothing is callable by PUBLIC.  Grant writers
-- EXECUTE on cdp.ingest (and INSERT on cdp.inbox for COPY); the admin
-- functions stay with the extension owner unless granted.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA cdp FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA cdp FROM PUBLIC;
