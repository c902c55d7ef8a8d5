-- Statistics (src/common/stats.c): counters in shared memory when pg_cdp is
-- preloaded, the inbox figures from the table, and the ingest workers.

-- Rows removed from the inbox other than by processing (cdp.forget, by
-- hand, TRUNCATE) make the depth behind cdp.max_inbox_depth be counted again.
CREATE FUNCTION cdp.inbox_recount()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cdp_inbox_recount'
LANGUAGE C;
CREATE TRIGGER inbox_recount AFTER DELETE OR TRUNCATE ON cdp.inbox
    FOR EACH STATEMENT EXECUTE FUNCTION cdp.inbox_recount();

CREATE FUNCTION cdp.stats_figures(OUT name text, OUT value numeric, OUT kind text,
                                  OUT description text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cdp_stats_figures'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cdp.stats_figures() IS
    'the figures cdp.stats shows';

-- One row per figure: counters (committed work since the server started or
-- cdp.reset_stats()) and gauges, as a Prometheus export maps them.
CREATE VIEW cdp.stats AS SELECT * FROM cdp.stats_figures();
COMMENT ON VIEW cdp.stats IS
    'pipeline statistics: one row per figure (counter or gauge); counters need pg_cdp in shared_preload_libraries';

CREATE FUNCTION cdp.worker_stats_rows(OUT slot int, OUT pid int, OUT started_at timestamptz,
                                      OUT last_batch_at timestamptz, OUT last_batch_messages bigint,
                                      OUT last_batch_ms double precision, OUT rate double precision,
                                      OUT messages bigint, OUT batches bigint,
                                      OUT identities_recalled bigint, OUT identities_read bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'cdp_worker_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cdp.worker_stats_rows() IS
    'the rows cdp.worker_stats shows';

CREATE VIEW cdp.worker_stats AS SELECT * FROM cdp.worker_stats_rows();
COMMENT ON VIEW cdp.worker_stats IS
    'one row per ingest worker: pid, its last batch (time, messages, ms, messages/s) and totals, and its identifiers served from those it kept (cdp.identity_cache_size) or looked up';

CREATE FUNCTION cdp.reset_stats()
RETURNS void
AS 'MODULE_PATHNAME', 'cdp_reset_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION cdp.reset_stats() IS
    'start this database''s cdp.stats counters (and the workers'' totals) again from zero';
