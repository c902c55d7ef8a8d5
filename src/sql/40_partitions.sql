-- Partition management.  Routing and creation are C (src/storage/partitions.c); the
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

-- A partition's row estimate and size on disk.  When Citus distributes
-- cdp.events the partition on the coordinator is an empty shell: its rows
-- and bytes are in the shards on the workers, estimated there (reltuples of
-- every shard, -1 before its first ANALYZE) and measured by Citus's size
-- function.  Citus's catalog and functions are named only when it is
-- installed, so the function works without it.
CREATE FUNCTION cdp.partition_size(part regclass, OUT row_estimate bigint, OUT total_bytes bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    estimates bigint[];
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition d WHERE d.logicalrelid = part) THEN
            estimates := ARRAY(SELECT r.result::real::bigint
                                 FROM pg_catalog.run_command_on_shards(part,
                                          $c$SELECT reltuples FROM pg_catalog.pg_class WHERE oid = '%s'::regclass$c$) r
                                WHERE r.success);
            row_estimate := CASE WHEN estimates <> '{}' AND -1 <> ALL (estimates)
                                 THEN (SELECT sum(x) FROM unnest(estimates) x) END;
            total_bytes := pg_catalog.citus_total_relation_size(part);
            RETURN;
        END IF;
    END IF;
    SELECT CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END,
           pg_catalog.pg_total_relation_size(part)
      INTO row_estimate, total_bytes
      FROM pg_catalog.pg_class c WHERE c.oid = part;
END
$$;

CREATE VIEW cdp.partitions AS
SELECT b.partition,
       b.range_from,
       b.range_to,
       s.row_estimate,
       s.total_bytes,
       pg_catalog.pg_size_pretty(s.total_bytes) AS total_size
  FROM cdp.partition_bounds() b
  JOIN pg_catalog.pg_class c ON c.oid = b.partition
  CROSS JOIN LATERAL cdp.partition_size(b.partition) s
 ORDER BY b.range_from;
COMMENT ON VIEW cdp.partitions IS
    'attached partitions of cdp.events with their ranges, row estimates (NULL before ANALYZE) and sizes';
