-- Read keys: what a service presents to read profiles over HTTP
-- (GET /v1/profiles/{identifier}/traits, /audiences).  A read key belongs
-- to one purpose and sees only what people granted that purpose.  Like a
-- write key it is shown once, when made, and only its SHA-256 is stored; its
-- text starts with cdp_rk_, which no write key does.

CREATE TABLE cdp.read_key_records (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$'),
    purpose     text NOT NULL REFERENCES cdp.purposes (name),
    key_hash    bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    rotated_at  timestamptz,
    disabled_at timestamptz
);
COMMENT ON TABLE cdp.read_key_records IS
    'read keys of the profile API: their purpose and the SHA-256 of the key';

CREATE VIEW cdp.read_keys AS
SELECT name, purpose, created_at, rotated_at, disabled_at, disabled_at IS NULL AS enabled
  FROM cdp.read_key_records;
COMMENT ON VIEW cdp.read_keys IS 'read keys of the profile API; the keys are never shown';

-- A write key's 244 random bits behind the read key's own prefix.
CREATE FUNCTION cdp.new_read_key()
RETURNS text
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, cdp
AS $$ SELECT 'cdp_rk_' || substr(cdp.new_write_key(), 5) $$;

CREATE FUNCTION cdp.create_read_key(name text, purpose text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    key text := cdp.new_read_key();
BEGIN
    PERFORM cdp.check_purpose(purpose);
    INSERT INTO cdp.read_key_records (name, purpose, key_hash)
    VALUES (create_read_key.name, create_read_key.purpose, cdp.write_key_hash(key));
    RETURN key;
EXCEPTION
    WHEN unique_violation THEN
        RAISE EXCEPTION 'read key "%" already exists', create_read_key.name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Use cdp.rotate_read_key() for a new key.';
    WHEN check_violation OR not_null_violation THEN
        RAISE EXCEPTION 'invalid read key name "%"', create_read_key.name
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'A read key name is 1 to 63 letters, digits, "_", "." or "-", starting with a letter or digit.';
END
$$;
COMMENT ON FUNCTION cdp.create_read_key(text, text) IS
    'make a read key of the profile API for a purpose; returns the key, which is shown only this once';

CREATE FUNCTION cdp.rotate_read_key(name text)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
DECLARE
    key text := cdp.new_read_key();
BEGIN
    UPDATE cdp.read_key_records k
       SET key_hash = cdp.write_key_hash(key), rotated_at = now()
     WHERE k.name = rotate_read_key.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'read key "%" does not exist', rotate_read_key.name
            USING ERRCODE = 'undefined_object',
                  HINT = 'cdp.read_keys lists the read keys.';
    END IF;
    RETURN key;
END
$$;
COMMENT ON FUNCTION cdp.rotate_read_key(text) IS
    'replace a read key; the old key stops working at commit';

CREATE FUNCTION cdp.disable_read_key(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, cdp
AS $$
BEGIN
    UPDATE cdp.read_key_records k
       SET disabled_at = coalesce(k.disabled_at, now())
     WHERE k.name = disable_read_key.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'read key "%" does not exist', disable_read_key.name
            USING ERRCODE = 'undefined_object',
                  HINT = 'cdp.read_keys lists the read keys.';
    END IF;
END
$$;
COMMENT ON FUNCTION cdp.disable_read_key(text) IS
    'stop a read key from authenticating; it cannot be enabled again (make a new one)';
