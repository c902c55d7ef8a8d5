-- Sources and write keys: a key is shown once and only its SHA-256 is kept;
-- keys authenticate until rotated or the source is disabled.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(40);

CREATE TEMP TABLE keys (name text PRIMARY KEY, key text);
INSERT INTO keys VALUES ('web', cdp.create_source('web'));

-- create_source
SELECT matches((SELECT key FROM keys WHERE name = 'web'), '^cdp_[0-9a-f]{64}$',
               'create_source returns a key: cdp_ and 64 hex digits');
SELECT is(length((SELECT key FROM keys WHERE name = 'web')), 68,
          'create_source returns a 68-character key');
SELECT is((SELECT key_hash FROM cdp.source_keys WHERE name = 'web'),
          sha256(convert_to((SELECT key FROM keys WHERE name = 'web'), 'UTF8')),
          'only the SHA-256 of the key is stored');
SELECT is((SELECT count(*)::int FROM cdp.source_keys s
            WHERE strpos(row_to_json(s)::text, (SELECT substr(key, 5) FROM keys WHERE name = 'web')) > 0),
          0, 'the key itself is stored nowhere in cdp.source_keys');
SELECT is((SELECT count(*)::int FROM cdp.sources s
            WHERE strpos(row_to_json(s)::text, (SELECT substr(key, 5) FROM keys WHERE name = 'web')) > 0
               OR strpos(row_to_json(s)::text,
                         encode(sha256(convert_to((SELECT key FROM keys WHERE name = 'web'), 'UTF8')), 'hex')) > 0),
          0, 'cdp.sources shows neither the key nor its hash');
INSERT INTO keys VALUES ('app', cdp.create_source('app'));
SELECT isnt((SELECT key FROM keys WHERE name = 'web'), (SELECT key FROM keys WHERE name = 'app'),
            'every source gets a different key');
SELECT results_eq($$SELECT name, enabled, rotated_at IS NULL, disabled_at IS NULL
                      FROM cdp.sources ORDER BY name$$,
                  $$VALUES ('app', true, true, true), ('copy', true, true, true),
                           ('sql', true, true, true), ('web', true, true, true)$$,
                  'cdp.sources lists the sources, enabled and never rotated, the built-in sql and copy too');
SELECT is((SELECT created_at FROM cdp.sources WHERE name = 'web'), now(),
          'created_at is the creating transaction''s time');

-- authenticate
SELECT is(cdp.authenticate((SELECT key FROM keys WHERE name = 'web')), 'web',
          'authenticate returns the source a key belongs to');
SELECT is(cdp.authenticate((SELECT key FROM keys WHERE name = 'app')), 'app',
          'authenticate tells sources apart');
SELECT is(cdp.authenticate('cdp_' || repeat('0', 64)), NULL, 'a wrong key authenticates nothing');
SELECT is(cdp.authenticate(upper((SELECT key FROM keys WHERE name = 'web'))), NULL,
          'keys are case-sensitive');
SELECT is(cdp.authenticate(''), NULL, 'an empty key authenticates nothing');
SELECT is(cdp.authenticate(NULL), NULL, 'a NULL key authenticates nothing');

-- names
SELECT throws_ok($$SELECT cdp.create_source('web')$$, '42710', 'source "web" already exists',
                 'a duplicate source is refused with 42710');
SELECT throws_ok($$SELECT cdp.create_source('')$$, '22023', NULL, 'an empty name is refused with 22023');
SELECT throws_ok($$SELECT cdp.create_source('has space')$$, '22023', 'invalid source name "has space"',
                 'a name with a space is refused with 22023');
SELECT throws_ok($$SELECT cdp.create_source('-leading')$$, '22023', NULL,
                 'a name starting with punctuation is refused with 22023');
SELECT throws_ok($$SELECT cdp.create_source(repeat('a', 64))$$, '22023', NULL,
                 'a 64-character name is refused with 22023');
SELECT throws_ok($$SELECT cdp.create_source('naïve')$$, '22023', NULL,
                 'a non-ASCII name is refused with 22023');
INSERT INTO keys VALUES (repeat('b', 63), cdp.create_source(repeat('b', 63))),
                        ('Web.prod-1_eu', cdp.create_source('Web.prod-1_eu'));
SELECT is(cdp.authenticate((SELECT key FROM keys WHERE name = repeat('b', 63))), repeat('b', 63),
          'a 63-character name is registered whole: its key authenticates to exactly that name');
SELECT is(cdp.authenticate((SELECT key FROM keys WHERE name = 'Web.prod-1_eu')), 'Web.prod-1_eu',
          'a name of letters, digits, "_", "." and "-" is registered as given, case kept');
SELECT is(cdp.ingest('{"type": "track", "userId": "u", "event": "e"}', repeat('b', 63)), 1::bigint,
          'cdp.ingest takes a message for the 63-character source');
SELECT throws_ok($$SELECT cdp.ingest('{"type": "track", "userId": "u", "event": "e"}', 'WEB.PROD-1_EU')$$,
                 '42704', 'source "WEB.PROD-1_EU" does not exist',
                 'source names are matched exactly: another case is another (unknown) source');

-- rotate_write_key
INSERT INTO keys VALUES ('web-rotated', cdp.rotate_write_key('web'));
SELECT is(cdp.authenticate((SELECT key FROM keys WHERE name = 'web')), NULL,
          'after rotate_write_key the old key no longer authenticates');
SELECT is(cdp.authenticate((SELECT key FROM keys WHERE name = 'web-rotated')), 'web',
          'after rotate_write_key the new key authenticates');
SELECT matches((SELECT key FROM keys WHERE name = 'web-rotated'), '^cdp_[0-9a-f]{64}$',
               'rotate_write_key returns a key of the same form');
SELECT isnt((SELECT rotated_at FROM cdp.sources WHERE name = 'web'), NULL,
            'rotated_at is set by rotate_write_key');
SELECT throws_ok($$SELECT cdp.rotate_write_key('nope')$$, '42704', 'source "nope" does not exist',
                 'rotating an unknown source is refused with 42704');

-- disable_source
DO $$ BEGIN PERFORM cdp.disable_source('app'); END $$;
SELECT is(cdp.authenticate((SELECT key FROM keys WHERE name = 'app')), NULL,
          'a disabled source''s key no longer authenticates');
SELECT is((SELECT enabled FROM cdp.sources WHERE name = 'app'), false,
          'cdp.sources shows the source disabled');
SELECT throws_ok($$SELECT cdp.ingest('{"type": "track", "userId": "u", "event": "e"}', 'app')$$,
                 '55000', 'source "app" is disabled',
                 'cdp.ingest into a disabled source raises 55000');
INSERT INTO keys VALUES ('app-rotated', cdp.rotate_write_key('app'));
SELECT is(cdp.authenticate((SELECT key FROM keys WHERE name = 'app-rotated')), NULL,
          'rotating the key of a disabled source does not enable it');
SELECT throws_ok($$SELECT cdp.disable_source('nope')$$, '42704', 'source "nope" does not exist',
                 'disabling an unknown source is refused with 42704');

-- cdp.ingest takes messages only for registered, enabled sources
SELECT throws_ok($$SELECT cdp.ingest('{"type": "track", "userId": "u", "event": "e"}', 'never_registered')$$,
                 '42704', 'source "never_registered" does not exist',
                 'cdp.ingest refuses a source that was never registered with 42704');
SELECT throws_ok($$SELECT cdp.ingest('{"type": "track", "userId": "u", "event": "e"}', '')$$,
                 '42704', 'source "" does not exist', 'cdp.ingest refuses an empty source name');
SELECT throws_ok($$SELECT cdp.ingest('{"type": "track", "userId": "u", "event": "e"}', repeat('x', 100000))$$,
                 '42704', 'source "' || repeat('x', 63) || '..." does not exist',
                 'cdp.ingest refuses a 100,000-character source name, quoting only its start');
SELECT throws_ok($$SELECT cdp.ingest('{"batch": []}', 'never_registered')$$, '42704', NULL,
                 'even an empty batch for an unknown source is refused');
SELECT is(cdp.ingest('{"type": "track", "userId": "u", "event": "e"}'), 1::bigint,
          'the built-in source sql, cdp.ingest''s default, takes messages');
SELECT is((SELECT count(*)::int FROM cdp.inbox WHERE source NOT IN ('sql', repeat('b', 63))), 0,
          'nothing was queued for a refused source');

SELECT * FROM finish();
ROLLBACK;
