-- Partition management.  Routing and creation are C (src/partitions.c); the
-- configuration lives in cdp.partition_config.

CREATE FUNCTION cdp.configure_partitions(part_interval interval DEFAULT '1 day',
                                         premake int DEFAULT 7,
                                         retention interval DEFAULT NULL,
                                         retention_mode text DEFAULT 'drop',
                                         archive_interval interval DEFAULT '1 month',
                                         archive_after interval DEFAULT '3 months')
RETURNS void
AS 'MODULE_PATHNAME', 'cdp_configure_partitions'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp;
COMMENT ON FUNCTION cdp.configure_partitions(interval, int, interval, text, interval, interval) IS
    'set the partition interval, how many to create ahead, retention (drop or detach), and the '
    'coarser interval for ranges older than archive_after';

CREATE FUNCTION cdp.run_maintenance()
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cdp_run_maintenance'
LANGUAGE C VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp;
COMMENT ON FUNCTION cdp.run_maintenance() IS
    'purge the dedup window, apply retention, create partitions ahead; safe beside ingest';

CREATE FUNCTION cdp.partition_bounds(OUT partition regclass, OUT range_from timestamptz,
                                     OUT range_to timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cdp_partition_bounds'
LANGUAGE C STABLE STRICT;

CREATE VIEW cdp.partitions AS
SELECT b.partition,
       b.range_from,
       b.range_to,
       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END AS row_estimate,
       pg_catalog.pg_total_relation_size(b.partition) AS total_bytes,
       pg_catalog.pg_size_pretty(pg_catalog.pg_total_relation_size(b.partition)) AS total_size
  FROM cdp.partition_bounds() b
  JOIN pg_catalog.pg_class c ON c.oid = b.partition
 ORDER BY b.range_from;
COMMENT ON VIEW cdp.partitions IS
    'attached partitions of cdp.events with their ranges, row estimates (NULL before ANALYZE) and sizes';
