-- Read keys of the profile API (api.md "Profiles, consent, privacy"):
-- create_read_key, rotate_read_key, disable_read_key and cdp.read_keys.  A
-- key is shown once and only its SHA-256 is stored; its text tells it from
-- a write key; only the extension's owner may manage keys.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(28);

-- the error a call raises, as 'SQLSTATE: message (hint)'
CREATE FUNCTION pg_temp.error_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text;
    msg text;
    hint text;
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    RETURN state || ': ' || msg || coalesce(' (' || nullif(hint, '') || ')', '');
END
$$;
CREATE TEMP TABLE keys (name text PRIMARY KEY, key text);
INSERT INTO keys VALUES ('svc', cdp.create_read_key('svc', 'personalization'));

SELECT matches((SELECT key FROM keys WHERE name = 'svc'), '^cdp_rk_[0-9a-f]{64}$',
               'a read key is cdp_rk_ and 64 hex digits');
SELECT isnt((SELECT key FROM keys WHERE name = 'svc') ~ '^cdp_[0-9a-f]+$', true,
            'a read key cannot be taken for a write key (cdp_ and hex digits only)');
SELECT results_eq($$SELECT name, purpose, rotated_at IS NULL, disabled_at IS NULL, enabled FROM cdp.read_keys$$,
                  $$VALUES ('svc'::text, 'personalization'::text, true, true, true)$$,
                  'cdp.read_keys lists the key with its purpose');
SELECT is((SELECT key_hash FROM cdp.read_key_records WHERE name = 'svc'),
          sha256(convert_to((SELECT key FROM keys WHERE name = 'svc'), 'UTF8')),
          'the SHA-256 of the key is stored');
SELECT is((SELECT count(*)::int FROM cdp.read_key_records r, keys k
            WHERE to_jsonb(r)::text LIKE '%' || k.key || '%'), 0,
          'the key itself is stored nowhere in the table');
SELECT is((SELECT count(*)::int FROM information_schema.columns
            WHERE table_schema = 'cdp' AND table_name = 'read_keys' AND column_name LIKE '%key%'), 0,
          'cdp.read_keys has no column holding a key or its hash');
SELECT isnt(cdp.create_read_key('svc2', 'personalization'), (SELECT key FROM keys WHERE name = 'svc'),
            'two keys differ');

-- errors
SELECT is(pg_temp.error_of($$SELECT cdp.create_read_key('svc', 'marketing')$$),
          '42710: read key "svc" already exists (Use cdp.rotate_read_key() for a new key.)',
          'an existing name is refused, with a hint to rotate');
SELECT is(pg_temp.error_of($$SELECT cdp.create_read_key('other', 'nosuch')$$),
          '42704: purpose "nosuch" does not exist (Define it with cdp.define_purpose(); see cdp.purposes for the purposes defined.)',
          'an unknown purpose is refused, with a hint');
SELECT is(pg_temp.error_of($$SELECT cdp.create_read_key('other', NULL)$$),
          '42704: purpose "<NULL>" does not exist (Define it with cdp.define_purpose(); see cdp.purposes for the purposes defined.)',
          'a NULL purpose is refused');
SELECT is(pg_temp.error_of(format('SELECT cdp.create_read_key(%L, %L)', n, 'analytics')),
          format('22023: invalid read key name "%s"', n), 'the name ' || coalesce(quote_literal(n), 'NULL') || ' is refused')
  FROM unnest(ARRAY['', 'has space', '-leading', repeat('x', 64), 'semi;colon']) n;
SELECT is(pg_temp.error_of($$SELECT cdp.create_read_key(NULL, 'analytics')$$),
          '22023: invalid read key name "<NULL>"', 'a NULL name is refused');
SELECT is((SELECT count(*)::int FROM cdp.read_keys), 2, 'refused keys left nothing behind');

-- rotate: a new key, the old hash gone
INSERT INTO keys VALUES ('svc-rotated', cdp.rotate_read_key('svc'));
SELECT is((SELECT key_hash FROM cdp.read_key_records WHERE name = 'svc'),
          sha256(convert_to((SELECT key FROM keys WHERE name = 'svc-rotated'), 'UTF8')),
          'rotate_read_key stores the new key''s hash ...');
SELECT isnt((SELECT key FROM keys WHERE name = 'svc-rotated'), (SELECT key FROM keys WHERE name = 'svc'),
            '... of a new key');
SELECT isnt((SELECT rotated_at FROM cdp.read_keys WHERE name = 'svc'), NULL, '... and says when');
SELECT is(pg_temp.error_of($$SELECT cdp.rotate_read_key('nosuch')$$),
          '42704: read key "nosuch" does not exist (cdp.read_keys lists the read keys.)',
          'rotating an unknown key is refused');

-- disable
SELECT lives_ok($$SELECT cdp.disable_read_key('svc2')$$, 'disable_read_key');
SELECT results_eq($$SELECT name, enabled FROM cdp.read_keys ORDER BY name$$,
                  $$VALUES ('svc'::text, true), ('svc2'::text, false)$$, 'the key is disabled, the other not');
SELECT is(pg_temp.error_of($$SELECT cdp.disable_read_key('nosuch')$$),
          '42704: read key "nosuch" does not exist (cdp.read_keys lists the read keys.)',
          'disabling an unknown key is refused');

-- privileges: the extension owner's only
CREATE ROLE regress_rk_other;
GRANT USAGE ON SCHEMA cdp TO regress_rk_other;
SET LOCAL ROLE regress_rk_other;
SELECT throws_ok(format('SELECT %s', f), '42501', NULL, 'another role cannot call ' || f)
  FROM unnest(ARRAY[$$cdp.create_read_key('mine', 'analytics')$$, $$cdp.rotate_read_key('svc')$$,
                    $$cdp.disable_read_key('svc')$$]) f;
SELECT throws_ok('SELECT 1 FROM cdp.read_keys', '42501', NULL, 'another role cannot read cdp.read_keys');
RESET ROLE;

SELECT * FROM finish();
ROLLBACK;
