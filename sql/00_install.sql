--
-- 00_install: the extension installs into schema cdp, exposes the contract's
-- objects with the contract's signatures, never shows a write key's hash,
-- and grants nothing to PUBLIC.  Later files assume the extension exists.
--
SET client_min_messages = warning;
CREATE EXTENSION pg_cdp;
RESET client_min_messages;

-- installs_into_schema_cdp
SELECT e.extname, e.extversion, n.nspname AS schema, e.extrelocatable
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'pg_cdp';

-- creating_it_twice_is_an_error
CREATE EXTENSION pg_cdp;

-- contract_functions_exist_with_their_signatures (api.md: Sources and ingest, Events)
SELECT p.oid::regprocedure AS function,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result
  FROM pg_proc p
 WHERE p.oid IN ('cdp.create_source(text)'::regprocedure,
                 'cdp.rotate_write_key(text)'::regprocedure,
                 'cdp.disable_source(text)'::regprocedure,
                 'cdp.ingest(jsonb,text)'::regprocedure,
                 'cdp.track(text,text,jsonb,text,timestamptz)'::regprocedure,
                 'cdp.identify(text,jsonb,text,timestamptz)'::regprocedure,
                 'cdp.alias(text,text,timestamptz)'::regprocedure,
                 'cdp.process_inbox(integer)'::regprocedure,
                 'cdp.replay_dead_letters(bigint[])'::regprocedure,
                 'cdp.configure_partitions(interval,integer,interval,text,interval,interval)'::regprocedure,
                 'cdp.run_maintenance()'::regprocedure,
                 'cdp.schedule_jobs()'::regprocedure,
                 'cdp.unschedule_jobs()'::regprocedure)
 ORDER BY p.proname;

-- contract_relations_exist
SELECT c.oid::regclass AS relation, c.relkind
  FROM pg_class c
 WHERE c.oid IN ('cdp.inbox'::regclass, 'cdp.dead_letters'::regclass,
                 'cdp.events'::regclass, 'cdp.sources'::regclass,
                 'cdp.partitions'::regclass)
 ORDER BY c.relname;

-- events_has_the_contract_columns
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull
  FROM pg_attribute a
 WHERE a.attrelid = 'cdp.events'::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum;

-- events_is_range_partitioned_on_ts
SELECT pg_get_partkeydef('cdp.events'::regclass) AS partition_key;

-- dead_letters_has_the_contract_columns
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a
 WHERE a.attrelid = 'cdp.dead_letters'::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum;

-- inbox_payload_is_text_so_bad_json_survives_copy
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a
 WHERE a.attrelid = 'cdp.inbox'::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum;

-- sources_view_never_exposes_key_hashes: its columns
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a
 WHERE a.attrelid = 'cdp.sources'::regclass AND a.attnum > 0
 ORDER BY a.attnum;
-- ... and no column of any type could carry the key or its digest
SELECT count(*) AS bytea_or_key_columns
  FROM pg_attribute a
 WHERE a.attrelid = 'cdp.sources'::regclass AND a.attnum > 0
   AND (a.atttypid = 'bytea'::regtype OR a.attname ~ 'key|hash');
SELECT length(cdp.create_source('regress_web')) AS key_length;
SELECT name, enabled, rotated_at IS NULL AS never_rotated, disabled_at IS NULL AS not_disabled
  FROM cdp.sources;
SELECT count(*) AS rows_with_key_material
  FROM cdp.sources s
 WHERE row_to_json(s)::text ~ 'cdp_[0-9a-f]{64}|\\x[0-9a-f]{64}';

-- no_partition_and_no_default_partition_after_install
SELECT count(*) AS partitions FROM pg_inherits WHERE inhparent = 'cdp.events'::regclass;

-- nothing_in_cdp_is_usable_by_public, except the cdp.identifier type's own
-- support functions (a value type: whoever may see one may compare and print it)
SELECT has_schema_privilege('public', 'cdp', 'USAGE') AS public_usage,
       has_schema_privilege('public', 'cdp', 'CREATE') AS public_create;
SELECT p.oid::regprocedure AS executable_by_public
  FROM pg_proc p
 WHERE p.pronamespace = 'cdp'::regnamespace
   AND has_function_privilege('public', p.oid, 'EXECUTE')
 ORDER BY p.oid;
SELECT c.oid::regclass AS usable_by_public
  FROM pg_class c
 WHERE c.relnamespace = 'cdp'::regnamespace
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND (CASE WHEN c.relkind = 'S'
             THEN has_sequence_privilege('public', c.oid, 'USAGE, SELECT, UPDATE')
             ELSE has_table_privilege('public', c.oid,
                      'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
        END);

-- a_plain_role_is_refused_at_the_schema
CREATE ROLE regress_cdp_nobody;
SET ROLE regress_cdp_nobody;
SELECT count(*) FROM cdp.events;
SELECT cdp.ingest('{"type": "track", "userId": "u", "event": "e"}');
RESET ROLE;

-- a_plain_role_with_schema_usage_still_cannot_read_or_call
GRANT USAGE ON SCHEMA cdp TO regress_cdp_nobody;
SET ROLE regress_cdp_nobody;
SELECT count(*) FROM cdp.events;
SELECT count(*) FROM cdp.dead_letters;
SELECT count(*) FROM cdp.inbox;
SELECT count(*) FROM cdp.sources;
SELECT count(*) FROM cdp.partitions;
INSERT INTO cdp.inbox (payload) VALUES ('{}');
SELECT cdp.ingest('{"type": "track", "userId": "u", "event": "e"}');
SELECT cdp.track('u', 'e');
SELECT cdp.process_inbox();
SELECT cdp.create_source('regress_evil');
SELECT cdp.authenticate('cdp_x');
SELECT cdp.replay_dead_letters();
SELECT cdp.configure_partitions();
SELECT cdp.run_maintenance();
CALL cdp.drain_inbox();
RESET ROLE;

-- a_writer_needs_only_execute_on_ingest
SELECT length(cdp.create_source('regress_writer')) AS key_length;
GRANT EXECUTE ON FUNCTION cdp.ingest(jsonb, text) TO regress_cdp_nobody;
SET ROLE regress_cdp_nobody;
SELECT cdp.ingest('{"type": "track", "userId": "u", "event": "e"}', 'regress_writer');
SELECT count(*) FROM cdp.inbox;
RESET ROLE;
SELECT source, payload FROM cdp.inbox;

DROP OWNED BY regress_cdp_nobody;
DROP ROLE regress_cdp_nobody;
TRUNCATE cdp.inbox;
DELETE FROM cdp.source_keys WHERE name LIKE 'regress%';

-- install_refuses_a_database_that_is_not_utf8
SELECT current_database() AS regress_db \gset
CREATE DATABASE regress_cdp_latin1 TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C';
\c regress_cdp_latin1
CREATE EXTENSION pg_cdp;
SELECT count(*) AS namespaces_left_behind FROM pg_namespace WHERE nspname = 'cdp';
\c :regress_db
DROP DATABASE regress_cdp_latin1;

-- inbox_payloads_compress_with_lz4: queued envelopes are compressed with lz4
-- (this server has it), not pglz, which cost the HTTP endpoint two fifths of its time
SELECT attcompression AS inbox_payload_compression
  FROM pg_attribute WHERE attrelid = 'cdp.inbox'::regclass AND attname = 'payload';
