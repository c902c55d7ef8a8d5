--
-- 55_partition_limit: run_maintenance() warns once cdp.events holds nine
-- tenths of cdp.max_partitions (beyond it, ingest dead-letters what would need
-- a new partition, which nobody may be watching), and not before.
--
\set VERBOSITY terse
-- far below: no warning
SET cdp.max_partitions = 100000;
SELECT cdp.run_maintenance() ? 'partitions_created' AS ran;
-- at the limit
SELECT set_config('cdp.max_partitions', greatest(count(*), 10)::text, false) IS NOT NULL AS set
  FROM cdp.partitions;
SELECT cdp.run_maintenance() ? 'partitions_created' AS ran;
RESET cdp.max_partitions;
