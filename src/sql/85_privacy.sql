-- Erasure and export: cdp.forget erases a person and suppresses their
-- identifiers (kept only as salted hashes, so a later message carrying one is
-- dropped at ingest, src/profiles/suppression.c); cdp.export_subject returns
-- everything held about a person.

-- The per-database secret that salts the hashes: without it a hash cannot be
-- tested against guessed identifiers.  Only the owner reads it.  Made by the
-- first cdp.forget, not here: a restored dump brings its own (below).
CREATE TABLE cdp.suppression_salt (
    one  bool PRIMARY KEY DEFAULT true CHECK (one),
    salt bytea NOT NULL CHECK (octet_length(salt) = 32)
);

-- One row per suppressed identifier: its salted SHA-256 and how many later
-- messages carrying it were dropped.
CREATE TABLE cdp.suppressions (
    hash            bytea PRIMARY KEY CHECK (octet_length(hash) = 32),
    suppressed_at   timestamptz NOT NULL DEFAULT now(),
    dropped         bigint NOT NULL DEFAULT 0,
    last_dropped_at timestamptz
);
COMMENT ON TABLE cdp.suppressions IS
    'identifiers of forgotten people as salted SHA-256 hashes; dropped counts the later messages carrying one that ingest dropped';
COMMENT ON COLUMN cdp.suppressions.dropped IS
    'messages dropped at ingest because they carried this identifier (each counted once, on its first suppressed identifier)';

-- Ingest caches whether any suppression exists: rows coming or going tell
-- every backend (the counters ingest updates do not).
CREATE TRIGGER suppressions_changed AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF hash
    ON cdp.suppressions FOR EACH STATEMENT EXECUTE FUNCTION cdp.identity_config_changed();
ALTER TABLE cdp.suppressions ENABLE ALWAYS TRIGGER suppressions_changed;

-- What was erased, when and why: counts only, never an identifier.
CREATE TABLE cdp.forget_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    forgotten_at timestamptz NOT NULL DEFAULT now(),
    reason       text,
    summary      jsonb NOT NULL
);
COMMENT ON TABLE cdp.forget_log IS 'every cdp.forget call: when, the reason given, and what it erased (counts)';

-- pg_dump keeps them: restored without, a forgotten person's next message
-- would make them again
SELECT pg_catalog.pg_extension_config_dump('cdp.suppression_salt', '');
SELECT pg_catalog.pg_extension_config_dump('cdp.suppressions', '');
SELECT pg_catalog.pg_extension_config_dump('cdp.forget_log', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('cdp.forget_log', 'id'), '');

CREATE FUNCTION cdp.suppression_hash(salt bytea, id cdp.identifier)
RETURNS bytea
AS 'MODULE_PATHNAME', 'cdp_suppression_hash'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION cdp.payload_carries(payload text, ids cdp.identifier[])
RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_payload_carries'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION cdp.payload_carries(text, cdp.identifier[]) IS
    'whether a queued or dead-lettered payload carries one of the identifiers, read as ingest reads them';

CREATE FUNCTION cdp.identifier_blocked(id cdp.identifier)
RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_identifier_blocked'
LANGUAGE C STABLE STRICT;

CREATE FUNCTION cdp.identifier_suppressed(id cdp.identifier)
RETURNS bool
AS 'MODULE_PATHNAME', 'cdp_identifier_suppressed'
LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION cdp.identifier_suppressed(cdp.identifier) IS
    'whether an identifier belongs to a person erased with cdp.forget (internal: API functions that record something about an identifier refuse these)';

CREATE FUNCTION cdp.forget_lock()
RETURNS void
AS 'MODULE_PATHNAME', 'cdp_forget_lock'
LANGUAGE C VOLATILE;

-- The person an identifier names: its canonical profile, every profile
-- merged into it, and all their identifiers (the identifier itself even
-- when no profile holds it).
CREATE FUNCTION cdp.subject_of(id cdp.identifier, OUT profile_id bigint,
                               OUT profile_ids bigint[], OUT identifiers cdp.identifier[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    SELECT i.profile_id INTO profile_id FROM cdp.identities i WHERE i.identifier = subject_of.id;
    profile_ids := ARRAY(SELECT subject_of.profile_id WHERE subject_of.profile_id IS NOT NULL
                         UNION
                         SELECT r.profile_id FROM cdp.profile_records r
                          WHERE r.merged_into = subject_of.profile_id
                         ORDER BY 1);
    identifiers := ARRAY(SELECT i.identifier FROM cdp.identities i
                          WHERE i.profile_id = subject_of.profile_id
                         UNION
                         SELECT subject_of.id
                         ORDER BY 1);
END
$$;

-- The events of a person in one events relation (cdp.events or a detached
-- partition), found by index: the person's profiles on (profile_id, ts);
-- events stored without a profile by their raw userId/anonymousId/previousId
-- among the profile_id IS NULL (or 0, where cdp.events is distributed by
-- profile_id) entries of that index; and events whose
-- identifier a rule refused (so they went to another profile) through the
-- violation that names it, by event time and messageId (partition pruning,
-- then the time index); and the messages that carried an identifier before
-- it was split off another profile, among that profile's events.  erase: delete them and return how many as
-- {"count": n, "others": [{profile_id, ts} of erased events of other
-- profiles]}; else return them as {"events": [...]}.
CREATE FUNCTION cdp.subject_events(rel regclass, profile_ids bigint[],
                                   identifiers cdp.identifier[], erase bool)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    raw_ids text[] := ARRAY(SELECT cdp.id_value(x) FROM unnest(identifiers) x
                             WHERE cdp.id_type(x) IN ('user_id', 'anonymous_id'));
    devices text[] := ARRAY(SELECT cdp.id_value(x) FROM unnest(identifiers) x WHERE cdp.id_type(x) = 'device_id');
    emails text[] := ARRAY(SELECT cdp.id_value(x) FROM unnest(identifiers) x WHERE cdp.id_type(x) = 'email');
    -- the profiles this person's identifiers were split off from, and those merged into them
    split_pids bigint[] := ARRAY(
        SELECT p FROM (SELECT i.profile_id AS p
                         FROM cdp.identity_splits s, unnest(s.members) m, cdp.identities i
                        WHERE s.keep_out = ANY (identifiers) AND i.identifier = m
                       UNION
                       SELECT r.profile_id
                         FROM cdp.identity_splits s, unnest(s.members) m, cdp.identities i, cdp.profile_records r
                        WHERE s.keep_out = ANY (identifiers) AND i.identifier = m
                          AND r.merged_into = i.profile_id) x
         WHERE p <> ALL (profile_ids));
    -- a message of theirs, as ingest reads the identifiers it carries
    carried text := '(user_id = ANY ($2) OR anonymous_id = ANY ($2) OR previous_id = ANY ($2) '
                    'OR context->''device''->>''id'' = ANY ($3) '
                    'OR lower(btrim(context->''traits''->>''email'')) = ANY ($4) '
                    'OR (type = ''identify'' AND lower(btrim(traits->>''email'')) = ANY ($4)))';
    v record;
    n bigint;
    total bigint := 0;
    found jsonb := '[]';
    others jsonb := '[]';
    part jsonb;
BEGIN
    IF erase THEN
        EXECUTE format('DELETE FROM %s WHERE profile_id = ANY ($1)', rel) USING profile_ids;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
        EXECUTE format('DELETE FROM %s WHERE (profile_id IS NULL OR profile_id = 0) AND (user_id = ANY ($1) '
                       'OR anonymous_id = ANY ($1) OR previous_id = ANY ($1))', rel) USING raw_ids;
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
    ELSE
        EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(e)), ''[]'') FROM %s e '
                       'WHERE profile_id = ANY ($1) OR ((profile_id IS NULL OR profile_id = 0) AND (user_id = ANY ($2) '
                       'OR anonymous_id = ANY ($2) OR previous_id = ANY ($2)))', rel)
            INTO found USING profile_ids, raw_ids;
    END IF;
    -- split off another profile: the messages that carried it before the
    -- split stay with that profile; found there by the (profile_id, ts) index
    IF split_pids <> '{}' THEN
        IF erase THEN
            EXECUTE format('WITH d AS (DELETE FROM %s WHERE profile_id = ANY ($1) AND %s '
                           'RETURNING profile_id, ts) '
                           'SELECT count(*), coalesce(jsonb_agg(jsonb_build_object(''profile_id'', profile_id, '
                           '''ts'', ts)), ''[]'') FROM d', rel, carried)
                INTO n, part USING split_pids, raw_ids, devices, emails;
            total := total + n;
            others := others || part;
        ELSE
            EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(e)), ''[]'') FROM %s e '
                           'WHERE profile_id = ANY ($1) AND %s', rel, carried)
                INTO part USING split_pids, raw_ids, devices, emails;
            found := found || part;
        END IF;
    END IF;
    FOR v IN SELECT DISTINCT iv.at, iv.message_id FROM cdp.identity_violations iv
              WHERE iv.identifier = ANY (identifiers) AND iv.message_id IS NOT NULL LOOP
        IF erase THEN
            EXECUTE format('WITH d AS (DELETE FROM %s WHERE ts = $1 AND message_id = $2 '
                           'RETURNING profile_id, ts) '
                           'SELECT count(*), coalesce(jsonb_agg(jsonb_build_object(''profile_id'', profile_id, '
                           '''ts'', ts)) FILTER (WHERE profile_id <> 0), ''[]'') FROM d', rel)
                INTO n, part USING v.at, v.message_id;
            total := total + n;
            others := others || part;
        ELSE
            EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(e)), ''[]'') FROM %s e '
                           'WHERE ts = $1 AND message_id = $2 '
                           'AND NOT (profile_id IS NOT NULL AND profile_id = ANY ($3))', rel)
                INTO part USING v.at, v.message_id, profile_ids;
            found := found || part;
        END IF;
    END LOOP;
    IF erase THEN
        RETURN jsonb_build_object('count', total, 'others', others);
    END IF;
    RETURN jsonb_build_object('events', found);
END
$$;

-- Tables in cdp that a retention in 'detach' mode (or an operator) took out
-- of cdp.events and that still exist: the events' columns, not a partition,
-- not part of the extension.
CREATE FUNCTION cdp.detached_event_tables()
RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, cdp
AS $$
    SELECT c.oid::regclass
      FROM pg_class c
     WHERE c.relnamespace = 'cdp'::regnamespace AND c.relkind = 'r' AND NOT c.relispartition
       AND NOT EXISTS (SELECT FROM pg_depend d
                        WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                          AND d.deptype = 'e')
       AND (SELECT count(*) FROM pg_attribute a
             WHERE a.attrelid = c.oid AND NOT a.attisdropped
               AND (a.attname, a.atttypid) IN (('profile_id', 'int8'::regtype), ('user_id', 'text'::regtype),
                                               ('anonymous_id', 'text'::regtype), ('previous_id', 'text'::regtype),
                                               ('ts', 'timestamptz'::regtype), ('message_id', 'text'::regtype))) = 6
     ORDER BY c.relname
$$;

-- Whether a message stored at ts with message_id is one of the person's
-- events (their profiles', or theirs without a profile): a violation that
-- could not name an identifier (a value that is not one, kept in its detail
-- as sent) is found so.  By the (profile_id, ts) index.
CREATE FUNCTION cdp.subject_message(ts timestamptz, message_id text,
                                    profile_ids bigint[], identifiers cdp.identifier[])
RETURNS bool
LANGUAGE sql STABLE
SET search_path = pg_catalog, cdp
AS $$
    SELECT EXISTS (SELECT FROM cdp.events e
                    WHERE e.profile_id = ANY (profile_ids) AND e.ts = subject_message.ts
                      AND e.message_id = subject_message.message_id)
        OR EXISTS (SELECT FROM cdp.events e, unnest(identifiers) x
                    WHERE (e.profile_id IS NULL OR e.profile_id = 0) AND e.ts = subject_message.ts
                      AND e.message_id = subject_message.message_id
                      AND cdp.id_type(x) IN ('user_id', 'anonymous_id')
                      AND cdp.id_value(x) IN (e.user_id, e.anonymous_id, e.previous_id))
$$;

-- Identifier arrays without the given identifiers, in their order.
CREATE FUNCTION cdp.without_identifiers(ids cdp.identifier[], gone cdp.identifier[])
RETURNS cdp.identifier[]
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, cdp
AS $$
    SELECT coalesce(array_agg(x ORDER BY o), '{}')
      FROM unnest(ids) WITH ORDINALITY u(x, o)
     WHERE x <> ALL (gone)
$$;

-- Remove, from the traits of the given profiles' identifiers and from the
-- profiles' own traits, every key whose value is one of the identifiers'
-- values (as ingest would read it: trimmed, emails in any letters, phones
-- in any format); then derive the profiles' traits again where the per-
-- identifier stores are the source.  Returns how many identifiers lost keys.
CREATE FUNCTION cdp.forget_trait_values(profile_ids bigint[], identifiers cdp.identifier[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    vals text[] := ARRAY(SELECT lower(cdp.id_value(x)) FROM unnest(identifiers) x);
    phones text[] := ARRAY(SELECT cdp.id_value(x) FROM unnest(identifiers) x WHERE cdp.id_type(x) = 'phone');
    members bigint[] := ARRAY(SELECT unnest(profile_ids)
                              UNION SELECT r.profile_id FROM cdp.profile_records r
                                     WHERE r.merged_into = ANY (profile_ids));
    n bigint;
BEGIN
    WITH m AS (
        SELECT t.identifier, array_agg(e.k) AS keys
          FROM cdp.identities i
          JOIN cdp.identifier_traits t ON t.identifier = i.identifier,
               jsonb_each_text(t.traits) e(k, v)
         WHERE i.profile_id = ANY (profile_ids)
           AND (lower(btrim(e.v)) = ANY (vals)
                OR (phones <> '{}' AND regexp_replace(e.v, '[^0-9+]', '', 'g') = ANY (phones)))
         GROUP BY t.identifier
    )
    UPDATE cdp.identifier_traits t
       SET traits = t.traits - m.keys, trait_times = t.trait_times - m.keys
      FROM m
     WHERE t.identifier = m.identifier;
    GET DIAGNOSTICS n = ROW_COUNT;
    WITH m AS (
        SELECT r.profile_id, array_agg(e.k) AS keys
          FROM cdp.profile_records r, jsonb_each_text(r.traits) e(k, v)
         WHERE r.profile_id = ANY (members)
           AND (lower(btrim(e.v)) = ANY (vals)
                OR (phones <> '{}' AND regexp_replace(e.v, '[^0-9+]', '', 'g') = ANY (phones)))
         GROUP BY r.profile_id
    )
    UPDATE cdp.profile_records r
       SET traits = r.traits - m.keys, trait_times = r.trait_times - m.keys
      FROM m
     WHERE r.profile_id = m.profile_id;
    PERFORM cdp.recompute_profile_state(profile_ids);
    RETURN n;
END
$$;

CREATE FUNCTION cdp.forget(id cdp.identifier, reason text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    subject record;
    ids cdp.identifier[];
    pids bigint[];
    texts text[];
    summary jsonb := '{}';
    detached jsonb := '{}';
    not_erased jsonb := '[]';
    rel regclass;
    n bigint;
    problem text;
    erased jsonb;
    others jsonb;
    seqs bigint[];
    affected bigint[];
    members bigint[];
    violations bigint;
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION 'id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cdp.identifier_blocked(id) THEN
        RAISE EXCEPTION 'identifier % is blocked: it names no one person', id
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Blocked values (cdp.blocked_identifiers) are never linked to a profile; '
                         'forget one of the person''s other identifiers.';
    END IF;
    IF octet_length(reason) > 1000 THEN
        RAISE EXCEPTION 'reason must be at most 1000 bytes, not %', octet_length(reason)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- no ingest, merge, split or rebuild in flight from here on
    PERFORM cdp.forget_lock();
    -- the salt, on first use; gen_random_uuid() draws from the server's
    -- strong random source: 2 x 122 bits
    INSERT INTO cdp.suppression_salt (salt)
    SELECT decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')
    ON CONFLICT (one) DO NOTHING;
    subject := cdp.subject_of(id);
    ids := subject.identifiers;
    pids := subject.profile_ids;
    texts := ARRAY(SELECT x::text FROM unnest(ids) x);
    -- the profile rows too, before anything is read or erased: cdp.set_consent
    -- records under them without the identity lock, so its decision is
    -- either committed before (and erased) or made after (and refused)
    PERFORM FROM cdp.profile_records r WHERE r.profile_id = ANY (pids) ORDER BY r.profile_id FOR UPDATE;

    -- the log keeps no identifier: a reason naming one is refused
    IF EXISTS (SELECT FROM unnest(ids) x
                WHERE length(cdp.id_value(x)) >= 3
                  AND strpos(lower(reason), lower(cdp.id_value(x))) > 0) THEN
        RAISE EXCEPTION 'reason must not contain the person''s identifiers'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The forget log keeps the reason; refer to the request by a ticket number instead.';
    END IF;

    summary := summary || jsonb_build_object('profiles', cardinality(pids), 'identifiers', cardinality(ids));
    -- violations of their messages that name no identifier hold the value
    -- that was not one (an email with a control character, say): found
    -- through the events, so before those go
    DELETE FROM cdp.identity_violations v
     WHERE v.identifier IS NULL AND v.message_id IS NOT NULL
       AND cdp.subject_message(v.at, v.message_id, pids, ids);
    GET DIAGNOSTICS violations = ROW_COUNT;
    erased := cdp.subject_events('cdp.events', pids, ids, true);
    others := erased->'others';
    summary := summary || jsonb_build_object('events', (erased->>'count')::bigint);

    -- detached partitions still hold events: reach each, or say which not
    FOR rel IN SELECT * FROM cdp.detached_event_tables() LOOP
        BEGIN
            erased := cdp.subject_events(rel, pids, ids, true);
            detached := detached || jsonb_build_object(rel::text, (erased->>'count')::bigint);
            others := others || (erased->'others');
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
            not_erased := not_erased || jsonb_build_object('relation', rel::text, 'error', problem);
        END;
    END LOOP;
    summary := summary || jsonb_build_object('detached_partitions', detached, 'not_erased', not_erased);

    -- computed traits: the person's states and values go; other profiles
    -- that stored some of the person's events count again without them
    DELETE FROM cdp.trait_states s WHERE s.profile_id = ANY (pids);
    PERFORM cdp.recompute_trait_states(ARRAY(
        SELECT DISTINCT (x->>'profile_id')::bigint FROM jsonb_array_elements(others) x
         WHERE x->>'profile_id' IS NOT NULL AND (x->>'profile_id')::bigint <> ALL (pids)));
    -- the person leaves every audience (at commit)
    PERFORM cdp.profiles_changed(pids);

    -- events refused to other profiles leave their counts and times; the
    -- first and last times of their events are read in one aggregation
    -- grouped by stored profile id, the key cdp.events may be distributed
    -- by (Citus then answers it shard by shard)
    members := ARRAY(
        SELECT m.id
          FROM (SELECT DISTINCT coalesce(r.merged_into, r.profile_id) AS canon
                  FROM jsonb_array_elements(others) x
                  JOIN cdp.profile_records r ON r.profile_id = (x->>'profile_id')::bigint
                 WHERE r.profile_id <> ALL (pids)) c
          CROSS JOIN LATERAL (SELECT c.canon AS id UNION ALL
                              SELECT p.profile_id FROM cdp.profile_records p WHERE p.merged_into = c.canon) m);
    WITH seen AS MATERIALIZED (
        SELECT e.profile_id, min(e.ts) AS lo, max(e.ts) AS hi
          FROM cdp.events e
         WHERE e.profile_id = ANY (members)
         GROUP BY e.profile_id
    ), o AS (
        SELECT coalesce(r.merged_into, r.profile_id) AS canon, count(*) AS n,
               min((x->>'ts')::timestamptz) AS lo, max((x->>'ts')::timestamptz) AS hi
          FROM jsonb_array_elements(others) x
          JOIN cdp.profile_records r ON r.profile_id = (x->>'profile_id')::bigint
         WHERE r.profile_id <> ALL (pids)
         GROUP BY 1
    ), m AS (
        SELECT o.*, s.lo AS seen_lo, s.hi AS seen_hi
          FROM o
          LEFT JOIN LATERAL (SELECT min(s.lo) AS lo, max(s.hi) AS hi
                               FROM seen s
                               LEFT JOIN cdp.profile_records p ON p.profile_id = s.profile_id
                              WHERE coalesce(p.merged_into, s.profile_id) = o.canon) s ON true
    )
    UPDATE cdp.profile_records r
       SET event_count = greatest(r.event_count - m.n, 0),
           first_seen = CASE WHEN m.lo <= r.first_seen THEN m.seen_lo ELSE r.first_seen END,
           last_seen = CASE WHEN m.hi >= r.last_seen THEN m.seen_hi ELSE r.last_seen END
      FROM m
     WHERE r.profile_id = m.canon;

    -- messages of the person that other profiles stored (a rule refused an
    -- identifier, or it was split off later) may have given those profiles'
    -- identifiers traits holding the person's identifier values: drop those
    -- keys, then derive the profiles' traits again
    affected := ARRAY(SELECT DISTINCT coalesce(r.merged_into, r.profile_id)
                        FROM jsonb_array_elements(others) x
                        JOIN cdp.profile_records r ON r.profile_id = (x->>'profile_id')::bigint
                       WHERE r.profile_id <> ALL (pids));
    IF affected <> '{}' THEN
        n := cdp.forget_trait_values(affected, ids);
        summary := summary || jsonb_build_object('other_traits', n);
    END IF;

    -- the identity records (violations last: the events above were found through them)
    DELETE FROM cdp.identities i WHERE i.profile_id = ANY (pids) OR i.identifier = ANY (ids);
    -- the evidence naming them, in one pass (no index covers the arrays);
    -- x = ANY (ids) is answered by hashing ids once
    seqs := ARRAY(SELECT e.seq FROM cdp.identity_evidence e
                   WHERE EXISTS (SELECT FROM unnest(e.identifiers || e.linked) x WHERE x = ANY (ids)));
    DELETE FROM cdp.identity_evidence e WHERE e.seq = ANY (seqs) AND e.identifiers <@ ids AND e.linked <@ ids;
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('evidence', n);
    -- evidence shared with other people loses only this person's part
    UPDATE cdp.identity_evidence e
       SET identifiers = cdp.without_identifiers(e.identifiers, ids),
           linked = cdp.without_identifiers(e.linked, ids),
           created_profile = CASE WHEN e.created_profile = ANY (pids) THEN NULL ELSE e.created_profile END
     WHERE e.seq = ANY (seqs);
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('evidence_redacted', n);
    DELETE FROM cdp.identity_pairs p WHERE p.a = ANY (ids) OR p.b = ANY (ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('identity_pairs', n);
    DELETE FROM cdp.identity_splits s WHERE s.keep_out = ANY (ids) OR s.members <@ ids;
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE cdp.identity_splits s
       SET members = cdp.without_identifiers(s.members, ids),
           anchors = cdp.without_identifiers(s.anchors, ids)
     WHERE s.members && ids OR s.anchors && ids;
    summary := summary || jsonb_build_object('splits', n);
    DELETE FROM cdp.merges m WHERE m.from_profile = ANY (pids) OR m.into_profile = ANY (pids);
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('merges', n);
    -- of the rules, only a split's detail names identifiers (of both sides):
    -- others give counts, or (invalid) a value that is not one, done above;
    -- testing every detail against every identifier would cost their product
    DELETE FROM cdp.identity_violations v
     WHERE v.identifier = ANY (ids)
        OR (v.rule = 'split' AND EXISTS (SELECT FROM unnest(texts) t WHERE strpos(v.detail, t) > 0));
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('identity_violations', n + violations);

    DELETE FROM cdp.consent_log c WHERE c.identifier = ANY (ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('consent_log', n);
    DELETE FROM cdp.identifier_consent c WHERE c.identifier = ANY (ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('identifier_consent', n);
    DELETE FROM cdp.identifier_traits t WHERE t.identifier = ANY (ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('identifier_traits', n);
    DELETE FROM cdp.profile_records r WHERE r.profile_id = ANY (pids);

    -- queued and dead-lettered messages: every row is tested, most without
    -- parsing (cdp.payload_carries looks for the values' text first)
    -- a row another transaction holds is left: only cdp.process_inbox
    -- processes rows, and it waits for this transaction, so it drops it
    -- (waiting here could deadlock with a cdp.drain_inbox between chunks)
    DELETE FROM cdp.inbox q
     WHERE q.id = ANY (ARRAY(SELECT l.id FROM cdp.inbox l
                              WHERE l.payload IS NOT NULL AND cdp.payload_carries(l.payload, ids)
                                FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('inbox', n, 'inbox_in_flight',
        (SELECT count(*) FROM cdp.inbox l WHERE l.payload IS NOT NULL AND cdp.payload_carries(l.payload, ids)));
    DELETE FROM cdp.dead_letters d WHERE cdp.payload_carries(d.payload, ids);
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('dead_letters', n);

    INSERT INTO cdp.suppressions (hash)
    SELECT DISTINCT cdp.suppression_hash(s.salt, x)
      FROM unnest(ids) x, cdp.suppression_salt s
    ON CONFLICT (hash) DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    summary := summary || jsonb_build_object('suppressed', n);

    INSERT INTO cdp.forget_log (reason, summary) VALUES (reason, summary) RETURNING forget_log.id INTO n;
    RETURN jsonb_build_object('forget_id', n) || summary;
END
$$;
COMMENT ON FUNCTION cdp.forget(cdp.identifier, text) IS
    'erase the person an identifier names (profile, events, identifiers, evidence, consent, traits, queued and dead-lettered messages) and suppress their identifiers; returns what was erased';

CREATE FUNCTION cdp.export_subject(id cdp.identifier)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    subject record;
    ids cdp.identifier[];
    pids bigint[];
    events jsonb;
    detached jsonb := '{}';
    not_read jsonb := '[]';
    problem text;
    rel regclass;
BEGIN
    IF id IS NULL THEN
        RAISE EXCEPTION 'id must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    subject := cdp.subject_of(id);
    ids := subject.identifiers;
    pids := subject.profile_ids;
    events := cdp.subject_events('cdp.events', pids, ids, false)->'events';
    FOR rel IN SELECT * FROM cdp.detached_event_tables() LOOP
        BEGIN
            detached := detached || jsonb_build_object(rel::text,
                cdp.subject_events(rel, pids, ids, false)->'events');
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS problem = MESSAGE_TEXT;
            not_read := not_read || jsonb_build_object('relation', rel::text, 'error', problem);
        END;
    END LOOP;
    RETURN jsonb_build_object(
        'identifier', id::text,
        'suppressed', cdp.identifier_suppressed(id),
        'profile', (SELECT to_jsonb(r) FROM cdp.profile_records r WHERE r.profile_id = subject.profile_id),
        'merged_profiles', (SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY r.profile_id), '[]')
                              FROM cdp.profile_records r
                             WHERE r.profile_id = ANY (pids) AND r.profile_id <> subject.profile_id),
        'identifiers', (SELECT coalesce(jsonb_agg(to_jsonb(i) ORDER BY i.identifier), '[]')
                          FROM cdp.identities i WHERE i.identifier = ANY (ids)),
        'traits', (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY t.identifier), '[]')
                     FROM cdp.identifier_traits t WHERE t.identifier = ANY (ids)),
        'consent', (SELECT coalesce(jsonb_agg(jsonb_build_object('identifier', c.identifier,
                                                                  'purpose', e.key) || e.value
                                              ORDER BY c.identifier, e.key), '[]')
                      FROM cdp.identifier_consent c, jsonb_each(c.consent) e
                     WHERE c.identifier = ANY (ids)),
        'consent_history', (SELECT coalesce(jsonb_agg(to_jsonb(c) ORDER BY c.at, c.id), '[]')
                              FROM cdp.consent_log c WHERE c.identifier = ANY (ids)),
        'events', (SELECT coalesce(jsonb_agg(e ORDER BY (e->>'ts')::timestamptz, e->>'message_id'), '[]')
                     FROM jsonb_array_elements(events) e),
        'detached_partition_events', detached,
        'not_read', not_read,
        'merges', (SELECT coalesce(jsonb_agg(to_jsonb(m) ORDER BY m.merged_at), '[]')
                     FROM cdp.merges m WHERE m.from_profile = ANY (pids) OR m.into_profile = ANY (pids)),
        'identity_violations', (SELECT coalesce(jsonb_agg(to_jsonb(v) ORDER BY v.at), '[]')
                                  FROM cdp.identity_violations v
                                 WHERE v.identifier = ANY (ids)
                                    OR (v.identifier IS NULL AND v.message_id IS NOT NULL
                                        AND cdp.subject_message(v.at, v.message_id, pids, ids))),
        'inbox', (SELECT coalesce(jsonb_agg(to_jsonb(q) ORDER BY q.id), '[]')
                    FROM cdp.inbox q WHERE q.payload IS NOT NULL AND cdp.payload_carries(q.payload, ids)),
        'dead_letters', (SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY d.id), '[]')
                           FROM cdp.dead_letters d WHERE cdp.payload_carries(d.payload, ids)));
END
$$;
COMMENT ON FUNCTION cdp.export_subject(cdp.identifier) IS
    'everything held about the person an identifier names, as one JSON document (all their events included)';
