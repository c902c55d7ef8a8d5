-- Message text is parsed by a fast path for the common case and by
-- PostgreSQL's JSON parser for the rest (escapes, control characters, deep
-- nesting, bad JSON).  Whichever path takes a message, what is stored is
-- what payload::jsonb holds, and bad JSON gets the error PostgreSQL's parser
-- reports: random documents in three layouts, hand-written number, space and
-- escape forms, and a catalogue of near-JSON that must be refused.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(10);

SELECT setseed(0.4242);

-- a random JSON value: nested objects and arrays down to depth 0, scalars
-- from pools that cover each token kind and the strings jsonb escapes
CREATE FUNCTION pg_temp.random_value(depth int) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    keys text[] := ARRAY['a', 'b', 'plan', '', 'naïve', 'k ey', 'x1', 'totalAmount'];
    strings text[] := ARRAY['', 'plain', 'café', '日本語', 'tab	inside', 'quote " inside',
                            'back \ slash', e'new\nline', '   ', '{"not": "parsed"}', '[1, 2]'];
    numbers numeric[] := ARRAY[0, -0.0, 1, -1, 1.5, -2.25, 0.000012, 1e20,
                               12345678901234567890123, 3.14159265358979323846];
    r float8 := random();
    obj jsonb;
    arr jsonb;
BEGIN
    IF depth > 0 AND r < 0.25 THEN
        obj := '{}';
        FOR i IN 1 .. floor(random() * 5)::int LOOP
            obj := obj || jsonb_build_object(keys[1 + floor(random() * array_length(keys, 1))::int],
                                             pg_temp.random_value(depth - 1));
        END LOOP;
        RETURN obj;
    ELSIF depth > 0 AND r < 0.4 THEN
        arr := '[]';
        FOR i IN 1 .. floor(random() * 4)::int LOOP
            arr := arr || jsonb_build_array(pg_temp.random_value(depth - 1));
        END LOOP;
        RETURN arr;
    ELSIF r < 0.6 THEN
        RETURN to_jsonb(strings[1 + floor(random() * array_length(strings, 1))::int]);
    ELSIF r < 0.85 THEN
        RETURN to_jsonb(numbers[1 + floor(random() * array_length(numbers, 1))::int]);
    ELSIF r < 0.95 THEN
        RETURN to_jsonb(random() < 0.5);
    END IF;
    RETURN 'null';
END
$$;

-- what PostgreSQL's own parser says about a text (NULL when it parses)
CREATE FUNCTION pg_temp.pg_json_error(t text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail text;
BEGIN
    PERFORM t::jsonb;
    RETURN NULL;
EXCEPTION WHEN invalid_text_representation THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RETURN 'invalid JSON: ' || detail;
END
$$;

CREATE TEMP TABLE sent (n int, payload text);

-- 200 random documents, each as jsonb prints it, indented, and without spaces
-- around punctuation (only where no string holds the pattern)
INSERT INTO sent
SELECT n * 3 + layout, format('{"type":"track","event":"E","anonymousId":"a%s","messageId":"m%s","properties":%s}',
                              n % 7, n * 3 + layout, body)
  FROM (SELECT n, jsonb_build_object('doc', pg_temp.random_value(4), 'n', n) AS doc
          FROM generate_series(1, 200) AS n) d,
       LATERAL (VALUES (0, d.doc::text),
                       (1, jsonb_pretty(d.doc)),
                       (2, CASE WHEN d.doc::text ~ '(, |: ).*"' THEN d.doc::text
                                ELSE replace(replace(d.doc::text, ', ', ','), ': ', ':') END)) AS l(layout, body);

-- hand-written forms: number spellings jsonb never prints, every kind of
-- space between tokens, escapes, duplicate keys, an empty key, deep nesting
INSERT INTO sent
SELECT 10000 + row_number() OVER (), format('{"type":"track","event":"E","anonymousId":"h","messageId":"h%s","properties":%s}',
                                            row_number() OVER (), body)
  FROM (VALUES ('{"e1":1E+2,"e2":1e-2,"e3":-0,"e4":0.0,"e5":1.0e0,"e6":2E3,"e7":-1.5e-7}'),
               ('{"big":123456789012345678901234567890,"small":-0.000000000000000000001}'),
               (e'{\r\n\t"a" :\t1 ,\n "b":[ 1 , 2 ,[ ] ,{ } ] ,"c" : { "d" : null }\r\n}'),
               ('{"esc":"a \"quoted\" \\ back\/slash","u":"\u00e9\u65e5","pair":"\ud83d\ude00"}'),
               ('{"dup":1,"dup":2,"o":{"k":"first","k":"last"}}'),
               ('{"":"empty key","t":true,"f":false,"n":null}'),
               ('{"deep":' || repeat('[', 70) || '"bottom"' || repeat(']', 70) || '}'),
               ('{"s":"' || repeat('x', 5000) || '"}')) AS v(body);

-- items of a batch envelope are parsed from their span of the line
CREATE TEMP TABLE batch_items AS
SELECT n, format('{"type":"track","event":"B","anonymousId":"b%s","messageId":"b%s","properties":%s}',
                 n % 5, n, jsonb_build_object('doc', pg_temp.random_value(3), 'n', n)::text) AS item
  FROM generate_series(1, 50) AS n;
INSERT INTO sent
SELECT 20000, '{"batch":[' || string_agg(item, ' ,' || chr(10) ORDER BY n) || ']}' FROM batch_items;

-- near-JSON that PostgreSQL's parser refuses
CREATE TEMP TABLE refused (payload text);
INSERT INTO refused
SELECT format('{"type":"track","event":"E","anonymousId":"r","properties":%s}', body)
  FROM unnest(ARRAY['{"a":01}', '{"a":-01}', '{"a":1.}', '{"a":.5}', '{"a":-}', '{"a":+1}',
                    '{"a":1e}', '{"a":1e+}', '{"a":12abc}', '{"a":truex}', '{"a":tru}',
                    '{"a":nul}', '{"a":1 2}', '{"a" 1}', '{"a":1,}', '{,}', '{"a":[1,]}',
                    '{"a":"x' || chr(9) || 'y"}', '{"a":"x' || chr(10) || 'y"}',
                    '{"a":"unterminated}', '{"a":"\q"}', '{"a":1}}', '{"a":1}x',
                    '{"a":[1 2]}', '{"a":{"b"}}', '{a:1}']) AS body;
INSERT INTO refused VALUES ('{"type":"track","event":"E","anonymousId":"r"} trailing');

INSERT INTO cdp.inbox (payload) SELECT payload FROM sent ORDER BY n;
INSERT INTO cdp.inbox (payload) SELECT payload FROM refused;
SELECT cdp.process_inbox();

SELECT is((SELECT count(*) FROM cdp.events e JOIN sent s ON e.message_id = 'm' || s.n),
          600::bigint, 'every random document in every layout is stored');
SELECT is((SELECT count(*) FROM cdp.events e JOIN sent s ON e.message_id = 'm' || s.n
            WHERE e.properties IS DISTINCT FROM (s.payload::jsonb -> 'properties')),
          0::bigint, 'each stored random document is what payload::jsonb holds');
SELECT is((SELECT count(*) FROM cdp.events e JOIN batch_items b ON e.message_id = 'b' || b.n),
          50::bigint, 'every item of the batch envelope is stored');
SELECT is((SELECT count(*) FROM cdp.events e JOIN batch_items b ON e.message_id = 'b' || b.n
            WHERE e.properties IS DISTINCT FROM (b.item::jsonb -> 'properties')),
          0::bigint, 'each item is stored as jsonb reads it');
SELECT is((SELECT count(*) FROM cdp.events e JOIN sent s ON e.message_id = 'h' || (s.n - 10000)),
          8::bigint, 'every hand-written form is stored');
SELECT is((SELECT count(*) FROM cdp.events e JOIN sent s ON e.message_id = 'h' || (s.n - 10000)
            WHERE e.properties IS DISTINCT FROM (s.payload::jsonb -> 'properties')),
          0::bigint, 'numbers, spaces, escapes, duplicate keys, an empty key and deep nesting are stored as jsonb reads them');
SELECT is((SELECT e.properties FROM cdp.events e WHERE e.message_id = 'h5'),
          '{"dup": 2, "o": {"k": "last"}}'::jsonb, 'a duplicate key keeps its last value');
SELECT is((SELECT count(*) FROM refused r WHERE pg_temp.pg_json_error(r.payload) IS NULL),
          0::bigint, 'every text of the refused catalogue is bad JSON to PostgreSQL');
SELECT is((SELECT count(*) FROM cdp.dead_letters d JOIN refused r USING (payload)
            WHERE d.error_code = 'invalid_json'),
          (SELECT count(*) FROM refused), 'every bad text is an invalid_json dead letter');
SELECT is((SELECT count(*) FROM cdp.dead_letters d JOIN refused r USING (payload)
            WHERE d.error_message IS DISTINCT FROM pg_temp.pg_json_error(r.payload)),
          0::bigint, 'each dead letter says what PostgreSQL''s parser says about its text');

SELECT * FROM finish();
ROLLBACK;
