-- Audiences: named conditions over a profile's traits (declared and
-- computed) and other audiences.  Memberships are evaluated once per
-- transaction, at commit, for the profiles it changed (src/audiences/audience_eval.c),
-- so an audience never both admits and drops a person in one transaction;
-- every entry and exit is kept (cdp.audience_history), and those of people
-- who granted the audience's purpose go to the change feed: the outbox
-- cdp.audience_changes and pg_logical_emit_message (prefix 'cdp').

CREATE TABLE cdp.audiences (
    id          int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    condition   text NOT NULL CHECK (octet_length(condition) <= 10000),
    purpose     text NOT NULL,
    uses        text[] NOT NULL DEFAULT '{}',   -- the audiences its condition names
    expression  text NOT NULL,                  -- the condition with those inlined
    defined_at  timestamptz NOT NULL DEFAULT now(),
    last_error  text,                           -- why its last evaluation failed, if it did
    last_error_at timestamptz
);
COMMENT ON TABLE cdp.audiences IS
    'audiences: conditions over traits whose members pg_cdp keeps current';

-- One row per stay of a profile in an audience; exited_at NULL while it lasts.
-- announced: the entry went to the change feed (the person had granted the
-- audience's purpose), so the exit does too.
CREATE TABLE cdp.audience_spans (
    audience_id int NOT NULL,
    profile_id  bigint NOT NULL,
    entered_at  timestamptz NOT NULL,
    exited_at   timestamptz,
    announced   bool NOT NULL
);
CREATE UNIQUE INDEX audience_spans_current ON cdp.audience_spans (audience_id, profile_id)
    WHERE exited_at IS NULL;
CREATE INDEX audience_spans_profile ON cdp.audience_spans (profile_id);

CREATE VIEW cdp.audience_members AS
SELECT a.name AS audience, s.profile_id, s.entered_at
  FROM cdp.audience_spans s JOIN cdp.audiences a ON a.id = s.audience_id
 WHERE s.exited_at IS NULL;
COMMENT ON VIEW cdp.audience_members IS 'who is in each audience now';

CREATE VIEW cdp.audience_history AS
SELECT a.name AS audience, s.profile_id, s.entered_at, s.exited_at
  FROM cdp.audience_spans s JOIN cdp.audiences a ON a.id = s.audience_id;
COMMENT ON VIEW cdp.audience_history IS 'every stay of a profile in an audience';

-- The outbox: entries and exits of people who granted the audience's
-- purpose.  A consumer reads rows in id order and deletes (acknowledges)
-- those it handled (cdp.ack_audience_changes).  A profile's changes are
-- made under its row lock, so its rows' ids follow commit order.
CREATE TABLE cdp.audience_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    audience    text NOT NULL,
    profile_id  bigint NOT NULL,
    change      text NOT NULL CHECK (change IN ('entered', 'exited')),
    at          timestamptz NOT NULL
);
COMMENT ON TABLE cdp.audience_changes IS
    'change feed outbox: audience entries and exits of consenting people, until acknowledged';

-- One row per transaction that changed profiles while audiences exist; its
-- deferred trigger evaluates them at commit.
CREATE UNLOGGED TABLE cdp.audience_pending (
    tx xid8 NOT NULL DEFAULT pg_current_xact_id()
);

CREATE FUNCTION cdp.audiences_at_commit()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cdp_audiences_at_commit'
LANGUAGE C;
CREATE CONSTRAINT TRIGGER audiences_at_commit AFTER INSERT ON cdp.audience_pending
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION cdp.audiences_at_commit();
ALTER TABLE cdp.audience_pending ENABLE ALWAYS TRIGGER audiences_at_commit;

CREATE FUNCTION cdp.audience_condition_info(condition text, OUT traits text[],
                                            OUT audiences text[], OUT parts text[])
AS 'MODULE_PATHNAME', 'cdp_audience_condition_info'
LANGUAGE C IMMUTABLE STRICT;

-- A declared trait's column template: a domain's NULL through a subquery
-- that yields no row, so that its NOT NULL or CHECK never runs on it.
CREATE FUNCTION cdp.trait_column_template(type regtype)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, cdp
RETURN (SELECT CASE WHEN y.typtype = 'd' THEN format('(SELECT NULL::%s WHERE false)', format_type(y.oid, NULL))
                    ELSE format('NULL::%s', format_type(y.oid, NULL)) END
          FROM pg_type y WHERE y.oid = type);

-- A computed trait's typed column over cdp.profile_computed pc.
CREATE FUNCTION cdp.computed_trait_column(kind text, name text)
RETURNS text
LANGUAGE sql IMMUTABLE
RETURN CASE WHEN kind IN ('count', 'unique_count') THEN format('coalesce((pc.traits->>%L)::bigint, 0)', name)
            WHEN kind IN ('sum', 'avg', 'min', 'max') THEN format('(pc.traits->>%L)::numeric', name)
            ELSE format('(pc.traits->%L)', name) END;

-- The row conditions read, for the canonical profiles among $1 (all when
-- all_profiles): profile_id, consent and every trait as a typed column.
CREATE FUNCTION cdp.audience_row_query(all_profiles bool DEFAULT false)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    columns text;
BEGIN
    SELECT string_agg(c, ', ' ORDER BY o) INTO columns
      FROM (SELECT format('cdp.trait_as(r.traits, %L, %s) AS %I', d.name,
                          cdp.trait_column_template(d.type), d.name) AS c, 1 AS g, d.position AS o
              FROM cdp.trait_definitions d
            UNION ALL
            SELECT format('%s AS %I', cdp.computed_trait_column(t.kind, t.name), t.name), 2, t.id
              FROM cdp.computed_traits t
             ORDER BY 2, 3) x;
    RETURN format('SELECT r.profile_id, r.consent%s FROM cdp.profile_records r '
                  'LEFT JOIN cdp.profile_computed pc ON pc.profile_id = r.profile_id '
                  'WHERE r.merged_into IS NULL%s',
                  CASE WHEN columns IS NULL THEN '' ELSE ', ' || columns END,
                  CASE WHEN all_profiles THEN '' ELSE ' AND r.profile_id = ANY ($1)' END);
END
$$;

-- An expression with every in_audience('x') replaced by x's expression
-- (which has its own replaced already).
CREATE FUNCTION cdp.inline_audiences(expr text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    used record;
BEGIN
    FOR used IN SELECT y.name, y.expression FROM cdp.audiences y ORDER BY y.id LOOP
        expr := regexp_replace(expr, format('in_audience\s*\(\s*''%s''\s*\)', used.name),
                               replace(format(E'(\n%s\n)', used.expression), '\', '\\'), 'gi');
    END LOOP;
    RETURN expr;
END
$$;

-- Each audience's expression again, from its condition (audiences are
-- acyclic: in order of how deep their uses go).
CREATE FUNCTION cdp.compile_audiences()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    a record;
BEGIN
    FOR a IN WITH RECURSIVE depth (id, d) AS (
                 SELECT x.id, 0 FROM cdp.audiences x WHERE x.uses = '{}'
                 UNION ALL
                 SELECT x.id, depth.d + 1 FROM cdp.audiences x, depth, cdp.audiences y
                  WHERE y.id = depth.id AND y.name = ANY (x.uses) AND depth.d < 100)
             SELECT x.id, x.condition FROM cdp.audiences x JOIN depth ON depth.id = x.id
              GROUP BY x.id ORDER BY max(depth.d), x.id LOOP
        UPDATE cdp.audiences x SET expression = cdp.inline_audiences(a.condition) WHERE x.id = a.id;
    END LOOP;
END
$$;

-- Writes the stays that begin and the change feed's rows (emitted as
-- logical messages too) of an evaluation, in the order given; returns the
-- number of feed rows (audience_feed.c).
CREATE FUNCTION cdp.audience_changes_step(internal, int, text, bigint, bool, bool, text)
RETURNS internal
AS 'MODULE_PATHNAME', 'cdp_audience_changes_step'
LANGUAGE C VOLATILE;
CREATE FUNCTION cdp.audience_changes_final(internal)
RETURNS bigint
AS 'MODULE_PATHNAME', 'cdp_audience_changes_final'
LANGUAGE C VOLATILE;
CREATE AGGREGATE cdp.write_audience_changes(audience_id int, audience text, profile_id bigint,
                                            begins bool, announced bool, change text) (
    SFUNC = cdp.audience_changes_step,
    STYPE = internal,
    FINALFUNC = cdp.audience_changes_final,
    FINALFUNC_MODIFY = READ_WRITE
);
COMMENT ON AGGREGATE cdp.write_audience_changes(int, text, bigint, bool, bool, text) IS
    'internal: writes the stays that begin and the change feed rows of an audience evaluation';

-- The statement that evaluates audiences (all of them, or only one) for the
-- profiles in $1 (all profiles when all_profiles): stays begin and end,
-- members who granted or withdrew the purpose since are announced or
-- withdrawn from the feed; cdp.write_audience_changes writes the stays that
-- begin and the feed's rows, and emits those as logical messages.  Its conditions are spliced in on lines of their own, checked
-- when defined to be one expression over the row.  A profile's row gives
-- the audiences it is in as one array, the id when it granted the
-- audience's purpose and minus the id when not (a VALUES list joined to
-- every profile would prepare its expressions again per profile).  Every
-- read of the stays names the profiles, so that a commit reads theirs, not
-- every current stay.
CREATE FUNCTION cdp.audience_evaluation_query(all_profiles bool, only_audience int DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    tests text;
    ids text;
BEGIN
    SELECT string_agg(format(E'CASE WHEN (\n%s\n) IS TRUE THEN CASE WHEN cdp.consent_granted(p.consent, %L) THEN %s ELSE %s END END',
                             a.expression, a.purpose, a.id, -a.id), E',\n' ORDER BY a.id),
           string_agg(a.id::text, ',' ORDER BY a.id)
      INTO tests, ids
      FROM cdp.audiences a
     WHERE only_audience IS NULL OR a.id = only_audience;
    IF tests IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN format($f$
        WITH p AS (%1$s),
        hit AS (SELECT x.profile_id, abs(x.v) AS audience_id, x.v > 0 AS granted
                  FROM (SELECT p.profile_id, unnest(ARRAY[%2$s]::int[]) AS v FROM p) x
                 WHERE x.v IS NOT NULL),
        ended AS (UPDATE cdp.audience_spans s SET exited_at = now()
                   WHERE s.audience_id IN (%3$s) AND s.exited_at IS NULL
                     AND ($1 IS NULL OR s.profile_id = ANY ($1))
                     AND NOT EXISTS (SELECT FROM hit h WHERE h.profile_id = s.profile_id
                                                         AND h.audience_id = s.audience_id)
                  RETURNING s.audience_id, s.profile_id, s.announced),
        began AS (SELECT h.audience_id, h.profile_id, h.granted FROM hit h
                   WHERE NOT EXISTS (SELECT FROM cdp.audience_spans s
                                      WHERE s.audience_id = h.audience_id AND s.profile_id = h.profile_id
                                        AND s.exited_at IS NULL
                                        AND ($1 IS NULL OR s.profile_id = ANY ($1)))),
        flipped AS (UPDATE cdp.audience_spans s SET announced = h.granted
                      FROM hit h
                     WHERE s.audience_id = h.audience_id AND s.profile_id = h.profile_id
                       AND s.exited_at IS NULL AND s.announced <> h.granted
                       AND ($1 IS NULL OR s.profile_id = ANY ($1))
                    RETURNING s.audience_id, s.profile_id, s.announced)
        SELECT coalesce(cdp.write_audience_changes(c.audience_id, a.name, c.profile_id, c.begins,
                                                   c.announced, c.change
                                                   ORDER BY c.profile_id, c.audience_id, c.change DESC), 0)
          FROM (SELECT audience_id, profile_id, false AS begins, NULL::bool AS announced,
                       'exited' AS change FROM ended WHERE announced
                UNION ALL
                SELECT audience_id, profile_id, true, granted, CASE WHEN granted THEN 'entered' END
                  FROM began
                UNION ALL
                SELECT audience_id, profile_id, false, NULL, CASE WHEN announced THEN 'entered' ELSE 'exited' END
                  FROM flipped) c
          JOIN cdp.audiences a ON a.id = c.audience_id
        $f$, cdp.audience_row_query(all_profiles), tests, ids);
END
$$;

-- Evaluate the memberships of these profiles (all when NULL): stays begin
-- and end, and the change feed gets those of people who granted the
-- audience's purpose (a member who grants it later enters the feed then; one
-- who withdraws it exits the feed, staying a member).  A profile merged away
-- or gone leaves its audiences.  Every audience in one statement; if one's
-- condition fails on some profile's values, each is evaluated alone and
-- that one skipped (its error kept in cdp.audiences.last_error).
CREATE FUNCTION cdp.evaluate_audiences(profile_ids bigint[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
-- the feed's changes are sorted in memory (a commit's few tens of
-- thousands), not in a file
SET work_mem = '32MB'
AS $$
DECLARE
    a record;
    q text;
    problem text;
    n bigint;
    fed bigint := 0;
BEGIN
    -- a definition in progress evaluates every profile: wait for it
    LOCK TABLE cdp.audiences IN ROW EXCLUSIVE MODE;
    q := cdp.audience_evaluation_query(profile_ids IS NULL);
    IF q IS NULL THEN
        RETURN 0;
    END IF;
    BEGIN
        EXECUTE q INTO n USING profile_ids;
        RETURN n;
    EXCEPTION WHEN OTHERS THEN
        NULL;                   -- one by one, below
    END;
    FOR a IN SELECT x.id FROM cdp.audiences x ORDER BY x.id LOOP
        BEGIN
            EXECUTE cdp.audience_evaluation_query(profile_ids IS NULL, a.id) INTO n USING profile_ids;
            fed := fed + n;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
            UPDATE cdp.audiences x SET last_error = problem, last_error_at = now() WHERE x.id = a.id;
        END;
    END LOOP;
    RETURN fed;
END
$$;
COMMENT ON FUNCTION cdp.evaluate_audiences(bigint[]) IS
    'internal: evaluate the audience memberships of these profiles (all when NULL) now; returns the changes written to the change feed';

-- Define an audience, or change its condition or purpose; memberships are
-- evaluated for every profile before this returns.
CREATE FUNCTION cdp.define_audience(name text, condition text, purpose text DEFAULT 'analytics')
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    info record;
    unknown text;
    q text;
BEGIN
    IF name IS NULL OR name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid audience name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'An audience name is 1 to 63 characters: lower-case letters, digits and underscores, starting with a letter.';
    END IF;
    IF condition IS NULL OR octet_length(condition) > 10000 THEN
        RAISE EXCEPTION 'an audience condition must be given, at most 10000 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT FROM cdp.purposes p WHERE p.name = define_audience.purpose) THEN
        RAISE EXCEPTION 'purpose "%" does not exist', purpose
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Define it first with cdp.define_purpose().';
    END IF;
    -- one definer at a time: the acyclic check sees every audience
    LOCK TABLE cdp.audiences IN SHARE ROW EXCLUSIVE MODE;
    info := cdp.audience_condition_info(condition);
    SELECT t INTO unknown FROM unnest(info.traits) t
     WHERE NOT EXISTS (SELECT FROM cdp.trait_definitions d WHERE d.name = t)
       AND NOT EXISTS (SELECT FROM cdp.computed_traits c WHERE c.name = t)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audience "%" names an unknown trait "%"', name, unknown
            USING ERRCODE = 'undefined_column',
                  HINT = 'Declare it with cdp.define_trait() or cdp.define_computed_trait().';
    END IF;
    SELECT u INTO unknown FROM unnest(info.audiences) u
     WHERE u = define_audience.name OR NOT EXISTS (SELECT FROM cdp.audiences a WHERE a.name = u)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%', CASE WHEN unknown = name THEN format('audience "%s" names itself', name)
                                  ELSE format('audience "%s" names an unknown audience "%s"', name, unknown) END
            USING ERRCODE = CASE WHEN unknown = name THEN 'invalid_recursion' ELSE 'undefined_object' END;
    END IF;
    -- a cycle: an audience it names uses it, directly or not
    IF EXISTS (WITH RECURSIVE reach (n) AS (
                   SELECT unnest(info.audiences)
                   UNION
                   SELECT unnest(a.uses) FROM cdp.audiences a JOIN reach ON a.name = reach.n)
               SELECT FROM reach WHERE n = define_audience.name) THEN
        RAISE EXCEPTION 'audience "%" would depend on itself through in_audience()', name
            USING ERRCODE = 'invalid_recursion';
    END IF;

    INSERT INTO cdp.audiences AS a (name, condition, purpose, uses, expression)
    VALUES (define_audience.name, define_audience.condition, define_audience.purpose, info.audiences,
            define_audience.condition)
    ON CONFLICT ON CONSTRAINT audiences_name_key DO UPDATE
       SET condition = excluded.condition, purpose = excluded.purpose, uses = excluded.uses,
           expression = excluded.expression, defined_at = now(), last_error = NULL, last_error_at = NULL;
    PERFORM cdp.compile_audiences();
    -- the condition must be a boolean over the row, whatever the values
    q := cdp.audience_row_query(true);
    EXECUTE format(E'SELECT (\n%s\n) IS TRUE FROM (%s) p LIMIT 0',
                   (SELECT a.expression FROM cdp.audiences a WHERE a.name = define_audience.name), q);
    PERFORM cdp.evaluate_audiences(NULL);
END
$$;
COMMENT ON FUNCTION cdp.define_audience(text, text, text) IS
    'define (or change) an audience: a condition over traits and in_audience(''other''); members evaluated at once';

CREATE FUNCTION cdp.drop_audience(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    gone cdp.audiences;
    user_name text;
BEGIN
    LOCK TABLE cdp.audiences IN SHARE ROW EXCLUSIVE MODE;
    SELECT a.name INTO user_name FROM cdp.audiences a WHERE drop_audience.name = ANY (a.uses) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audience "%" is used by audience "%"', name, user_name
            USING ERRCODE = 'dependent_objects_still_exist';
    END IF;
    DELETE FROM cdp.audiences a WHERE a.name = drop_audience.name RETURNING * INTO gone;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audience "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    DELETE FROM cdp.audience_spans s WHERE s.audience_id = gone.id;
END
$$;
COMMENT ON FUNCTION cdp.drop_audience(text) IS 'drop an audience and its memberships';

-- Each part of the audience's condition (its top-level AND/OR terms) with
-- the profile's value, the traits it reads with theirs, and the result.
CREATE FUNCTION cdp.explain_membership(audience text, profile_id bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    a cdp.audiences;
    info record;
    pid bigint;
    q text;
    part text;
    parts jsonb := '[]';
    traits jsonb;
    result bool;
    v bool;
BEGIN
    SELECT * INTO a FROM cdp.audiences x WHERE x.name = explain_membership.audience;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audience "%" does not exist', audience USING ERRCODE = 'undefined_object';
    END IF;
    pid := coalesce((SELECT r.merged_into FROM cdp.profile_records r WHERE r.profile_id = explain_membership.profile_id),
                    explain_membership.profile_id);
    q := cdp.audience_row_query(false);
    IF NOT EXISTS (SELECT FROM cdp.profile_records r WHERE r.profile_id = pid) THEN
        RETURN NULL;
    END IF;
    info := cdp.audience_condition_info(a.condition);
    FOREACH part IN ARRAY info.parts LOOP
        -- a part naming other audiences reads their expressions, as the condition does
        EXECUTE format(E'SELECT (\n%s\n) FROM (%s) p', cdp.inline_audiences(part), q)
           INTO v USING ARRAY[pid];
        parts := parts || jsonb_build_object('part', part, 'value', v);
    END LOOP;
    EXECUTE format('SELECT to_jsonb(p) FROM (%s) p', q) INTO traits USING ARRAY[pid];
    EXECUTE format(E'SELECT (\n%s\n) IS TRUE FROM (%s) p', a.expression, q) INTO result USING ARRAY[pid];
    RETURN jsonb_build_object(
        'audience', a.name, 'profile_id', pid, 'condition', a.condition, 'result', result,
        'member', EXISTS (SELECT FROM cdp.audience_spans s WHERE s.audience_id = a.id AND s.profile_id = pid
                           AND s.exited_at IS NULL),
        'parts', parts,
        'values', (SELECT coalesce(jsonb_object_agg(t, traits->t), '{}') FROM unnest(info.traits) t));
END
$$;
COMMENT ON FUNCTION cdp.explain_membership(text, bigint) IS
    'each part of an audience''s condition with the profile''s values, and whether it is a member';

-- The change feed's consumer: acknowledge (delete) handled changes.
CREATE FUNCTION cdp.ack_audience_changes(ids bigint[])
RETURNS bigint
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
    WITH d AS (DELETE FROM cdp.audience_changes c WHERE c.id = ANY (ids) RETURNING 1)
    SELECT count(*) FROM d
$$;
COMMENT ON FUNCTION cdp.ack_audience_changes(bigint[]) IS
    'acknowledge audience changes a consumer handled: they leave the outbox';
