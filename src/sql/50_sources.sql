-- Sources and write keys.  A key is shown once, when made; only its SHA-256 is
-- stored.  Keys carry 244 random bits, so a fast digest is enough.

CREATE TABLE cdp.source_keys (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    key_hash    bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_at  timestamptz,
    disabled_at timestamptz
);

CREATE VIEW cdp.sources AS
SELECT name, created_at, rotated_at, disabled_at, disabled_at IS NULL AS enabled
  FROM cdp.source_keys;
COMMENT ON VIEW cdp.sources IS 'registered sources; write keys are never shown';

CREATE FUNCTION cdp.new_write_key()
RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, cdp
AS $$
    SELECT 'cdp_' || replace(gen_random_uuid()::text, '-', '')
                  || replace(gen_random_uuid()::text, '-', '')
$$;

CREATE FUNCTION cdp.write_key_hash(key text)
RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT
SET search_path = pg_catalog, cdp
AS $$ SELECT sha256(convert_to(key, 'UTF8')) $$;

CREATE FUNCTION cdp.create_source(name text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    key text := cdp.new_write_key();
BEGIN
    INSERT INTO cdp.source_keys (name, key_hash)
    VALUES (create_source.name, cdp.write_key_hash(key));
    RETURN key;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'source "%" already exists', create_source.name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Use cdp.rotate_write_key() for a new key.';
    WHEN check_violation THEN
        RAISE EXCEPTION 'invalid source name "%"', create_source.name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A source name is 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit.';
END
$$;
COMMENT ON FUNCTION cdp.create_source(text) IS
    'register a source; returns its write key, which is shown only this once';

CREATE FUNCTION cdp.rotate_write_key(name text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    key text := cdp.new_write_key();
BEGIN
    UPDATE cdp.source_keys s
       SET key_hash = cdp.write_key_hash(key), rotated_at = now()
     WHERE s.name = rotate_write_key.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'source "%" does not exist', rotate_write_key.name
            USING ERRCODE = 'undefined_object';
    END IF;
    RETURN key;
END
$$;
COMMENT ON FUNCTION cdp.rotate_write_key(text) IS
    'replace a source''s write key; the old key stops working at commit';

CREATE FUNCTION cdp.disable_source(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    UPDATE cdp.source_keys s
       SET disabled_at = coalesce(s.disabled_at, now())
     WHERE s.name = disable_source.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'source "%" does not exist', disable_source.name
            USING ERRCODE = 'undefined_object';
    END IF;
END
$$;
COMMENT ON FUNCTION cdp.disable_source(text) IS
    'stop accepting messages from a source; its key no longer authenticates';

-- The source a write key belongs to, NULL for unknown or disabled keys; what
-- the HTTP endpoint asks before it accepts a request.
CREATE FUNCTION cdp.authenticate(write_key text)
RETURNS text
LANGUAGE sql STABLE STRICT SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
    SELECT s.name FROM cdp.source_keys s
     WHERE s.key_hash = cdp.write_key_hash(write_key) AND s.disabled_at IS NULL
$$;

-- 'sql' (cdp.ingest's default source) and 'copy' (the inbox's default for
-- rows loaded without one) are built in: present from the start, disabled
-- like any other.  Their first keys are never shown; rotate_write_key()
-- gives one to use.
INSERT INTO cdp.source_keys (name, key_hash)
VALUES ('sql', cdp.write_key_hash(cdp.new_write_key())),
       ('copy', cdp.write_key_hash(cdp.new_write_key()));
