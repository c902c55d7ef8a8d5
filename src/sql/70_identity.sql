-- Identity resolution: rules, blocked values, profiles, identifiers, the
-- evidence they are derived from, and the record of merges, violations and
-- splits.  The algorithm is C (src/identity_*.c); see README "Identity".

-- Bounds of a rule (cdp.check_identity_rule says why each exists).
CREATE TABLE cdp.identity_rules (
    id_type         text PRIMARY KEY CHECK (id_type = '*' OR id_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    priority        int NOT NULL CHECK (priority BETWEEN 1 AND 1000),
    max_per_profile int CHECK (max_per_profile BETWEEN 1 AND 1000000),
    time_window     interval CHECK (time_window > interval '0' AND time_window <= interval '1000 years')
);
COMMENT ON TABLE cdp.identity_rules IS
    'per identifier type: priority (1 = strongest), max_per_profile (NULL = no limit), time_window (NULL = ever); ''*'' is every other type';
INSERT INTO cdp.identity_rules VALUES
    ('user_id', 1, 1, NULL),
    ('email', 2, 5, NULL),
    ('phone', 3, 5, NULL),
    ('device_id', 4, 100, NULL),
    ('anonymous_id', 5, 1000, NULL),
    ('*', 10, 5, NULL);

CREATE TABLE cdp.blocked_identifiers (
    id_type  text NOT NULL CHECK (id_type = '*' OR id_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    pattern  text NOT NULL CHECK (pattern <> '' AND octet_length(pattern) <= 1024),
    is_regex bool NOT NULL DEFAULT false,
    PRIMARY KEY (id_type, pattern, is_regex)
);
COMMENT ON TABLE cdp.blocked_identifiers IS
    'identifier values never used to link (placeholders like guest or 0); matched case-insensitively';
INSERT INTO cdp.blocked_identifiers (id_type, pattern)
SELECT '*', v FROM unnest(ARRAY['anonymous', 'guest', 'undefined', 'null', 'none', 'nan', '0', '-1',
    'true', 'false', '[object object]', 'id', 'user_id', 'distinct_id', 'not_authenticated',
    'email', 'test@test.com', 'test@example.com']) v;
INSERT INTO cdp.blocked_identifiers VALUES ('*', '^[0-]*$', true);

CREATE SEQUENCE cdp.profile_id_seq;

-- Every profile ever made.  A merged-away profile keeps its row with
-- merged_into pointing straight at the canonical profile (paths are
-- compressed on every merge), so events stored under it resolve in one step.
CREATE TABLE cdp.profile_records (
    profile_id      bigint PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    first_seen      timestamptz,
    last_seen       timestamptz,
    event_count     bigint NOT NULL DEFAULT 0,
    merges_absorbed int NOT NULL DEFAULT 0,
    merged_into     bigint,
    version         int NOT NULL DEFAULT 0,    -- bumped when identifiers leave (split, rebuild)
    -- where the profile stands when merges pick the oldest: the id the last
    -- rebuild's replay knew it by, when that differs from profile_id
    merge_rank      bigint,
    -- derived from the per-identifier stores (cdp.identifier_traits,
    -- cdp.identifier_consent) of the profile's identifiers: for each trait
    -- key the value with the latest event time, and its time (ISO 8601)
    traits          jsonb NOT NULL DEFAULT '{}',
    trait_times     jsonb NOT NULL DEFAULT '{}',
    -- per purpose the latest decision: {"granted": bool, "at": ISO time,
    -- "source": text, "message_id": text or null}; purposes without one
    -- take the purpose's default
    consent         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX profile_records_merged_into_idx ON cdp.profile_records (merged_into)
    WHERE merged_into IS NOT NULL;

CREATE VIEW cdp.profiles AS
SELECT profile_id, created_at, first_seen, last_seen, event_count, traits
  FROM cdp.profile_records
 WHERE merged_into IS NULL;
COMMENT ON VIEW cdp.profiles IS 'canonical profiles (merged-away ones are left out)';

-- Which canonical profile holds each identifier, and since when.
CREATE TABLE cdp.identities (
    identifier  cdp.identifier PRIMARY KEY,
    profile_id  bigint NOT NULL,
    linked_at   timestamptz NOT NULL,
    message_id  text
);
CREATE INDEX identities_profile_idx ON cdp.identities (profile_id);

-- The evidence, in two tables.  identity_pairs holds every distinct pair of
-- identifiers any message carried together (a < b), with the first message
-- that did: the real graph, which split_profile and explain_link walk.
-- identity_evidence holds, in ingest order, each message that changed the
-- graph or asserted a pair not yet in identity_pairs: rebuilds replay its
-- identifiers.  A message whose pairs are all known and that changes nothing
-- adds nothing, so both stay far smaller than the events.  identifiers is
-- what the message carried (valid ones, before blocking and rules); linked
-- is what it linked after them.
CREATE SEQUENCE cdp.identity_seq;
CREATE TABLE cdp.identity_evidence (
    seq             bigint PRIMARY KEY DEFAULT nextval('cdp.identity_seq'),
    message_id      text NOT NULL,
    observed_at     timestamptz NOT NULL,
    identifiers     cdp.identifier[] NOT NULL,
    linked          cdp.identifier[] NOT NULL,
    created_profile bigint,
    source          text
);

CREATE TABLE cdp.identity_pairs (
    a           cdp.identifier NOT NULL,
    b           cdp.identifier NOT NULL,
    message_id  text NOT NULL,      -- the first message that linked both (else carried both)
    observed_at timestamptz NOT NULL,
    seq         bigint NOT NULL,    -- its cdp.identity_evidence row
    PRIMARY KEY (a, b),
    CHECK (a OPERATOR(cdp.<) b)
);
COMMENT ON TABLE cdp.identity_pairs IS
    'every distinct pair of identifiers a message carried together (a < b), with the first message that linked both (the first that carried them while none did)';

CREATE TABLE cdp.merges (
    merged_at    timestamptz NOT NULL DEFAULT now(),
    from_profile bigint NOT NULL,
    into_profile bigint NOT NULL,
    message_id   text,
    reason       text NOT NULL
);
CREATE INDEX merges_from_idx ON cdp.merges (from_profile);
CREATE INDEX merges_into_idx ON cdp.merges (into_profile);

CREATE TABLE cdp.identity_violations (
    at          timestamptz NOT NULL DEFAULT now(),
    message_id  text,
    identifier  cdp.identifier,     -- NULL when the value could not form one
    rule        text NOT NULL,
    detail      text NOT NULL
);
CREATE INDEX identity_violations_at_idx ON cdp.identity_violations (at);

-- What split_profile took apart, applied by online resolution and every
-- rebuild: keep_out's evidence with any of members is ignored, and keep_out
-- never joins a profile holding one of anchors (one per resulting part).
CREATE TABLE cdp.identity_splits (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    keep_out   cdp.identifier NOT NULL,
    members    cdp.identifier[] NOT NULL,
    anchors    cdp.identifier[] NOT NULL,
    split_at   timestamptz NOT NULL DEFAULT now()
);

-- One row every writer of the identity graph (ingest that changes it, link,
-- split_profile, rebuild_identities) updates as soon as it holds the identity
-- lock.  Under READ COMMITTED each writer reads after that; a REPEATABLE READ
-- or SERIALIZABLE transaction whose snapshot is older than another writer's
-- commit fails right there (40001) instead of writing from a stale picture.
CREATE TABLE cdp.identity_clock (
    one   bool PRIMARY KEY DEFAULT true CHECK (one),
    ticks bigint NOT NULL
);
INSERT INTO cdp.identity_clock VALUES (true, 0);

-- Every backend caches the rules, blocked values and splits; a change to
-- their tables tells every backend to read them again once it commits.
CREATE FUNCTION cdp.identity_config_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cdp_identity_config_changed'
LANGUAGE C;
CREATE TRIGGER identity_rules_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON cdp.identity_rules FOR EACH STATEMENT EXECUTE FUNCTION cdp.identity_config_changed();
CREATE TRIGGER blocked_identifiers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON cdp.blocked_identifiers FOR EACH STATEMENT EXECUTE FUNCTION cdp.identity_config_changed();
CREATE TRIGGER identity_splits_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON cdp.identity_splits FOR EACH STATEMENT EXECUTE FUNCTION cdp.identity_config_changed();
ALTER TABLE cdp.identity_rules ENABLE ALWAYS TRIGGER identity_rules_changed;
ALTER TABLE cdp.blocked_identifiers ENABLE ALWAYS TRIGGER blocked_identifiers_changed;
ALTER TABLE cdp.identity_splits ENABLE ALWAYS TRIGGER identity_splits_changed;

-- Events with profile_id replaced by the profile's current canonical id;
-- NULL for events stored without a profile (profile_id 0 where cdp.events
-- is distributed by it, as a distribution column is never NULL).
-- Every profile record names its canonical id once (itself, or merged_into,
-- which always names the canonical profile: merges repoint their members),
-- so the events join those (member, canonical) pairs once.  A WHERE on
-- profile_id reaches profile_records' indexes (primary key, merged_into) in
-- the pairs' two branches, then the partitions' (profile_id, ts) index once
-- per member: a person's timeline reads each partition once.  One LEFT JOIN
-- computing coalesce(merged_into, profile_id) reads the same rows, but a
-- condition on that expression reaches no index (a timeline scanned every
-- event); an anti join for unmerged profiles beside a join for merged-away
-- ones reaches the indexes but reads every partition twice.  Events without
-- a profile (NULL, or 0 where cdp.events is distributed) are a branch of
-- their own with a constant NULL, which a condition on profile_id removes
-- at planning.  Every stored profile id has its record (cdp.forget erases
-- both), so the inner join drops no event.
CREATE VIEW cdp.events_resolved AS
SELECT e.message_id, e.source, e.type, e.event, e.name, m.canonical AS profile_id,
       e.user_id, e.anonymous_id, e.group_id, e.previous_id, e.ts, e.original_timestamp,
       e.sent_at, e.received_at, e.properties, e.traits, e.context, e.extra
  FROM (SELECT p.profile_id AS member, p.profile_id AS canonical
          FROM cdp.profile_records p
         WHERE p.merged_into IS NULL
        UNION ALL
        SELECT p.profile_id, p.merged_into
          FROM cdp.profile_records p
         WHERE p.merged_into IS NOT NULL) m
  JOIN cdp.events e ON e.profile_id = m.member
UNION ALL
SELECT e.message_id, e.source, e.type, e.event, e.name, NULL::bigint,
       e.user_id, e.anonymous_id, e.group_id, e.previous_id, e.ts, e.original_timestamp,
       e.sent_at, e.received_at, e.properties, e.traits, e.context, e.extra
  FROM cdp.events e
 WHERE e.profile_id IS NULL OR e.profile_id = 0;
COMMENT ON VIEW cdp.events_resolved IS
    'cdp.events with profile_id following later merges (partitions are never rewritten)';

-- Functions over the graph (the algorithm is C).

-- One probe of cdp.identities' primary key, in C (src/identity/identity_lookup.c):
-- the first step of every profile lookup.  It reads the table directly, so
-- whoever may EXECUTE it needs no privilege on cdp.identities.
CREATE FUNCTION cdp.resolve(id cdp.identifier)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cdp_resolve'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION cdp.resolve(cdp.identifier) IS
    'the canonical profile holding an identifier, NULL if unknown';

CREATE FUNCTION cdp.profile_identifiers(profile_id bigint)
RETURNS SETOF cdp.identifier
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
    SELECT i.identifier FROM cdp.identities i
     WHERE i.profile_id = coalesce((SELECT r.merged_into FROM cdp.profile_records r
                                     WHERE r.profile_id = profile_identifiers.profile_id),
                                   profile_identifiers.profile_id)
     ORDER BY i.identifier
$$;
COMMENT ON FUNCTION cdp.profile_identifiers(bigint) IS
    'the identifiers of a profile (a merged-away id answers for the profile that absorbed it)';

CREATE FUNCTION cdp.link(a cdp.identifier, b cdp.identifier, source text DEFAULT 'api')
RETURNS bigint
AS 'MODULE_PATHNAME', 'cdp_link'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, cdp;
COMMENT ON FUNCTION cdp.link(cdp.identifier, cdp.identifier, text) IS
    'add evidence that two identifiers are one person (CRM imports ...), under the identity rules';

CREATE FUNCTION cdp.explain_link(a cdp.identifier, b cdp.identifier)
RETURNS TABLE (step int, from_id cdp.identifier, to_id cdp.identifier, message_id text,
               linked_at timestamptz)
AS 'MODULE_PATHNAME', 'cdp_explain_link'
LANGUAGE C STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, cdp;
COMMENT ON FUNCTION cdp.explain_link(cdp.identifier, cdp.identifier) IS
    'the shortest chain of identifier pairs messages carried that joins two identifiers of one profile; no rows if they are apart';

CREATE FUNCTION cdp.split_profile(profile_id bigint, keep_out cdp.identifier)
RETURNS SETOF bigint
AS 'MODULE_PATHNAME', 'cdp_split_profile'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, cdp;
COMMENT ON FUNCTION cdp.split_profile(bigint, cdp.identifier) IS
    'take an identifier''s evidence out of a profile, recompute the rest; the split persists';

CREATE FUNCTION cdp.rebuild_identities(dry_run bool DEFAULT false)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cdp_rebuild_identities'
LANGUAGE C VOLATILE STRICT SECURITY DEFINER
SET search_path = pg_catalog, cdp;
COMMENT ON FUNCTION cdp.rebuild_identities(bool) IS
    'recompute every profile from the stored evidence with the current rules; dry_run only reports';

-- rules and blocks name a type, or '*' for every (other) type
CREATE FUNCTION cdp.check_id_type(id_type text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    IF id_type IS NULL OR (id_type <> '*' AND id_type !~ '^[a-z][a-z0-9_]{0,62}$') THEN
        RAISE EXCEPTION 'invalid identifier type "%"', id_type
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A type matches ^[a-z][a-z0-9_]{0,62}$, or is ''*'' for every type.';
    END IF;
END
$$;

-- Every rule row, however written (set_identity_rule or straight into the
-- table), is checked here, so no rule that cannot work reaches ingest:
-- priority at most 1000 (priorities only order the types), a limit of at
-- most a million (more is no limit: say NULL), and a time window of at most
-- 1000 years (the window is taken off event times from the year 1 on; NULL
-- means ever).  SECURITY DEFINER: whoever may write the table may have the
-- row checked, without EXECUTE on the checks it calls.
CREATE FUNCTION cdp.check_identity_rule()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    PERFORM cdp.check_id_type(NEW.id_type);
    IF NEW.priority IS NULL OR NEW.priority < 1 THEN
        RAISE EXCEPTION 'priority must be 1 or more (1 is the strongest), not %', coalesce(NEW.priority::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.priority > 1000 THEN
        RAISE EXCEPTION 'priority must be at most 1000, not %', NEW.priority
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Priorities only order the types: 1 is the strongest, other types default to 10.';
    END IF;
    IF NEW.max_per_profile < 1 THEN
        RAISE EXCEPTION 'max_per_profile must be 1 or more, or NULL for no limit, not %', NEW.max_per_profile
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.max_per_profile > 1000000 THEN
        RAISE EXCEPTION 'max_per_profile must be at most 1000000, or NULL for no limit, not %', NEW.max_per_profile
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.time_window <= interval '0' THEN
        RAISE EXCEPTION 'time_window must be positive, or NULL for ever, not %', NEW.time_window
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NEW.time_window > interval '1000 years' THEN
        RAISE EXCEPTION 'time_window must be at most 1000 years, or NULL for ever, not %', NEW.time_window
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Months count as 30 days, as interval comparison counts them.';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER identity_rules_check BEFORE INSERT OR UPDATE ON cdp.identity_rules
    FOR EACH ROW EXECUTE FUNCTION cdp.check_identity_rule();
ALTER TABLE cdp.identity_rules ENABLE ALWAYS TRIGGER identity_rules_check;

-- Every blocked value is checked when it is defined, never at ingest: a
-- regex must compile as ingest matches it (case-insensitive, C collation);
-- a plain value must be one an identifier of its type can have (a phone
-- block of "n/a" could never match: phones are digits).
CREATE FUNCTION cdp.check_blocked_identifier()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    problem text;
BEGIN
    PERFORM cdp.check_id_type(NEW.id_type);
    IF NEW.pattern IS NULL OR NEW.pattern = '' THEN
        RAISE EXCEPTION 'pattern must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(NEW.pattern) > 1024 THEN
        RAISE EXCEPTION 'pattern must be at most 1024 bytes, not %', octet_length(NEW.pattern)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'An identifier value is at most 1024 bytes.';
    END IF;
    IF NEW.is_regex IS NULL THEN
        NEW.is_regex := false;
    END IF;
    IF NEW.is_regex THEN
        BEGIN
            PERFORM '' COLLATE "C" ~* NEW.pattern;
        EXCEPTION WHEN invalid_regular_expression THEN
            GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
            RAISE EXCEPTION 'invalid regular expression "%"', NEW.pattern
                USING ERRCODE = 'invalid_regular_expression', DETAIL = problem;
        END;
    ELSE
        BEGIN
            PERFORM cdp.identifier(CASE WHEN NEW.id_type = '*' THEN 'x' ELSE NEW.id_type END, NEW.pattern);
        EXCEPTION WHEN invalid_text_representation THEN
            GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
            RAISE EXCEPTION 'pattern "%" can never be the value of % identifier', NEW.pattern,
                    CASE WHEN NEW.id_type = '*' THEN 'an' ELSE 'a ' || NEW.id_type END
                USING ERRCODE = 'invalid_parameter_value', DETAIL = problem;
        END;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER blocked_identifiers_check BEFORE INSERT OR UPDATE ON cdp.blocked_identifiers
    FOR EACH ROW EXECUTE FUNCTION cdp.check_blocked_identifier();
ALTER TABLE cdp.blocked_identifiers ENABLE ALWAYS TRIGGER blocked_identifiers_check;

CREATE FUNCTION cdp.set_identity_rule(id_type text, priority int, max_per_profile int DEFAULT NULL,
                                      time_window interval DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    -- cdp.check_identity_rule refuses what cannot work
    INSERT INTO cdp.identity_rules AS r VALUES (id_type, priority, max_per_profile, time_window)
    ON CONFLICT ON CONSTRAINT identity_rules_pkey DO UPDATE
       SET priority = excluded.priority, max_per_profile = excluded.max_per_profile,
           time_window = excluded.time_window;
END
$$;
COMMENT ON FUNCTION cdp.set_identity_rule(text, int, int, interval) IS
    'set the priority (1-1000), per-profile limit (1-1000000, NULL none) and time window (up to 1000 years, NULL ever) of an identifier type';

CREATE FUNCTION cdp.block_identifier(id_type text, pattern text, is_regex bool DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    -- cdp.check_blocked_identifier refuses what cannot work
    INSERT INTO cdp.blocked_identifiers VALUES (id_type, pattern, coalesce(is_regex, false))
    ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION cdp.block_identifier(text, text, bool) IS
    'never link on this value (matched case-insensitively; ''*'' for every type)';
