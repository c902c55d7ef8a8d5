-- Identity resolution: rules, blocked values, profiles, identifiers, the
-- evidence they are derived from, and the record of merges, violations and
-- splits.  The algorithm is C (src/identity_*.c); see README "Identity".

CREATE TABLE cdp.identity_rules (
    id_type         text PRIMARY KEY CHECK (id_type = '*' OR id_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    priority        int NOT NULL CHECK (priority >= 1),
    max_per_profile int CHECK (max_per_profile >= 1),
    time_window     interval CHECK (time_window > interval '0')
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
    pattern  text NOT NULL CHECK (pattern <> ''),
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
    traits          jsonb NOT NULL DEFAULT '{}'
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
    message_id  text NOT NULL,      -- the first message that carried both
    observed_at timestamptz NOT NULL,
    seq         bigint NOT NULL,    -- its cdp.identity_evidence row
    PRIMARY KEY (a, b),
    CHECK (a OPERATOR(cdp.<) b)
);
COMMENT ON TABLE cdp.identity_pairs IS
    'every distinct pair of identifiers a message carried together (a < b), with the first message that did';

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

-- Events with profile_id replaced by the profile's current canonical id.
CREATE VIEW cdp.events_resolved AS
SELECT e.message_id, e.source, e.type, e.event, e.name,
       coalesce(p.merged_into, e.profile_id) AS profile_id,
       e.user_id, e.anonymous_id, e.group_id, e.previous_id, e.ts, e.original_timestamp,
       e.sent_at, e.received_at, e.properties, e.traits, e.context, e.extra
  FROM cdp.events e
  LEFT JOIN cdp.profile_records p ON p.profile_id = e.profile_id AND p.merged_into IS NOT NULL;
COMMENT ON VIEW cdp.events_resolved IS
    'cdp.events with profile_id following later merges (partitions are never rewritten)';

-- Functions over the graph (the algorithm is C).

CREATE FUNCTION cdp.resolve(id cdp.identifier)
RETURNS bigint
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$ SELECT i.profile_id FROM cdp.identities i WHERE i.identifier = resolve.id $$;
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

CREATE FUNCTION cdp.set_identity_rule(id_type text, priority int, max_per_profile int DEFAULT NULL,
                                      time_window interval DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    PERFORM cdp.check_id_type(id_type);
    IF priority IS NULL OR priority < 1 THEN
        RAISE EXCEPTION 'priority must be 1 or more (1 is the strongest), not %', priority
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_per_profile < 1 THEN
        RAISE EXCEPTION 'max_per_profile must be 1 or more, or NULL for no limit, not %', max_per_profile
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF time_window <= interval '0' THEN
        RAISE EXCEPTION 'time_window must be positive, or NULL for ever, not %', time_window
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO cdp.identity_rules AS r VALUES (id_type, priority, max_per_profile, time_window)
    ON CONFLICT ON CONSTRAINT identity_rules_pkey DO UPDATE
       SET priority = excluded.priority, max_per_profile = excluded.max_per_profile,
           time_window = excluded.time_window;
END
$$;
COMMENT ON FUNCTION cdp.set_identity_rule(text, int, int, interval) IS
    'set the priority, per-profile limit and time window of an identifier type';

CREATE FUNCTION cdp.block_identifier(id_type text, pattern text, is_regex bool DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    PERFORM cdp.check_id_type(id_type);
    IF pattern IS NULL OR pattern = '' THEN
        RAISE EXCEPTION 'pattern must not be empty' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF is_regex THEN
        BEGIN
            PERFORM '' ~* pattern;
        EXCEPTION WHEN invalid_regular_expression THEN
            RAISE EXCEPTION 'invalid regular expression "%"', pattern
                USING ERRCODE = 'invalid_regular_expression';
        END;
    END IF;
    INSERT INTO cdp.blocked_identifiers VALUES (id_type, pattern, coalesce(is_regex, false))
    ON CONFLICT DO NOTHING;
END
$$;
COMMENT ON FUNCTION cdp.block_identifier(text, text, bool) IS
    'never link on this value (matched case-insensitively; ''*'' for every type)';

