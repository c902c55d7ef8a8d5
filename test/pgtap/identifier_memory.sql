-- cdp.identifier's comparison, hash and accessor functions read values in
-- place: sorting, indexing, hashing and a PRIMARY KEY load of a million
-- identifiers (read back from a table, so with short varlena headers) stay
-- within work_mem / maintenance_work_mem instead of keeping a copy of both
-- arguments of every comparison until the statement ends (gigabytes).
-- Memory is the backend's peak resident size (VmHWM in /proc/self/status).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(9);

SET LOCAL work_mem = '4MB';
SET LOCAL maintenance_work_mem = '64MB';
SET LOCAL hash_mem_multiplier = 2;

CREATE FUNCTION pg_temp.peak_kb() RETURNS bigint LANGUAGE sql AS $$
    SELECT (regexp_match(pg_read_file('/proc/self/status'), 'VmHWM:\s+(\d+) kB'))[1]::bigint
$$;

CREATE TEMP TABLE ids AS
SELECT ('user_id:u' || g)::cdp.identifier AS id FROM generate_series(1, 1000000) g;
CREATE TEMP TABLE peak AS SELECT pg_temp.peak_kb() AS base_kb;
-- a leak costs gigabytes here; the real need is under 150 MB
CREATE FUNCTION pg_temp.grew_mb() RETURNS bigint LANGUAGE sql AS $$
    SELECT (pg_temp.peak_kb() - base_kb) / 1024 FROM peak
$$;

CREATE TEMP TABLE sorted AS SELECT count(*) AS n FROM (SELECT id FROM ids ORDER BY id OFFSET 1) s;
SELECT is((SELECT n FROM sorted), 999999::bigint, 'a million identifiers sort');
SELECT cmp_ok(pg_temp.grew_mb(), '<', 300::bigint, 'sorting them does not keep a copy per comparison');

CREATE TEMP TABLE pk (id cdp.identifier PRIMARY KEY);
INSERT INTO pk SELECT id FROM ids;
SELECT is((SELECT count(*) FROM pk), 1000000::bigint, 'a million identifiers load into a PRIMARY KEY');
SELECT cmp_ok(pg_temp.grew_mb(), '<', 300::bigint, 'the PRIMARY KEY load does not keep a copy per comparison');

SET LOCAL enable_sort = off;
SELECT is((SELECT count(*) FROM (SELECT id FROM ids GROUP BY id) s), 1000000::bigint,
          'a million identifiers group by hashing');
SELECT cmp_ok(pg_temp.grew_mb(), '<', 300::bigint, 'hashing them does not keep a copy per call');
RESET enable_sort;

CREATE INDEX ids_id_idx ON ids (id);
SELECT cmp_ok(pg_temp.grew_mb(), '<', 300::bigint, 'building a btree on them does not keep a copy per comparison');

SELECT is((SELECT count(*) FROM ids WHERE cdp.id_type(id) = 'user_id' AND cdp.id_value(id) LIKE 'u%'),
          1000000::bigint, 'id_type and id_value read stored identifiers');
SELECT cmp_ok(pg_temp.grew_mb(), '<', 300::bigint, 'the accessors free what they detoast');

SELECT * FROM finish();
ROLLBACK;
