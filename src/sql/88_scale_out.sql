-- cdp.events_resolved as one join, for a distributed cdp.events: Citus
-- plans each branch of the single-node view's UNION ALL on its own, over
-- every shard, before a WHERE on profile_id can reach it, and pulls every
-- event to the coordinator.  One join with the coordinator's merged-away
-- records is pushed down whole: every shard is read, each once.
CREATE FUNCTION cdp.events_resolved_as_one_join()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    CREATE OR REPLACE VIEW cdp.events_resolved AS
    SELECT e.message_id, e.source, e.type, e.event, e.name,
           coalesce(p.merged_into, nullif(e.profile_id, 0)) AS profile_id,
           e.user_id, e.anonymous_id, e.group_id, e.previous_id, e.ts, e.original_timestamp,
           e.sent_at, e.received_at, e.properties, e.traits, e.context, e.extra
      FROM cdp.events e
      LEFT JOIN cdp.profile_records p ON p.profile_id = e.profile_id AND p.merged_into IS NOT NULL;
END
$$;
REVOKE ALL ON FUNCTION cdp.events_resolved_as_one_join() FROM PUBLIC;

-- Scaling out with Citus: cdp.events distributed over worker nodes, by
-- profile_id unless told otherwise.  Everything else (inbox, deduplication,
-- dead letters, the identity graph) stays on the coordinator.  Ingest finds
-- out at run time that cdp.events is distributed, however that was done,
-- and then writes through Citus.  Not SECURITY DEFINER: distributing a
-- table takes its owner.
CREATE FUNCTION cdp.distribute(distribution_column text DEFAULT 'profile_id')
RETURNS bool
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    current_column text;
    without bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'cdp.distribute() needs Citus'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'The citus extension is not installed in this database.',
                  HINT = 'Preload citus first in shared_preload_libraries, run CREATE EXTENSION citus and add the worker nodes.';
    END IF;
    IF NOT citus_is_coordinator() THEN
        RAISE EXCEPTION 'cdp.distribute() must run on the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'This node is a Citus worker.';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_attribute
                    WHERE attrelid = 'cdp.events'::regclass AND attname = distribution_column
                      AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'cdp.events has no column "%"', distribution_column
            USING ERRCODE = 'undefined_column';
    END IF;
    -- one call at a time; the second finds the work done
    PERFORM pg_advisory_xact_lock('cdp.events'::regclass::oid::bigint);
    SELECT column_to_column_name(p.logicalrelid, p.partkey) INTO current_column
      FROM pg_dist_partition p WHERE p.logicalrelid = 'cdp.events'::regclass;
    IF FOUND THEN
        IF current_column IS DISTINCT FROM distribution_column THEN
            RAISE EXCEPTION 'cdp.events is already distributed by %', coalesce(current_column, 'no column')
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'alter_distributed_table() changes the distribution column.';
        END IF;
        PERFORM cdp.events_resolved_as_one_join();
        RETURN false;
    END IF;
    -- no event is stored meanwhile (a batch in flight is waited for), so
    -- the UPDATE below sees every event create_distributed_table moves
    LOCK TABLE cdp.events IN EXCLUSIVE MODE;
    -- a distribution column is never NULL: events stored without a profile
    -- get profile 0, as ingest stores them once distributed
    IF distribution_column = 'profile_id' THEN
        UPDATE cdp.events SET profile_id = 0 WHERE profile_id IS NULL;
    ELSE
        EXECUTE format('SELECT count(*) FROM cdp.events WHERE %I IS NULL', distribution_column)
            INTO without;
        IF without > 0 THEN
            RAISE EXCEPTION '% events have no %, which cannot be a distribution column then',
                            without, distribution_column
                USING ERRCODE = 'null_value_not_allowed';
        END IF;
    END IF;
    -- the partitions and their rows move to shards on the workers
    PERFORM create_distributed_table('cdp.events', distribution_column);
    PERFORM truncate_local_data_after_distributing_table('cdp.events');
    PERFORM cdp.events_resolved_as_one_join();
    RETURN true;
END
$$;
COMMENT ON FUNCTION cdp.distribute(text) IS
    'distribute cdp.events over the Citus workers (on the coordinator); false when it already was';
