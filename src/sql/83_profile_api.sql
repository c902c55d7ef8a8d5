-- The profile API's answers, in SQL: what GET /v1/profiles/{identifier}/traits
-- and /audiences send for a profile to a read key's purpose.  The HTTP
-- endpoint calls these functions; so can anything else that serves a
-- person's profile to a purpose.  A profile answers only when it is a
-- canonical profile (or was merged into one: then the canonical one
-- answers) that granted the purpose, exactly as it would appear in a
-- generated profile view of that purpose; NULL otherwise, so that a caller
-- cannot tell a person who did not consent from one unknown.

-- traits->key converted as cdp.trait_as converts it to type (what a profile
-- view's column holds), given back as the JSON to_jsonb makes of that value;
-- NULL when absent, JSON null or not convertible.  The type comes from
-- cdp.trait_definitions, so one call site converts to many types.
CREATE FUNCTION cdp.trait_json(traits jsonb, key text, type regtype)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'cdp_trait_json'
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION cdp.trait_json(jsonb, text, regtype) IS
    'traits->key as the type''s value (as cdp.trait_as converts it), in JSON; NULL when absent or it does not convert';

-- The canonical profile a profile id stands for when that profile granted
-- purpose (the row filter of a generated profile view), or nothing.  Not
-- STRICT and without SET clauses so that the planner inlines it into its
-- callers (their search_path applies: every name in it is qualified).
CREATE FUNCTION cdp.profile_api_visible(profile_id bigint, purpose text)
RETURNS TABLE (profile_id bigint, traits jsonb, consent jsonb)
LANGUAGE sql STABLE
AS $$
    SELECT r.profile_id, r.traits, r.consent
      FROM cdp.profile_records m
      JOIN cdp.profile_records r ON r.profile_id = coalesce(m.merged_into, m.profile_id)
     WHERE m.profile_id = profile_api_visible.profile_id
       AND r.merged_into IS NULL
       AND cdp.consent_granted(r.consent, profile_api_visible.purpose)
$$;

-- {"profile_id": P, "traits": {...}}: every declared trait the profile
-- holds a convertible value of, typed as profile views type it, and every
-- computed trait with a value, each shown when its own purpose is the one
-- asked or the profile granted that one too.
-- PL/pgSQL so that the query's plan is kept for the session.
CREATE FUNCTION cdp.profile_api_traits(profile_id bigint, purpose text)
RETURNS jsonb
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
                       'profile_id', v.profile_id,
                       'traits', coalesce((SELECT jsonb_object_agg(t.name, t.value)
                                             FROM (SELECT d.name, cdp.trait_json(v.traits, d.name, d.type) AS value
                                                     FROM cdp.trait_definitions d
                                                    WHERE d.purpose = profile_api_traits.purpose
                                                       OR cdp.consent_granted(v.consent, d.purpose)
                                                   UNION ALL
                                                   -- computed traits: as profile views show them
                                                   -- (0 for a count of nothing)
                                                   SELECT c.name,
                                                          coalesce((SELECT pc.traits->c.name FROM cdp.profile_computed pc
                                                                     WHERE pc.profile_id = v.profile_id),
                                                                   CASE WHEN c.kind IN ('count', 'unique_count')
                                                                        THEN '0'::jsonb END)
                                                     FROM cdp.computed_traits c
                                                    WHERE c.status = 'live'
                                                      AND (c.purpose = profile_api_traits.purpose
                                                           OR cdp.consent_granted(v.consent, c.purpose))) t
                                            WHERE t.value IS NOT NULL), '{}'::jsonb))
              FROM cdp.profile_api_visible(profile_api_traits.profile_id, profile_api_traits.purpose) v);
END
$$;
COMMENT ON FUNCTION cdp.profile_api_traits(bigint, text) IS
    'a profile''s declared traits a purpose may see, as JSON; NULL when the profile is unknown or did not grant purpose';

-- {"profile_id": P, "audiences": ["name", ...]}: the audiences the profile
-- is a member of now (its current audience_spans), by name, shown under the
-- same rule as traits: the audience's purpose is the one asked, or the
-- profile granted that one too.
CREATE FUNCTION cdp.profile_api_audiences(profile_id bigint, purpose text)
RETURNS jsonb
LANGUAGE plpgsql STABLE STRICT
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    RETURN (SELECT jsonb_build_object(
                       'profile_id', v.profile_id,
                       'audiences', coalesce((SELECT jsonb_agg(a.name ORDER BY a.name)
                                                FROM cdp.audience_spans s
                                                JOIN cdp.audiences a ON a.id = s.audience_id
                                               WHERE s.profile_id = v.profile_id AND s.exited_at IS NULL
                                                 AND (a.purpose = profile_api_audiences.purpose
                                                      OR cdp.consent_granted(v.consent, a.purpose))), '[]'::jsonb))
              FROM cdp.profile_api_visible(profile_api_audiences.profile_id, profile_api_audiences.purpose) v);
END
$$;
COMMENT ON FUNCTION cdp.profile_api_audiences(bigint, text) IS
    'the audiences of a profile a purpose may see, as JSON; NULL when the profile is unknown or did not grant purpose';
