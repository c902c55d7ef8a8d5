-- Computed traits: per-profile values kept current as events arrive (the C
-- side: src/computed_trait_*.c).  A trait's state (what its kind needs: a
-- count, a sum, extremes, first and last values, distinct values) is kept
-- per profile id the events were stored with (all of an id's states in one
-- row, which ingest writes once per call), which merges, splits and
-- rebuilds never rewrite (events keep their profile id; cdp.events_resolved
-- maps it to the canonical profile).  A canonical profile's value combines
-- the states of the profiles whose events resolve to it, exactly.

CREATE TABLE cdp.computed_traits (
    id          int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    kind        text NOT NULL,
    event       text CHECK (octet_length(event) BETWEEN 1 AND 200),
    property    text CHECK (octet_length(property) BETWEEN 1 AND 200),
    time_window interval,
    filter      jsonb CHECK (octet_length(filter::text) <= 10000),
    purpose     text NOT NULL,
    defined_at  timestamptz NOT NULL DEFAULT now(),
    backfilled_at timestamptz,
    -- backfilling: the maintenance worker counts stored events a partition
    -- at a time while ingest only notes which profiles it touched
    -- (cdp.trait_dirty); catching_up: ingest counts, the noted profiles are
    -- counted again from their events; live: done
    status      text NOT NULL DEFAULT 'live' CHECK (status IN ('backfilling', 'catching_up', 'live')),
    backfill_partitions regclass[],
    backfill_done int NOT NULL DEFAULT 0
);
COMMENT ON TABLE cdp.computed_traits IS
    'computed traits: per-profile values over events, kept current as events arrive';

-- Per profile id events were stored with: each trait's state over those
-- events (within the window, for windowed traits) by trait id,
-- {"<id>": state}, and when the first of its windowed states changes by
-- ageing (its oldest event counted leaves the window).  One row per id, not
-- per (id, trait): ingest writes a person's states as one row, and rows up
-- to a page are kept as they are (not compressed).  A canonical profile's
-- values ride on the same row ({name: value}; NULL for an id merged into
-- another, or without values), so that a person is one row to write, not
-- two: a canonical profile with merged members but no state of its own
-- has a row with no states ('{}').
CREATE TABLE cdp.trait_states (
    profile_id  bigint PRIMARY KEY,
    states      jsonb NOT NULL,
    expires_at  timestamptz,
    traits      jsonb,
    traits_updated_at timestamptz
) WITH (fillfactor = 80, toast_tuple_target = 8160);
CREATE INDEX trait_states_expires_idx ON cdp.trait_states (expires_at)
    WHERE expires_at IS NOT NULL;

-- Profiles (as stored with events) whose events of a trait being backfilled
-- arrived meanwhile: counted again from their events once it is live.
CREATE TABLE cdp.trait_dirty (
    trait_id    int NOT NULL,
    profile_id  bigint NOT NULL,
    PRIMARY KEY (trait_id, profile_id)
);

-- Per canonical profile, the value of every computed trait with one:
-- {name: value}.  count and unique_count are 0 when absent.  Written only
-- through cdp.trait_states.
CREATE VIEW cdp.profile_computed AS
SELECT s.profile_id, s.traits, s.traits_updated_at AS updated_at
  FROM cdp.trait_states s
 WHERE s.traits IS NOT NULL;
COMMENT ON VIEW cdp.profile_computed IS
    'the values of computed traits per canonical profile';

CREATE FUNCTION cdp.check_trait_spec(kind text, property text, filter jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'cdp_check_trait_spec'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION cdp.trait_state_accum(internal, text, text, jsonb, interval, timestamptz, jsonb)
RETURNS internal
AS 'MODULE_PATHNAME', 'cdp_trait_state_accum'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION cdp.trait_state_union_accum(internal, text, jsonb)
RETURNS internal
AS 'MODULE_PATHNAME', 'cdp_trait_state_union_accum'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION cdp.trait_state_final(internal)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cdp_trait_state_final'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION cdp.trait_state_combine(internal, internal)
RETURNS internal
AS 'MODULE_PATHNAME', 'cdp_trait_state_combine'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION cdp.trait_state_serialize(internal)
RETURNS bytea
AS 'MODULE_PATHNAME', 'cdp_trait_state_serialize'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION cdp.trait_state_deserialize(bytea, internal)
RETURNS internal
AS 'MODULE_PATHNAME', 'cdp_trait_state_deserialize'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- The state of a trait (kind, property, filter, time_window) over the
-- events aggregated; parallel workers aggregate their share of a backfill's
-- events and the leader combines their states.
CREATE AGGREGATE cdp.trait_state_agg(kind text, property text, filter jsonb, time_window interval,
                                     ts timestamptz, properties jsonb) (
    SFUNC = cdp.trait_state_accum,
    STYPE = internal,
    FINALFUNC = cdp.trait_state_final,
    COMBINEFUNC = cdp.trait_state_combine,
    SERIALFUNC = cdp.trait_state_serialize,
    DESERIALFUNC = cdp.trait_state_deserialize,
    PARALLEL = SAFE
);

-- Stored states combined into one (the members of a merged profile).
CREATE AGGREGATE cdp.trait_state_union(kind text, state jsonb) (
    SFUNC = cdp.trait_state_union_accum,
    STYPE = internal,
    FINALFUNC = cdp.trait_state_final
);

CREATE FUNCTION cdp.trait_union_value_final(internal)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cdp_trait_union_value_final'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

-- The value of stored states combined (a canonical profile's members):
-- trait_value(kind, trait_state_union(kind, state)) in one step.
CREATE AGGREGATE cdp.trait_union_value(kind text, state jsonb) (
    SFUNC = cdp.trait_state_union_accum,
    STYPE = internal,
    FINALFUNC = cdp.trait_union_value_final
);

CREATE FUNCTION cdp.trait_state_merge(kind text, a jsonb, b jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cdp_trait_state_merge'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

CREATE FUNCTION cdp.trait_value(kind text, state jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cdp_trait_value'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

-- When a state of a windowed trait changes next by ageing: its oldest event
-- counted plus the window.
CREATE FUNCTION cdp.trait_state_expires(state jsonb, time_window interval)
RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN time_window IS NOT NULL AND state ? 'oldest'
            THEN timestamptz '2000-01-01 00:00:00+00'
                 + make_interval(secs => (state->>'oldest')::float8 / 1e6) + time_window END;

-- When the first windowed state of a row of cdp.trait_states changes by
-- ageing (NULL: none does).
CREATE FUNCTION cdp.trait_states_expiry(states jsonb)
RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN (SELECT min(cdp.trait_state_expires(e.value, t.time_window))
          FROM pg_catalog.jsonb_each(states) e
          JOIN cdp.computed_traits t ON t.id = e.key::int
         WHERE t.time_window IS NOT NULL);

-- Each state on a row of its own: (stored profile id, trait, state, when it
-- changes by ageing).
CREATE VIEW cdp.trait_state_rows AS
SELECT s.profile_id, t.id AS trait_id, e.value AS state,
       cdp.trait_state_expires(e.value, t.time_window) AS expires_at
  FROM cdp.trait_states s
 CROSS JOIN LATERAL jsonb_each(s.states) e
  JOIN cdp.computed_traits t ON t.id = e.key::int;
COMMENT ON VIEW cdp.trait_state_rows IS
    'computed trait states, one row per (stored profile id, trait)';

-- Remove a trait's states of the given stored profile ids (all when NULL);
-- the rows' expiry follows the states left, rows left with no state and no
-- value go.
CREATE FUNCTION cdp.remove_trait_states(trait_id int, profile_ids bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    k text := remove_trait_states.trait_id::text;
BEGIN
    IF profile_ids IS NULL THEN
        UPDATE cdp.trait_states s SET states = s.states - k, expires_at = cdp.trait_states_expiry(s.states - k)
         WHERE s.states ? k;
        DELETE FROM cdp.trait_states s WHERE s.states = '{}' AND coalesce(s.traits, '{}') = '{}';
    ELSE
        UPDATE cdp.trait_states s SET states = s.states - k, expires_at = cdp.trait_states_expiry(s.states - k)
         WHERE s.profile_id = ANY (profile_ids) AND s.states ? k;
        DELETE FROM cdp.trait_states s
         WHERE s.profile_id = ANY (profile_ids) AND s.states = '{}' AND coalesce(s.traits, '{}') = '{}';
    END IF;
END
$$;

-- The trait's states over the stored events of the given profile ids (all
-- when NULL), as of now: only track events, of the trait's event if it
-- names one, within its window if it has one.
CREATE FUNCTION cdp.trait_states_from_events(trait_id int, profile_ids bigint[])
RETURNS TABLE (profile_id bigint, state jsonb, expires_at timestamptz)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    t cdp.computed_traits;
    since timestamptz;
BEGIN
    SELECT * INTO t FROM cdp.computed_traits c WHERE c.id = trait_states_from_events.trait_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    since := CASE WHEN t.time_window IS NOT NULL THEN now() - t.time_window END;
    -- events stored without a profile (profile_id NULL, or 0 where cdp.events
    -- is distributed by it) count for nobody
    IF profile_ids IS NULL THEN
        RETURN QUERY
        SELECT s.profile_id, s.state, cdp.trait_state_expires(s.state, t.time_window)
          FROM (SELECT e.profile_id,
                       cdp.trait_state_agg(t.kind, t.property, t.filter, t.time_window, e.ts, e.properties) AS state
                  FROM cdp.events e
                 WHERE e.type = 'track' AND e.profile_id <> 0
                   AND (t.event IS NULL OR e.event = t.event)
                   AND (since IS NULL OR e.ts > since)
                 GROUP BY e.profile_id) s
         WHERE s.state IS NOT NULL;
    ELSE
        RETURN QUERY
        SELECT s.profile_id, s.state, cdp.trait_state_expires(s.state, t.time_window)
          FROM (SELECT e.profile_id,
                       cdp.trait_state_agg(t.kind, t.property, t.filter, t.time_window, e.ts, e.properties) AS state
                  FROM cdp.events e
                 WHERE e.profile_id = ANY (profile_ids) AND e.type = 'track'
                   AND (t.event IS NULL OR e.event = t.event)
                   AND (since IS NULL OR e.ts > since)
                 GROUP BY e.profile_id) s
         WHERE s.state IS NOT NULL;
    END IF;
END
$$;

-- Count a trait again from the events of the given stored profile ids (all
-- when NULL): their states are replaced.  Returns how many states it made.
CREATE FUNCTION cdp.recount_trait(trait_id int, profile_ids bigint[])
RETURNS int
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    n int;
BEGIN
    PERFORM cdp.remove_trait_states(recount_trait.trait_id, profile_ids);
    INSERT INTO cdp.trait_states AS s (profile_id, states, expires_at)
    SELECT f.profile_id, jsonb_build_object(recount_trait.trait_id::text, f.state), f.expires_at
      FROM cdp.trait_states_from_events(recount_trait.trait_id, profile_ids) f
     ORDER BY f.profile_id
    ON CONFLICT (profile_id) DO UPDATE
       SET states = s.states || excluded.states, expires_at = LEAST(s.expires_at, excluded.expires_at);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Audiences (76_audiences.sql) evaluate these profiles when the transaction
-- commits (src/audiences/audience_eval.c).
CREATE FUNCTION cdp.profiles_changed(profile_ids bigint[])
RETURNS void
AS 'MODULE_PATHNAME', 'cdp_profiles_changed'
LANGUAGE C STRICT;
COMMENT ON FUNCTION cdp.profiles_changed(bigint[]) IS
    'internal: evaluate these profiles'' audience memberships when the transaction commits';

-- Derive the computed values of the canonical profiles of the given profile
-- ids from the states of their members (the profile and those merged into
-- it); a profile merged away or gone loses its values (not its states).
CREATE FUNCTION cdp.refresh_computed_traits(profile_ids bigint[])
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, cdp
BEGIN ATOMIC
    -- the rows it writes, locked in one pass in profile order (as ingest and
    -- a background backfill step write theirs), so that no two writers wait
    -- for each other's rows
    SELECT count(*) FROM (SELECT FROM cdp.trait_states s
                           WHERE s.profile_id = ANY (profile_ids)
                              OR s.profile_id IN (SELECT r.merged_into FROM cdp.profile_records r
                                                   WHERE r.profile_id = ANY (profile_ids))
                           ORDER BY s.profile_id FOR UPDATE) l;
    UPDATE cdp.trait_states s SET traits = NULL, traits_updated_at = NULL
     WHERE s.profile_id = ANY (profile_ids) AND s.traits IS NOT NULL
       AND NOT EXISTS (SELECT FROM cdp.profile_records r
                        WHERE r.profile_id = s.profile_id AND r.merged_into IS NULL);
    DELETE FROM cdp.trait_states s
     WHERE s.profile_id = ANY (profile_ids) AND s.states = '{}' AND s.traits IS NULL;
    INSERT INTO cdp.trait_states AS s (profile_id, states, traits, traits_updated_at)
    SELECT c.id, '{}',
           coalesce((SELECT jsonb_object_agg(v.name, v.value)
                       FROM (SELECT t.name,
                                    cdp.trait_union_value(t.kind, e.value) AS value
                               FROM (SELECT c.id AS member
                                     UNION ALL
                                     SELECT m.profile_id FROM cdp.profile_records m
                                      WHERE m.merged_into = c.id) mem
                               -- a join, not IN: each member's states by index,
                               -- never a scan of every state per profile
                               JOIN cdp.trait_states x ON x.profile_id = mem.member
                               CROSS JOIN LATERAL jsonb_each(x.states) e
                               JOIN cdp.computed_traits t ON t.id = e.key::int AND t.status = 'live'
                              GROUP BY t.id, t.name, t.kind) v
                      WHERE v.value IS NOT NULL), '{}'),
           now()
      FROM (SELECT DISTINCT coalesce(r.merged_into, r.profile_id) AS id
              FROM cdp.profile_records r
             WHERE r.profile_id = ANY (profile_ids)
             ORDER BY 1) c
    ON CONFLICT (profile_id) DO UPDATE
       SET traits = excluded.traits, traits_updated_at = excluded.traits_updated_at
     WHERE s.traits IS DISTINCT FROM excluded.traits;
END;
COMMENT ON FUNCTION cdp.refresh_computed_traits(bigint[]) IS
    'internal: derive cdp.profile_computed of the canonical profiles of these profile ids from their states';

-- Recompute the states of every trait for the given stored profile ids from
-- their events (forget erased some), then their canonical values.
CREATE FUNCTION cdp.recompute_trait_states(profile_ids bigint[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    t int;
BEGIN
    DELETE FROM cdp.trait_states s WHERE s.profile_id = ANY (profile_ids);
    FOR t IN SELECT c.id FROM cdp.computed_traits c ORDER BY c.id LOOP
        PERFORM cdp.recount_trait(t, profile_ids);
    END LOOP;
    PERFORM cdp.refresh_computed_traits(profile_ids);
    PERFORM cdp.profiles_changed(profile_ids);
END
$$;
COMMENT ON FUNCTION cdp.recompute_trait_states(bigint[]) IS
    'internal: recompute computed trait states of these stored profile ids from their events';

-- Count a trait that has no states yet over every stored event, its states
-- and its values in bulk (src/audiences/computed_trait_backfill.c); returns how many
-- states.  The caller keeps ingest out meanwhile.
CREATE FUNCTION cdp.backfill_trait(trait_id int)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cdp_backfill_trait'
LANGUAGE C STRICT;
COMMENT ON FUNCTION cdp.backfill_trait(int) IS
    'internal: count a trait without states over every stored event, states and values at once';

-- The values of a trait whose states are all stored and none of whose values
-- is, in bulk (src/audiences/computed_trait_backfill.c).
CREATE FUNCTION cdp.publish_trait_values(trait_id int)
RETURNS void
AS 'MODULE_PATHNAME', 'cdp_publish_trait_values'
LANGUAGE C STRICT;
COMMENT ON FUNCTION cdp.publish_trait_values(int) IS
    'internal: write the values of a trait whose states are all stored';

-- A backfilled trait's values into every canonical profile, at once; it is
-- live from then on, and its audiences follow at commit.
CREATE FUNCTION cdp.publish_trait(trait_id int)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    t cdp.computed_traits;
BEGIN
    -- batches in flight (storing states of it without its values) finish
    -- first; later ones see it live and write its values themselves
    LOCK TABLE cdp.computed_traits IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO t FROM cdp.computed_traits c WHERE c.id = publish_trait.trait_id;
    UPDATE cdp.trait_states s SET traits = s.traits - t.name, traits_updated_at = now()
     WHERE s.traits ? t.name;
    -- audiences follow at commit for every profile given a value
    PERFORM cdp.publish_trait_values(t.id);
    UPDATE cdp.computed_traits c SET status = 'live', backfilled_at = clock_timestamp() WHERE c.id = t.id;
END
$$;

-- One step of the background backfill (the maintenance worker calls it, each
-- in its own transaction): count one more partition of the first trait
-- being backfilled; then make ingest count it (a short exclusive lock waits
-- for batches in flight); then count again, from their events, up to 1000
-- profiles its events reached meanwhile; then publish it.  Returns what it
-- did, NULL when nothing is left.
CREATE FUNCTION cdp.backfill_step()
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    t cdp.computed_traits;
    part regclass;
    since timestamptz;
    ids bigint[];
BEGIN
    SELECT * INTO t FROM cdp.computed_traits c WHERE c.status <> 'live' ORDER BY c.id LIMIT 1
       FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF t.status = 'backfilling' AND t.backfill_done < coalesce(cardinality(t.backfill_partitions), 0) THEN
        part := t.backfill_partitions[t.backfill_done + 1];
        since := CASE WHEN t.time_window IS NOT NULL THEN now() - t.time_window END;
        -- a partition dropped since, or wholly before the window, has nothing to
        -- count; events without a profile (NULL, or 0 when distributed) count for nobody
        IF EXISTS (SELECT FROM cdp.partition_bounds() p WHERE p.partition = part
                                                  AND (since IS NULL OR p.range_to > since)) THEN
            EXECUTE format($q$
                INSERT INTO cdp.trait_states AS s (profile_id, states, expires_at)
                SELECT x.profile_id, jsonb_build_object($1::text, x.state), cdp.trait_state_expires(x.state, $6)
                  FROM (SELECT e.profile_id, cdp.trait_state_agg($2, $3, $4, $6, e.ts, e.properties) AS state
                          FROM %s e
                         WHERE e.type = 'track' AND e.profile_id <> 0
                           AND ($5::text IS NULL OR e.event = $5)
                           AND ($7::timestamptz IS NULL OR e.ts > $7)
                         GROUP BY e.profile_id) x
                 WHERE x.state IS NOT NULL
                 ORDER BY x.profile_id
                ON CONFLICT (profile_id) DO UPDATE
                   SET states = s.states || jsonb_build_object($1::text,
                                   cdp.trait_state_merge($2, s.states -> $1::text, excluded.states -> $1::text)),
                       expires_at = LEAST(s.expires_at, excluded.expires_at)$q$, part)
            USING t.id, t.kind, t.property, t.filter, t.event, t.time_window, since;
        END IF;
        UPDATE cdp.computed_traits c SET backfill_done = c.backfill_done + 1 WHERE c.id = t.id;
        RETURN format('%s: counted %s', t.name, part);
    END IF;
    IF t.status = 'backfilling' THEN
        -- batches in flight finish first; later ones count this trait
        LOCK TABLE cdp.computed_traits IN SHARE ROW EXCLUSIVE MODE;
        UPDATE cdp.computed_traits c SET status = 'catching_up' WHERE c.id = t.id;
        RETURN format('%s: counting at ingest', t.name);
    END IF;
    ids := ARRAY(SELECT d.profile_id FROM cdp.trait_dirty d WHERE d.trait_id = t.id
                  ORDER BY d.profile_id LIMIT 1000);
    IF ids <> '{}' THEN
        -- under the profiles' row locks, as ingest holds them
        PERFORM FROM cdp.profile_records r
          WHERE r.profile_id = ANY (ids)
             OR r.profile_id IN (SELECT x.merged_into FROM cdp.profile_records x
                                  WHERE x.profile_id = ANY (ids) AND x.merged_into IS NOT NULL)
          ORDER BY r.profile_id FOR UPDATE;
        PERFORM cdp.recount_trait(t.id, ids);
        DELETE FROM cdp.trait_dirty d WHERE d.trait_id = t.id AND d.profile_id = ANY (ids);
        RETURN format('%s: counted again %s profiles its events reached meanwhile', t.name, cardinality(ids));
    END IF;
    PERFORM cdp.publish_trait(t.id);
    RETURN format('%s: live', t.name);
END
$$;
COMMENT ON FUNCTION cdp.backfill_step() IS
    'one step of backfilling computed traits in the background (the maintenance worker runs it)';

CREATE VIEW cdp.computed_trait_status AS
SELECT c.name, c.status, c.defined_at, c.backfilled_at,
       c.backfill_done AS partitions_done, cardinality(c.backfill_partitions) AS partitions_total,
       (SELECT count(*) FROM cdp.trait_dirty d WHERE d.trait_id = c.id) AS profiles_to_recount
  FROM cdp.computed_traits c;
COMMENT ON VIEW cdp.computed_trait_status IS
    'computed traits and how far their backfill has come';

-- A trait's values leave cdp.profile_computed: a profile left with no value
-- has none (NULL, readers take it as no values), and a row left with no
-- state either goes (a backfill then inserts rows, which costs less than
-- updating them).
CREATE FUNCTION cdp.remove_trait_values(trait_name text)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, cdp
BEGIN ATOMIC
    DELETE FROM cdp.trait_states s
     WHERE s.traits ? trait_name AND s.traits - trait_name = '{}'::jsonb AND s.states = '{}'::jsonb;
    UPDATE cdp.trait_states s
       SET traits = nullif(s.traits - trait_name, '{}'::jsonb), traits_updated_at = now()
     WHERE s.traits ? trait_name;
END;
COMMENT ON FUNCTION cdp.remove_trait_values(text) IS
    'internal: remove a computed trait''s values from cdp.profile_computed';

-- Define a computed trait, or change one; either way it is backfilled over
-- every stored event before this returns.  Ingest waits meanwhile (it holds
-- ROW EXCLUSIVE on cdp.computed_traits while it stores events), so no event
-- is counted twice or missed.
CREATE FUNCTION cdp.define_computed_trait(name text, kind text, event text DEFAULT NULL,
                                          property text DEFAULT NULL,
                                          time_window interval DEFAULT NULL,
                                          filter jsonb DEFAULT NULL,
                                          purpose text DEFAULT 'analytics')
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    tid int;
    old cdp.computed_traits;
    had bigint[] := '{}';
BEGIN
    IF name IS NULL OR name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid computed trait name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A computed trait name is 1 to 63 characters: lower-case letters, digits and underscores, starting with a letter.';
    END IF;
    PERFORM cdp.check_trait_spec(kind, property, filter);
    IF NOT EXISTS (SELECT FROM cdp.purposes p WHERE p.name = define_computed_trait.purpose) THEN
        RAISE EXCEPTION 'purpose "%" does not exist', purpose
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Define it first with cdp.define_purpose().';
    END IF;
    IF time_window IS NOT NULL AND (now() + time_window <= now() OR now() - time_window >= now()) THEN
        RAISE EXCEPTION 'time_window must be positive, not %', time_window
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF event = '' THEN
        RAISE EXCEPTION 'event must not be empty'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'NULL means every track event.';
    END IF;
    IF EXISTS (SELECT FROM cdp.trait_definitions d WHERE d.name = define_computed_trait.name) THEN
        RAISE EXCEPTION 'a declared trait is already named "%"', name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Computed and declared traits share the profile views'' columns: choose another name.';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'cdp.define_computed_trait must run at READ COMMITTED, not %',
                        upper(current_setting('transaction_isolation'))
            USING ERRCODE = 'active_sql_transaction',
                  HINT = 'The backfill must see every event committed before it; run it in its own transaction.';
    END IF;

    -- no batch stores events until this commits: the backfill sees them all
    LOCK TABLE cdp.computed_traits IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO old FROM cdp.computed_traits c WHERE c.name = define_computed_trait.name;
    IF FOUND THEN
        IF (old.kind, old.event, old.property, old.time_window, old.filter, old.purpose)
           IS NOT DISTINCT FROM (kind, event, property, time_window, filter, purpose) THEN
            RETURN;
        END IF;
        UPDATE cdp.computed_traits c
           SET kind = define_computed_trait.kind, event = define_computed_trait.event,
               property = define_computed_trait.property,
               time_window = define_computed_trait.time_window,
               filter = define_computed_trait.filter, purpose = define_computed_trait.purpose,
               defined_at = now(), backfilled_at = NULL
         WHERE c.id = old.id;
        tid := old.id;
        had := ARRAY(SELECT pc.profile_id FROM cdp.profile_computed pc WHERE pc.traits ? old.name);
        PERFORM cdp.remove_trait_states(tid, NULL);
        PERFORM cdp.remove_trait_values(old.name);
    ELSE
        INSERT INTO cdp.computed_traits (name, kind, event, property, time_window, filter, purpose)
        VALUES (name, kind, event, property, time_window, filter, purpose)
        RETURNING id INTO tid;
    END IF;

    -- with the maintenance worker running, the backfill is its: this returns
    -- at once and cdp.computed_trait_status shows the progress
    IF cdp.maintenance_running() THEN
        PERFORM cdp.remove_trait_states(tid, NULL);
        DELETE FROM cdp.trait_dirty d WHERE d.trait_id = tid;
        UPDATE cdp.computed_traits c
           SET status = 'backfilling', backfill_done = 0,
               backfill_partitions = ARRAY(SELECT p.partition FROM cdp.partition_bounds() p ORDER BY p.range_from)
         WHERE c.id = tid;
        PERFORM cdp.refresh_generated_views();
        PERFORM cdp.profiles_changed(had);
        RETURN;
    END IF;
    -- every stored event at once (ingest waits on the lock taken above)
    PERFORM cdp.backfill_trait(tid);
    UPDATE cdp.computed_traits c SET status = 'live', backfilled_at = clock_timestamp() WHERE c.id = tid;
    PERFORM cdp.profiles_changed(had);
    -- profile views gain (or retype) its column
    PERFORM cdp.refresh_generated_views();
END
$$;
COMMENT ON FUNCTION cdp.define_computed_trait(text, text, text, text, interval, jsonb, text) IS
    'define (or change) a computed trait and backfill it over every stored event';

CREATE FUNCTION cdp.drop_computed_trait(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    tid int;
    user_name text;
BEGIN
    LOCK TABLE cdp.computed_traits IN SHARE ROW EXCLUSIVE MODE;
    SELECT a.name INTO user_name FROM cdp.audiences a
     WHERE drop_computed_trait.name = ANY ((cdp.audience_condition_info(a.condition)).traits) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'computed trait "%" is used by audience "%"', name, user_name
            USING ERRCODE = 'dependent_objects_still_exist';
    END IF;
    DELETE FROM cdp.computed_traits c WHERE c.name = drop_computed_trait.name RETURNING id INTO tid;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'computed trait "%" does not exist', name
            USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM cdp.remove_trait_states(tid, NULL);
    PERFORM cdp.remove_trait_values(drop_computed_trait.name);
    PERFORM cdp.refresh_generated_views();
END
$$;
COMMENT ON FUNCTION cdp.drop_computed_trait(text) IS
    'drop a computed trait and its values';

-- Windowed traits whose oldest counted event left the window: recompute
-- those states from the events still in it, under the profiles' row locks
-- (as ingest takes them), oldest first, those of at most max_states stored
-- profile ids.  The maintenance worker calls it several times a second;
-- returns how many states it recomputed.
CREATE FUNCTION cdp.expire_computed_traits(max_states int DEFAULT 1000)
RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    due record;
    pids bigint[];
    n int := 0;
BEGIN
    pids := ARRAY(SELECT s.profile_id FROM cdp.trait_states s
                   WHERE s.expires_at <= now()
                   ORDER BY s.expires_at LIMIT max_states);
    IF pids = '{}' THEN
        RETURN 0;
    END IF;
    PERFORM FROM cdp.profile_records r
      WHERE r.profile_id = ANY (pids)
         OR r.profile_id IN (SELECT x.merged_into FROM cdp.profile_records x
                              WHERE x.profile_id = ANY (pids) AND x.merged_into IS NOT NULL)
      ORDER BY r.profile_id FOR UPDATE;
    -- under the locks: what is still due now
    FOR due IN SELECT t.id AS trait_id, array_agg(s.profile_id ORDER BY s.profile_id) AS ids
                 FROM cdp.trait_states s
                CROSS JOIN LATERAL jsonb_each(s.states) e
                 JOIN cdp.computed_traits t ON t.id = e.key::int
                WHERE s.profile_id = ANY (pids) AND s.expires_at <= now()
                  AND cdp.trait_state_expires(e.value, t.time_window) <= now()
                GROUP BY t.id ORDER BY t.id LOOP
        PERFORM cdp.recount_trait(due.trait_id, due.ids);
        n := n + cardinality(due.ids);
    END LOOP;
    -- a row due with no state due (none should be) gets its true expiry,
    -- rather than being taken again and again
    UPDATE cdp.trait_states s SET expires_at = cdp.trait_states_expiry(s.states)
     WHERE s.profile_id = ANY (pids) AND s.expires_at <= now();
    PERFORM cdp.refresh_computed_traits(pids);
    PERFORM cdp.profiles_changed(pids);
    RETURN n;
END
$$;
COMMENT ON FUNCTION cdp.expire_computed_traits(int) IS
    'recompute windowed computed traits whose oldest event left the window';

-- What a person's computed traits are, by name (count and unique_count 0
-- when nothing matched).
CREATE FUNCTION cdp.computed_traits_of(profile_id bigint)
RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
    SELECT coalesce(jsonb_object_agg(t.name, coalesce(pc.traits->t.name,
                                                      CASE WHEN t.kind IN ('count', 'unique_count')
                                                           THEN '0'::jsonb ELSE 'null'::jsonb END)
                                     ORDER BY t.name), '{}')
      FROM cdp.computed_traits t
      LEFT JOIN cdp.profile_computed pc
        ON pc.profile_id = coalesce((SELECT r.merged_into FROM cdp.profile_records r
                                      WHERE r.profile_id = computed_traits_of.profile_id),
                                    computed_traits_of.profile_id)
$$;
COMMENT ON FUNCTION cdp.computed_traits_of(bigint) IS
    'the computed trait values of a profile (a merged-away id answers for its canonical profile)';
