-- What people said about themselves: traits and consent.  Both are kept per
-- identifier (the source of truth, which merges, splits, rebuilds and forget
-- never have to rewrite) and derived into the profile's record
-- (cdp.profile_records.traits, trait_times, consent) for reading.

-- What a person can consent to.  Segment consent categories and RudderStack
-- consent ids map to purposes by lower-cased name.
CREATE TABLE cdp.purposes (
    name            text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    default_granted bool NOT NULL,
    defined_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE cdp.purposes IS
    'purposes a person can consent to, and whether one who never decided counts as granted';
INSERT INTO cdp.purposes (name, default_granted) VALUES
    ('analytics', true), ('personalization', false), ('marketing', false), ('advertising', false);

-- Per identifier, for each trait key the latest value its messages set and
-- that value's event time (ISO 8601 text, compared as timestamptz).
CREATE TABLE cdp.identifier_traits (
    identifier  cdp.identifier PRIMARY KEY,
    traits      jsonb NOT NULL,
    trait_times jsonb NOT NULL
) WITH (fillfactor = 80);

-- The history of consent decisions (every set_consent call, and every
-- decision of a message that set or changed one: SDKs repeat the current
-- preferences on every message, and a repeat is no history), and per
-- identifier the latest decision per purpose by decision time.
CREATE TABLE cdp.consent_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    identifier  cdp.identifier NOT NULL,
    purpose     text NOT NULL,
    granted     bool NOT NULL,
    at          timestamptz NOT NULL,    -- the decision's time: the event's, or set_consent's at
    message_id  text,                    -- the message that carried it; NULL from set_consent
    source      text NOT NULL,           -- the message's source, or 'api' for set_consent
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_log_identifier_idx ON cdp.consent_log (identifier);

CREATE TABLE cdp.identifier_consent (
    identifier  cdp.identifier PRIMARY KEY,
    -- {purpose: {"granted": bool, "at": ISO 8601 text, "source": text,
    --  "message_id": text or null}}, as profile_records.consent holds them:
    -- one row per identifier, so a message stating several purposes
    -- updates one row, not one per purpose
    consent     jsonb NOT NULL
) WITH (fillfactor = 80);

-- A batch rewrites the state rows and profile records of the people it
-- carries (SDKs repeat traits and consent on every message): room on each
-- page lets those updates stay on the page (HOT), with no new index entries.
ALTER TABLE cdp.profile_records SET (fillfactor = 80);

-- Times in the derived columns and the per-identifier trait times: ISO 8601
-- in UTC, fixed width, so that comparing the text (COLLATE "C") orders them
-- as times and every session writes the same text for the same instant.
-- STABLE as to_char is, so that it is inlined where it is used.
CREATE FUNCTION cdp.state_time(ts timestamptz)
RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
RETURN to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"');

-- Merge trait maps key by key: for each key the value with the latest time
-- (ties: the larger value text, a total order, so the result never depends
-- on the order maps come in).  At most max_keys keys: with keep_first the
-- keys of the first map stay and new ones come in key order while there is
-- room (a per-identifier store: a stored key is never lost); without it
-- the first max_keys keys in key order (a profile: the same whether built
-- up a batch at a time or recomputed at once).
CREATE FUNCTION cdp.merge_traits(trait_maps jsonb[], time_maps jsonb[], max_keys int,
                                 keep_first bool, OUT traits jsonb, OUT trait_times jsonb)
AS 'MODULE_PATHNAME', 'cdp_merge_traits'
LANGUAGE C IMMUTABLE PARALLEL SAFE;

-- One consent decision as the profile's consent column holds it.
CREATE FUNCTION cdp.consent_entry(granted bool, at timestamptz, source text, message_id text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE
RETURN jsonb_build_object('granted', granted, 'at', cdp.state_time(at), 'source', source,
                          'message_id', message_id);

-- Merge consent maps ({purpose: consent_entry}) purpose by purpose: the
-- latest decision wins; at the same time a denial wins over a grant, then
-- the larger message id and source (a total order).
CREATE FUNCTION cdp.merge_consent(consent_maps jsonb[])
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cdp_merge_consent'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- Derive the traits and consent of the given profiles (and of the canonical
-- profiles they were merged into) from the per-identifier stores of their
-- identifiers.  Merges, splits, rebuilds, cdp.link and forget call it for
-- the profiles they touch, with those profile rows locked.  A profile left
-- without identifiers gets empty maps.
CREATE FUNCTION cdp.recompute_profile_state(profile_ids bigint[])
RETURNS void
LANGUAGE sql VOLATILE
BEGIN ATOMIC
    UPDATE cdp.profile_records r
       SET traits = t.traits, trait_times = t.trait_times,
           consent = cdp.merge_consent(ARRAY(
               SELECT c.consent
                 FROM cdp.identities i
                 JOIN cdp.identifier_consent c ON c.identifier OPERATOR(cdp.=) i.identifier
                WHERE i.profile_id = r.profile_id))
      FROM (SELECT DISTINCT p.id
              FROM (SELECT x.id FROM unnest(profile_ids) AS x(id)
                    UNION ALL
                    SELECT pr.merged_into FROM cdp.profile_records pr
                     WHERE pr.profile_id = ANY (profile_ids) AND pr.merged_into IS NOT NULL) p) s,
           LATERAL cdp.merge_traits(
               ARRAY(SELECT it.traits FROM cdp.identities i
                       JOIN cdp.identifier_traits it ON it.identifier OPERATOR(cdp.=) i.identifier
                      WHERE i.profile_id = s.id ORDER BY it.identifier),
               ARRAY(SELECT it.trait_times FROM cdp.identities i
                       JOIN cdp.identifier_traits it ON it.identifier OPERATOR(cdp.=) i.identifier
                      WHERE i.profile_id = s.id ORDER BY it.identifier),
               1000, false) t
     WHERE r.profile_id = s.id;
    -- computed traits follow the same changes of membership
    SELECT cdp.refresh_computed_traits(profile_ids);
    -- and audiences, at commit
    SELECT cdp.profiles_changed(profile_ids);
END;
COMMENT ON FUNCTION cdp.recompute_profile_state(bigint[]) IS
    'internal: derive profile_records.traits, trait_times and consent of these profiles from their identifiers';

-- Define a purpose, or change its default.  Names are SQL-friendly: lower
-- case letters, digits and underscores, starting with a letter, at most 63.
CREATE FUNCTION cdp.define_purpose(name text, default_granted bool DEFAULT false)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    IF name IS NULL OR name !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'invalid purpose name "%"', name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A purpose name is 1 to 63 characters: lower-case letters, digits and underscores, starting with a letter.',
                  HINT = 'Consent categories in messages match purposes case-insensitively: define "Marketing" as marketing.';
    END IF;
    IF default_granted IS NULL THEN
        RAISE EXCEPTION 'default_granted of purpose "%" must not be null', name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO cdp.purposes AS p (name, default_granted) VALUES (name, default_granted)
    ON CONFLICT ON CONSTRAINT purposes_pkey DO UPDATE SET default_granted = excluded.default_granted;
END
$$;
COMMENT ON FUNCTION cdp.define_purpose(text, bool) IS
    'define a purpose people can consent to, or change whether it counts as granted by default';

-- Record a consent decision for an identifier, as a message would, with
-- source 'api' (the purpose matched case-insensitively, as a message's).  It takes the locks identity writers take: the identifier's
-- profile row (ingest writes an identifier's state holding it), or when the
-- identifier has no profile yet the identity lock, so that a message linking
-- it at the same time either sees this decision or is seen by it.
CREATE FUNCTION cdp.set_consent(id cdp.identifier, purpose text, granted bool,
                                at timestamptz DEFAULT now())
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    prof bigint;
    locked_prof bigint;
    graph_locked bool := false;
BEGIN
    IF id IS NULL OR purpose IS NULL OR granted IS NULL OR at IS NULL THEN
        RAISE EXCEPTION 'set_consent needs an identifier, a purpose, granted and a time'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- as consent categories in messages: 'Marketing' is marketing
    purpose := lower(purpose COLLATE "C");
    IF NOT EXISTS (SELECT 1 FROM cdp.purposes p WHERE p.name = purpose) THEN
        RAISE EXCEPTION 'purpose "%" does not exist', purpose
            USING ERRCODE = 'undefined_object',
                  HINT = 'Define it first with cdp.define_purpose(); see cdp.purposes.';
    END IF;
    IF NOT isfinite(at) OR at < '0001-01-01 00:00:00+00' OR at >= '10000-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'consent time % is out of range', at
            USING ERRCODE = 'datetime_field_overflow';
    END IF;
    -- the latest decision wins, so one dated ahead would outrank every
    -- later one (a withdrawal too) until then; message times are bounded
    -- by the same setting
    IF at > statement_timestamp() + current_setting('cdp.max_future_skew')::interval THEN
        RAISE EXCEPTION 'consent time % is in the future', at
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('It is more than cdp.max_future_skew (%s) after now.',
                                  current_setting('cdp.max_future_skew')),
                  HINT = 'Record a decision when it is made; at defaults to now().';
    END IF;
    LOOP
        SELECT i.profile_id INTO prof FROM cdp.identities i WHERE i.identifier OPERATOR(cdp.=) id;
        EXIT WHEN prof IS NOT DISTINCT FROM locked_prof AND (prof IS NOT NULL OR graph_locked);
        IF prof IS NULL THEN
            -- the identity lock (CdpLockIdentityGraph's key), then read again
            PERFORM pg_advisory_xact_lock(1128550401, 3);
            graph_locked := true;
            locked_prof := NULL;
        ELSE
            PERFORM 1 FROM cdp.profile_records r WHERE r.profile_id = prof FOR UPDATE;
            locked_prof := prof;
        END IF;
    END LOOP;
    -- a forgotten person's identifier would be kept in clear again; after
    -- the locks: cdp.forget holds them, so one that committed is seen
    IF cdp.identifier_suppressed(id) THEN
        RAISE EXCEPTION 'cannot record consent for a suppressed identifier'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'It belonged to a person erased with cdp.forget(); pg_cdp keeps no data about it.';
    END IF;

    INSERT INTO cdp.consent_log (identifier, purpose, granted, at, message_id, source)
    VALUES (id, purpose, granted, at, NULL, 'api');
    INSERT INTO cdp.identifier_consent AS c (identifier, consent)
    VALUES (id, jsonb_build_object(purpose, cdp.consent_entry(granted, at, 'api', NULL)))
    ON CONFLICT ON CONSTRAINT identifier_consent_pkey DO UPDATE
       SET consent = cdp.merge_consent(ARRAY[c.consent, excluded.consent])
     WHERE cdp.merge_consent(ARRAY[c.consent, excluded.consent]) IS DISTINCT FROM c.consent;
    IF prof IS NOT NULL THEN
        PERFORM cdp.recompute_profile_state(ARRAY[prof]);
    END IF;
END
$$;
COMMENT ON FUNCTION cdp.set_consent(cdp.identifier, text, bool, timestamptz) IS
    'record a consent decision for an identifier (source api); the latest decision by time wins';

-- Every defined purpose with the profile's decision, or its default.  A
-- merged-away profile answers for the profile it was merged into.
CREATE FUNCTION cdp.consent_of(profile_id bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    held jsonb;
BEGIN
    IF profile_id IS NULL THEN
        RAISE EXCEPTION 'consent_of needs a profile id'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'cdp.resolve() gives NULL for an identifier no message carried yet.';
    END IF;
    SELECT c.consent INTO held
      FROM cdp.profile_records r
      JOIN cdp.profile_records c ON c.profile_id = coalesce(r.merged_into, r.profile_id)
     WHERE r.profile_id = consent_of.profile_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'profile % does not exist', profile_id
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN (SELECT coalesce(jsonb_object_agg(p.name,
                       coalesce(held -> p.name,
                                jsonb_build_object('granted', p.default_granted, 'at', NULL,
                                                   'source', 'default', 'message_id', NULL))
                       ORDER BY p.name), '{}')
              FROM cdp.purposes p);
END
$$;
COMMENT ON FUNCTION cdp.consent_of(bigint) IS
    'per defined purpose: granted, when, by which source (source default: never decided)';
