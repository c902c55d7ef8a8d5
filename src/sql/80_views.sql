-- Views for BI tools: declared traits, generated profile and event views that
-- hold only the people who granted the view's purpose (and only the traits
-- each purpose allows), and the roles that read or run pg_cdp.

-- A trait's stored JSON value as a SQL type, NULL when it does not convert
-- (never an error: writers set traits).  Only the template's type matters.
-- PARALLEL RESTRICTED: values no fast path converts use a subtransaction.
CREATE FUNCTION cdp.trait_as(value jsonb, template anyelement)
RETURNS anyelement
AS 'MODULE_PATHNAME', 'cdp_trait_as'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION cdp.trait_as(jsonb, anyelement) IS
    'a JSON value as the template''s type, NULL when it does not convert';

-- The same for traits->key, found in place: what profile views call.
CREATE FUNCTION cdp.trait_as(traits jsonb, key text, template anyelement)
RETURNS anyelement
AS 'MODULE_PATHNAME', 'cdp_trait_of'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION cdp.trait_as(jsonb, text, anyelement) IS
    'traits->key as the template''s type, NULL when absent or it does not convert';

-- Whether a profile's consent grants a purpose: its latest decision, else
-- the purpose's default, read from cdp.purposes when the view is queried
-- (so define_purpose changing a default needs no new view).
CREATE FUNCTION cdp.consent_granted(consent jsonb, purpose text)
RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_consent_granted'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION cdp.consent_granted(jsonb, text) IS
    'consent''s decision for purpose, else the purpose''s default (false for an unknown purpose)';

-- Declared traits, in the order views show them.
CREATE TABLE cdp.trait_definitions (
    name       text PRIMARY KEY
               CHECK (octet_length(name) BETWEEN 1 AND 63 AND name !~ '[[:cntrl:]"'';\\]' AND name <> 'profile_id'),
    type       regtype NOT NULL,
    purpose    text NOT NULL REFERENCES cdp.purposes (name),
    position   bigint GENERATED ALWAYS AS IDENTITY,
    defined_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE cdp.trait_definitions IS
    'declared traits: the SQL type of their view column and the purpose a person must grant for it to show';

-- Every view create_profile_view and create_event_view made, so that they can
-- be made again when a trait changes, and granted to analysts made later.
CREATE TABLE cdp.generated_views (
    view       regclass PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('profile', 'event')),
    purpose    text NOT NULL REFERENCES cdp.purposes (name),
    traits     text[],          -- NULL: every declared trait
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Roles grant_analyst made analysts: they get every generated view, also
-- those made later.
CREATE TABLE cdp.analyst_roles (
    role       regrole PRIMARY KEY,
    granted_at timestamptz NOT NULL DEFAULT now()
);

-- Names that become SQL identifiers in generated views (trait names, view
-- and schema names): every one is quoted, and those that could only be an
-- attempt to break out of quoting, or that tools show badly, are refused.
CREATE FUNCTION cdp.check_name(what text, name text)
RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    IF name IS NULL OR octet_length(name) NOT BETWEEN 1 AND 63 OR name ~ '[[:cntrl:]"'';\\]' THEN
        RAISE EXCEPTION 'invalid % "%"', what, name
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'A name is 1 to 63 bytes without control characters, quotes, backslashes or semicolons.';
    END IF;
END
$$;

CREATE FUNCTION cdp.check_purpose(purpose text)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    IF purpose IS NULL OR NOT EXISTS (SELECT 1 FROM cdp.purposes p WHERE p.name = check_purpose.purpose) THEN
        RAISE EXCEPTION 'purpose "%" does not exist', purpose
            USING ERRCODE = 'undefined_object',
                  HINT = 'Define it with cdp.define_purpose(); see cdp.purposes for the purposes defined.';
    END IF;
END
$$;

-- The SELECT of a generated view (see create_profile_view and
-- create_event_view); every name and literal in it is quoted.
CREATE FUNCTION cdp.generated_view_query(kind text, purpose text, traits text[])
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    columns text := '';
    withheld text;
    t record;
BEGIN
    IF kind = 'event' THEN
        -- the traits a message carried (traits, context.traits) without the
        -- declared ones whose own purpose the person has not granted
        SELECT format('ARRAY[%s]::text[]',
                      string_agg(format('CASE WHEN NOT cdp.consent_granted(r.consent, %L) THEN %L END', d.purpose, d.name),
                                 ', ' ORDER BY d.position))
          INTO withheld
          FROM cdp.trait_definitions d
         WHERE d.purpose <> generated_view_query.purpose;
        SELECT string_agg(CASE WHEN withheld IS NULL OR a.attname NOT IN ('traits', 'context') THEN format('e.%I', a.attname)
                               WHEN a.attname = 'traits'
                               THEN format('CASE WHEN jsonb_typeof(e.traits) = ''object'' THEN e.traits - %s '
                                           'ELSE e.traits END AS traits', withheld)
                               ELSE format('CASE WHEN jsonb_typeof(e.context->''traits'') = ''object'' '
                                           'THEN jsonb_set(e.context, ''{traits}'', (e.context->''traits'') - %s) '
                                           'ELSE e.context END AS context', withheld) END,
                          ', ' ORDER BY a.attnum) INTO columns
          FROM pg_attribute a
         WHERE a.attrelid = 'cdp.events_resolved'::regclass AND a.attnum > 0 AND NOT a.attisdropped;
        RETURN format('SELECT %s FROM cdp.events_resolved e '
                      'JOIN cdp.profile_records r ON r.profile_id = e.profile_id '
                      'WHERE r.merged_into IS NULL AND cdp.consent_granted(r.consent, %L)',
                      columns, purpose);
    END IF;
    -- the type template (cdp.trait_column_template)
    FOR t IN SELECT d.name, d.purpose, cdp.trait_column_template(d.type) AS template
               FROM cdp.trait_definitions d
               LEFT JOIN unnest(traits) WITH ORDINALITY AS w (name, ord) ON w.name = d.name
              WHERE traits IS NULL OR w.name IS NOT NULL
              ORDER BY w.ord, d.position LOOP
        -- the view's own purpose is granted on every row it shows
        columns := columns || format(CASE WHEN t.purpose = purpose THEN ', cdp.trait_as(r.traits, %2$L, %3$s) AS %4$I'
                                          ELSE ', CASE WHEN cdp.consent_granted(r.consent, %1$L) '
                                               'THEN cdp.trait_as(r.traits, %2$L, %3$s) END AS %4$I' END,
                                     t.purpose, t.name, t.template, t.name);
    END LOOP;
    -- computed traits, typed by kind, under their purpose like declared ones
    FOR t IN SELECT c.name, c.purpose, cdp.computed_trait_column(c.kind, c.name) AS expr
               FROM cdp.computed_traits c
               LEFT JOIN unnest(traits) WITH ORDINALITY AS w (name, ord) ON w.name = c.name
              WHERE traits IS NULL OR w.name IS NOT NULL
              ORDER BY w.ord, c.id LOOP
        columns := columns || format(CASE WHEN t.purpose = purpose THEN ', %2$s AS %3$I'
                                          ELSE ', CASE WHEN cdp.consent_granted(r.consent, %1$L) '
                                               'THEN %2$s END AS %3$I' END,
                                     t.purpose, t.expr, t.name);
    END LOOP;
    RETURN format('SELECT r.profile_id%s FROM cdp.profile_records r '
                  'LEFT JOIN cdp.profile_computed pc ON pc.profile_id = r.profile_id '
                  'WHERE r.merged_into IS NULL AND cdp.consent_granted(r.consent, %L)',
                  columns, purpose);
END
$$;

-- Make (or make again) a generated view and grant it to every analyst.  A
-- view whose columns changed in a way CREATE OR REPLACE VIEW refuses (a
-- trait's type changed, a trait left) is dropped and made again, with its
-- grants.  security_barrier: readers' own conditions run only on the rows
-- of people who granted the purpose.
CREATE FUNCTION cdp.make_generated_view(schema_name text, view_name text, kind text,
                                        purpose text, traits text[])
RETURNS regclass
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    qualified text := format('%I.%I', schema_name, view_name);
    existing regclass;
    query text;
    result regclass;
    missing text;
    made timestamptz;
    acl aclitem[];
    dependents text;
    grant_row record;
    t record;
BEGIN
    -- one writer of generated views at a time: a view and its registry row agree
    LOCK TABLE cdp.generated_views IN SHARE ROW EXCLUSIVE MODE;
    PERFORM cdp.check_purpose(purpose);
    IF traits IS NOT NULL THEN
        SELECT w.name INTO missing FROM unnest(traits) w (name)
         WHERE w.name IS NULL OR (NOT EXISTS (SELECT 1 FROM cdp.trait_definitions d WHERE d.name = w.name)
                                  AND NOT EXISTS (SELECT 1 FROM cdp.computed_traits c WHERE c.name = w.name))
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'trait "%" is not defined', coalesce(missing, 'NULL')
                USING ERRCODE = 'undefined_object',
                      HINT = 'Declare it with cdp.define_trait(); see cdp.trait_definitions.';
        END IF;
        IF (SELECT count(DISTINCT w) <> count(*) FROM unnest(traits) w) THEN
            RAISE EXCEPTION 'traits must not name a trait twice'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    SELECT c.oid INTO existing FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = schema_name AND c.relname = view_name;
    IF existing IS NOT NULL AND NOT EXISTS (SELECT 1 FROM cdp.generated_views g WHERE g.view = existing) THEN
        RAISE EXCEPTION 'relation % already exists and is not a generated view', qualified
            USING ERRCODE = 'duplicate_table',
                  HINT = 'Choose another name, or drop that relation first.';
    END IF;

    query := cdp.generated_view_query(kind, purpose, traits);
    BEGIN
        EXECUTE format('CREATE OR REPLACE VIEW %s WITH (security_barrier) AS %s', qualified, query);
    EXCEPTION WHEN invalid_table_definition THEN
        -- columns removed, renamed or retyped: only a new view can have them;
        -- it gets the grants the old one had (also those made by hand)
        SELECT c.relacl INTO acl FROM pg_class c WHERE c.oid = existing;
        BEGIN
            EXECUTE format('DROP VIEW %s', qualified);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            GET STACKED DIAGNOSTICS dependents = PG_EXCEPTION_DETAIL;
            RAISE EXCEPTION 'cannot make view % again: other objects depend on it', qualified
                USING ERRCODE = 'dependent_objects_still_exist', DETAIL = dependents,
                      HINT = 'A trait''s new type or a removed trait needs a new view: drop or change '
                             'the objects built on it first, or keep the trait''s type.';
        END;
        EXECUTE format('CREATE VIEW %s WITH (security_barrier) AS %s', qualified, query);
        FOR grant_row IN SELECT a.privilege_type, a.is_grantable,
                                CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END AS grantee
                           FROM aclexplode(acl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
                          WHERE a.grantee <> a.grantor AND (a.grantee = 0 OR r.oid IS NOT NULL) LOOP
            EXECUTE format('GRANT %s ON %s TO %s%s', grant_row.privilege_type, qualified, grant_row.grantee,
                           CASE WHEN grant_row.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END;
    result := qualified::regclass;
    -- a relation another role made under that name since the check above:
    -- CREATE OR REPLACE must not have taken it over
    IF (SELECT c.relowner FROM pg_class c WHERE c.oid = result)
       <> (SELECT c.relowner FROM pg_class c WHERE c.oid = 'cdp.generated_views'::regclass) THEN
        RAISE EXCEPTION 'relation % already exists and is not a generated view', qualified
            USING ERRCODE = 'duplicate_table',
                  HINT = 'Choose another name, or drop that relation first.';
    END IF;
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', qualified);
    EXECUTE format('COMMENT ON VIEW %s IS %L', qualified,
                   CASE kind WHEN 'profile' THEN 'profiles' ELSE 'events of the profiles' END
                   || format(' that granted %s (generated by pg_cdp: changes made by hand are lost when traits change)', purpose));
    IF kind = 'profile' THEN
        EXECUTE format('COMMENT ON COLUMN %s.profile_id IS %L', qualified,
                       'the canonical profile''s id (cdp.resolve gives it for an identifier)');
        FOR t IN SELECT d.name, d.type, d.purpose FROM cdp.trait_definitions d
                  WHERE traits IS NULL OR d.name = ANY (traits) LOOP
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', qualified, t.name,
                           format('trait "%s" as %s; NULL where ', t.name, format_type(t.type, NULL))
                           || CASE WHEN t.purpose <> purpose
                                   THEN format('the person has not granted %s, or ', t.purpose) ELSE '' END
                           || 'the value is absent or does not convert');
        END LOOP;
    END IF;
    DELETE FROM cdp.generated_views g WHERE g.view = existing OR g.view = result
    RETURNING g.created_at INTO made;
    INSERT INTO cdp.generated_views (view, kind, purpose, traits, created_at)
    VALUES (result, kind, purpose, traits, coalesce(made, now()));
    PERFORM cdp.grant_generated_view(result, a.role) FROM cdp.analyst_roles a;
    RETURN result;
END
$$;

-- Analysts read a view with the rights of its owner, but call the functions
-- in it with their own: they need EXECUTE on cdp.trait_as and
-- cdp.consent_granted (grant_analyst gives it) and USAGE on the view's schema.
CREATE FUNCTION cdp.grant_generated_view(view regclass, role regrole)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    schema_name name;
    role_name name;
BEGIN
    SELECT a.rolname INTO role_name FROM pg_roles a WHERE a.oid = role;
    -- only a view the generator made (owned as the registry is): a registry
    -- row whose view went away must never grant a relation that took its oid
    SELECT n.nspname INTO schema_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = view AND c.relkind = 'v'
       AND c.relowner = (SELECT g.relowner FROM pg_class g WHERE g.oid = 'cdp.generated_views'::regclass);
    IF role_name IS NULL OR schema_name IS NULL THEN
        RETURN;     -- a role dropped since it became an analyst, a view dropped by hand
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', schema_name, role_name);
    EXECUTE format('GRANT SELECT ON %s TO %I', view, role_name);
END
$$;

-- A generated view dropped by hand, or by any DROP ... CASCADE (its schema,
-- its owner's objects, a trait's type or the extension that made it)
-- leaves the registry at once, so its oid is never taken for another
-- relation's; a trait whose type is dropped goes with it, as a column
-- would.  The tables are touched only when a view or type was dropped.
-- SECURITY DEFINER: whoever drops what they own may not write the registry.
CREATE FUNCTION cdp.forget_dropped_views()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    dropped oid[];
BEGIN
    SELECT array_agg(d.objid) INTO dropped FROM pg_event_trigger_dropped_objects() d
     WHERE d.object_type IN ('view', 'type', 'domain');
    IF dropped IS NOT NULL THEN
        DELETE FROM cdp.generated_views g WHERE g.view = ANY (dropped);
        DELETE FROM cdp.trait_definitions t WHERE t.type = ANY (dropped);
    END IF;
END
$$;
CREATE EVENT TRIGGER cdp_forget_dropped_views ON sql_drop
    EXECUTE FUNCTION cdp.forget_dropped_views();

-- view_name as parse_ident reads it, unqualified names in the caller's
-- first schema.  SECURITY INVOKER without SET clauses (the caller's
-- search_path is what it resolves against), so every name is qualified.
CREATE FUNCTION cdp.view_name_parts(view_name text)
RETURNS text[]
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    parts text[];
BEGIN
    IF view_name IS NULL THEN
        RAISE EXCEPTION 'view_name must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    BEGIN
        parts := pg_catalog.parse_ident(view_name);
    EXCEPTION WHEN invalid_parameter_value THEN
        RAISE EXCEPTION 'invalid view name "%"', view_name
            USING ERRCODE = 'invalid_name',
                  HINT = 'Give an SQL name: view or schema.view, with double quotes around parts '
                         'that hold other characters than lower-case letters, digits and _.';
    END;
    IF pg_catalog.array_length(parts, 1) > 2 THEN
        RAISE EXCEPTION 'invalid view name "%": at most a schema and a view name', view_name
            USING ERRCODE = 'invalid_name';
    END IF;
    IF pg_catalog.array_length(parts, 1) = 1 THEN
        parts := ARRAY[pg_catalog.current_schema(), parts[1]];
        IF parts[1] IS NULL THEN
            RAISE EXCEPTION 'no schema has been selected to create in'
                USING ERRCODE = 'invalid_schema_name',
                      HINT = 'Qualify the view name with a schema, or set search_path.';
        END IF;
    END IF;
    PERFORM cdp.check_name('schema name', parts[1]);
    PERFORM cdp.check_name('view name', parts[2]);
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) parts[1]) THEN
        RAISE EXCEPTION 'schema "%" does not exist', parts[1] USING ERRCODE = 'invalid_schema_name';
    END IF;
    IF NOT pg_catalog.has_schema_privilege(parts[1], 'CREATE') THEN
        RAISE EXCEPTION 'permission denied for schema %', parts[1] USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN parts;
END
$$;

CREATE FUNCTION cdp.create_profile_view(view_name text, purpose text, traits text[] DEFAULT NULL)
RETURNS regclass
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    parts text[] := cdp.view_name_parts(view_name);
BEGIN
    RETURN cdp.make_generated_view(parts[1], parts[2], 'profile', purpose, traits);
END
$$;
COMMENT ON FUNCTION cdp.create_profile_view(text, text, text[]) IS
    'a view of the canonical profiles that granted purpose: profile_id, then one typed column per trait (all declared ones when traits is NULL)';

CREATE FUNCTION cdp.create_event_view(view_name text, purpose text)
RETURNS regclass
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    parts text[] := cdp.view_name_parts(view_name);
BEGIN
    RETURN cdp.make_generated_view(parts[1], parts[2], 'event', purpose, NULL);
END
$$;
COMMENT ON FUNCTION cdp.create_event_view(text, text) IS
    'a view with the columns of cdp.events_resolved, for the events of profiles that granted purpose';

-- Make every generated view again from the current trait definitions (and
-- the columns of cdp.events_resolved); forget registry rows of views
-- dropped by hand.  Called by define_trait; also after changing purposes.
CREATE FUNCTION cdp.refresh_generated_views()
RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    made record;
    n int := 0;
BEGIN
    LOCK TABLE cdp.generated_views IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM cdp.generated_views g
     WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = g.view AND c.relkind = 'v');
    FOR made IN SELECT v.view, v.kind, v.purpose, v.traits, n.nspname, c.relname
               FROM cdp.generated_views v
               JOIN pg_class c ON c.oid = v.view
               JOIN pg_namespace n ON n.oid = c.relnamespace
              ORDER BY v.created_at, v.view LOOP
        PERFORM cdp.make_generated_view(made.nspname, made.relname, made.kind, made.purpose, made.traits);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
COMMENT ON FUNCTION cdp.refresh_generated_views() IS
    'make every generated view again from the current trait definitions; returns how many';

CREATE FUNCTION cdp.define_trait(name text, type regtype, purpose text DEFAULT 'analytics')
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    PERFORM cdp.check_name('trait name', name);
    IF name = 'profile_id' THEN
        RAISE EXCEPTION 'a trait cannot be called "profile_id"'
            USING ERRCODE = 'invalid_name', DETAIL = 'Every profile view has a profile_id column.';
    END IF;
    IF type IS NULL OR (SELECT t.typtype = 'p' OR NOT t.typisdefined FROM pg_type t WHERE t.oid = type) THEN
        RAISE EXCEPTION 'a trait cannot have type %', coalesce(type::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give a data type such as text, bigint, numeric, boolean, timestamptz or jsonb.';
    END IF;
    PERFORM cdp.check_purpose(purpose);
    LOCK TABLE cdp.generated_views IN SHARE ROW EXCLUSIVE MODE;
    INSERT INTO cdp.trait_definitions AS d (name, type, purpose)
    VALUES (define_trait.name, define_trait.type, define_trait.purpose)
    ON CONFLICT ON CONSTRAINT trait_definitions_pkey DO UPDATE
       SET type = excluded.type, purpose = excluded.purpose, defined_at = now();
    PERFORM cdp.refresh_generated_views();
END
$$;
COMMENT ON FUNCTION cdp.define_trait(text, regtype, text) IS
    'declare a trait: its SQL type in profile views and the purpose a person must grant for it to show';

-- Analysts: read the generated views, nothing else.
CREATE FUNCTION cdp.grant_analyst(role name)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    r regrole := cdp.existing_role(role);
BEGIN
    LOCK TABLE cdp.generated_views IN SHARE ROW EXCLUSIVE MODE;
    INSERT INTO cdp.analyst_roles (role) VALUES (r) ON CONFLICT DO NOTHING;
    EXECUTE format('GRANT EXECUTE ON FUNCTION cdp.trait_as(jsonb, anyelement), cdp.trait_as(jsonb, text, anyelement), '
                   'cdp.consent_granted(jsonb, text) TO %I', role);
    PERFORM cdp.grant_generated_view(g.view, r) FROM cdp.generated_views g;
END
$$;
COMMENT ON FUNCTION cdp.grant_analyst(name) IS
    'let a role read every generated view, also those made later, and nothing else in cdp';

CREATE FUNCTION cdp.revoke_analyst(role name)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    r regrole := cdp.existing_role(role);
    v record;
BEGIN
    LOCK TABLE cdp.generated_views IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM cdp.analyst_roles a WHERE a.role = r;
    FOR v IN SELECT g.view FROM cdp.generated_views g
              WHERE EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = g.view) LOOP
        EXECUTE format('REVOKE SELECT ON %s FROM %I', v.view, role);
    END LOOP;
    EXECUTE format('REVOKE EXECUTE ON FUNCTION cdp.trait_as(jsonb, anyelement), cdp.trait_as(jsonb, text, anyelement), '
                   'cdp.consent_granted(jsonb, text) FROM %I', role);
END
$$;
COMMENT ON FUNCTION cdp.revoke_analyst(name) IS
    'undo grant_analyst: the role no longer reads generated views';

CREATE FUNCTION cdp.existing_role(role name)
RETURNS regrole
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    r oid;
BEGIN
    SELECT a.oid INTO r FROM pg_roles a WHERE a.rolname = role;
    IF r IS NULL THEN
        RAISE EXCEPTION 'role "%" does not exist', role USING ERRCODE = 'undefined_object';
    END IF;
    RETURN r::regrole;
END
$$;

-- Operators: keep pg_cdp running (maintenance, draining the inbox, the
-- pg_cron jobs, the partition list) without reading any event or profile.
CREATE FUNCTION cdp.grant_operator(role name)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    PERFORM cdp.existing_role(role);
    EXECUTE format('GRANT USAGE ON SCHEMA cdp TO %I', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION cdp.run_maintenance(), cdp.process_inbox(int), '
                   'cdp.partition_bounds(), cdp.partition_size(regclass), cdp.schedule_jobs(), cdp.unschedule_jobs(), '
                   'cdp.require_pg_cron(), cdp.job_definitions(), cdp.needed_jobs(), '
                   'cdp.workers_running(), cdp.maintenance_running(), cdp.stats_figures(), '
                   'cdp.worker_stats_rows(), cdp.reset_stats() TO %I', role);
    EXECUTE format('GRANT EXECUTE ON PROCEDURE cdp.drain_inbox(interval, int, bigint) TO %I', role);
    EXECUTE format('GRANT SELECT ON cdp.partitions, cdp.stats, cdp.worker_stats TO %I', role);
    -- the jobs schedule_jobs registers run as the role that scheduled them
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'cron') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA cron TO %I', role);
    END IF;
END
$$;
COMMENT ON FUNCTION cdp.grant_operator(name) IS
    'let a role run maintenance, drain the inbox, schedule the pg_cron jobs, read cdp.partitions and the statistics';
