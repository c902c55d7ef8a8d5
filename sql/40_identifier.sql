--
-- 40_identifier: the cdp.identifier type (api.md "Types").  Input is
-- normalised (white space trimmed, email lower-cased, phone reduced to a
-- leading '+' and digits) so equal inputs compare equal; text form
-- 'type:value'; id_type/id_value/identifier(type, value); casts; bytewise
-- ordering with a btree opclass (PRIMARY KEY, UNIQUE, index scans); a hash
-- opclass (HashAggregate, hash joins); binary send/receive; and every bad
-- input raising 22P02 with a detail naming the problem.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
RESET client_min_messages;

-- the operators live in schema cdp beside the type: without cdp on the
-- search_path a comparison is written OPERATOR(cdp.=) ...
SELECT 'email:A@B.C'::cdp.identifier OPERATOR(cdp.=) 'email:a@b.c'::cdp.identifier AS qualified_eq;
-- ... so the rest of this file puts cdp on the search_path
SET search_path = public, cdp;

-- Tries an input; returns its SQLSTATE and the error's detail (the message
-- repeats the input, which can be long, so only its start is shown).
CREATE FUNCTION pg_temp.try_in(input text) RETURNS TABLE (result text, sqlstate text, message text, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text;
BEGIN
    BEGIN
        result := input::cdp.identifier::text;
        RETURN NEXT;
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
    END;
    sqlstate := st;
    message := CASE WHEN length(msg) > 70 THEN left(msg, 56) || '...' ELSE msg END;
    detail := det;
    RETURN NEXT;
END
$$;
-- Runs a statement; returns its SQLSTATE, message and detail if it fails.
CREATE FUNCTION pg_temp.try_sql(stmt text) RETURNS TABLE (sqlstate text, message text, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    st text; msg text; det text;
BEGIN
    BEGIN
        EXECUTE stmt;
        sqlstate := '00000';
        RETURN NEXT;
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, det = PG_EXCEPTION_DETAIL;
    END;
    sqlstate := st;
    message := msg;
    detail := det;
    RETURN NEXT;
END
$$;
-- the same for cdp.identifier(type, value)
CREATE FUNCTION pg_temp.try_make(t text, v text) RETURNS TABLE (result text, sqlstate text, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    st text; det text;
BEGIN
    BEGIN
        result := cdp.identifier(t, v)::text;
        RETURN NEXT;
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, det = PG_EXCEPTION_DETAIL;
    END;
    sqlstate := st;
    detail := det;
    RETURN NEXT;
END
$$;

--
-- normalisation
--

-- input_trims_white_space_around_the_value
SELECT i AS input, i::cdp.identifier AS identifier
  FROM (VALUES ('user_id:42'), ('user_id:  42  '), (E'user_id:\t42\n'), (E'user_id:\r\f\u000b42 '),
               ('anonymous_id: a b ')) v(i);

-- email_is_lower_cased_ascii_only (other letters are kept as they are)
SELECT i AS input, i::cdp.identifier AS identifier
  FROM (VALUES ('email:Alice@Example.COM'), ('email:  BOB@x.io '), ('email:ÄRGER@X.IO')) v(i);

-- only_email_is_lower_cased
SELECT i AS input, i::cdp.identifier AS identifier
  FROM (VALUES ('user_id:AbC'), ('anonymous_id:A-1'), ('crm:ID-9')) v(i);

-- phone_keeps_a_leading_plus_and_the_digits
SELECT i AS input, i::cdp.identifier AS identifier
  FROM (VALUES ('phone:+1 (555) 123-4567'), ('phone:0049 30 1234'), ('phone: +44 20 7946 0958 '),
               ('phone:1+2'), ('phone:++1'), ('phone:tel:+1-555'), ('phone:555.123.4567 ext 9')) v(i);

-- a_value_may_contain_colons (the type ends at the first one)
SELECT 'user_id:a:b:c'::cdp.identifier AS identifier,
       cdp.id_type('user_id:a:b:c'), cdp.id_value('user_id:a:b:c');

-- a_plus_is_only_special_in_phone_numbers: '+' alone is a fine value of
-- any other type (the "no digits" check belongs to phone)
SELECT * FROM pg_temp.try_in('user_id:+');
SELECT * FROM pg_temp.try_in('anonymous_id: + ');
SELECT * FROM pg_temp.try_make('crm', '+');

-- values_up_to_1024_bytes_are_accepted (bytes, not characters; measured after trimming)
SELECT length(cdp.id_value(('user_id:' || repeat('x', 1024))::cdp.identifier)) AS ascii_chars,
       octet_length(cdp.id_value(('user_id:' || repeat('é', 512))::cdp.identifier)) AS utf8_bytes,
       length(cdp.id_value(('user_id:   ' || repeat('x', 1024) || '   ')::cdp.identifier)) AS trimmed_chars;

-- types_up_to_63_characters_are_accepted
SELECT length(cdp.id_type((repeat('a', 63) || ':x')::cdp.identifier)) AS type_length,
       'a:x'::cdp.identifier AS one_letter_type,
       'a_9_z:x'::cdp.identifier AS digits_and_underscores;

--
-- equality and text form
--

-- equal_inputs_compare_equal
SELECT 'email: Alice@Example.com '::cdp.identifier = 'email:alice@example.com' AS email_eq,
       'phone:+1 (555) 123'::cdp.identifier = 'phone:+1555123' AS phone_eq,
       'user_id: 42'::cdp.identifier = 'user_id:42 ' AS trimmed_eq,
       'user_id:A'::cdp.identifier = 'user_id:a' AS user_id_case_matters,
       'email:x@y.z'::cdp.identifier = 'user_id:x@y.z' AS different_types_differ,
       'email:x@y.z'::cdp.identifier <> 'user_id:x@y.z' AS ne;

-- normalised_duplicates_collapse_in_distinct
SELECT count(DISTINCT i::cdp.identifier) AS distinct_identifiers, count(DISTINCT i) AS distinct_texts
  FROM (VALUES ('email:A@B.C'), ('email:a@b.c'), ('email: a@B.c '), ('phone:+1 2'), ('phone:+12')) v(i);

-- text_form_is_type_colon_value_normalised
SELECT 'email: A@B.C '::cdp.identifier::text AS as_text,
       pg_typeof('email:a@b.c'::cdp.identifier::text) AS text_type;

-- id_type_id_value_and_the_constructor
SELECT cdp.id_type('email:a@b.c'), cdp.id_value('email:a@b.c'),
       cdp.identifier('email', ' A@B.C ') AS made,
       cdp.identifier('email', ' A@B.C ') = 'email:a@b.c' AS made_eq_parsed,
       cdp.identifier('phone', '+1 (555) 0') AS phone_made,
       cdp.identifier('user_id', 'a:b') AS colon_in_value,
       cdp.id_value(cdp.identifier('user_id', 'a:b')) AS its_value;

-- strict_functions_return_null_for_null
SELECT cdp.identifier(NULL, 'x') IS NULL AS no_type, cdp.identifier('email', NULL) IS NULL AS no_value,
       cdp.id_type(NULL) IS NULL AS id_type_null, cdp.id_value(NULL) IS NULL AS id_value_null,
       NULL::text::cdp.identifier IS NULL AS cast_null;

-- casts_from_and_to_text (assignment casts: INSERT ... SELECT text works both ways)
CREATE TEMP TABLE id_cast (id cdp.identifier, t text);
INSERT INTO id_cast (id) SELECT 'email: X@Y.Z'::text;
INSERT INTO id_cast (t) SELECT 'user_id:7'::cdp.identifier;
SELECT id, t, pg_typeof(id) AS id_type FROM id_cast ORDER BY t NULLS FIRST;
SELECT 'email:Q@R.S'::text::cdp.identifier::text AS round_trip;

-- arrays_of_identifiers_read_and_print
SELECT '{email:A@B.C,"user_id: x y ","phone:+1 2"}'::cdp.identifier[] AS arr,
       ('{email:A@B.C,"user_id: x y "}'::cdp.identifier[])[2] = 'user_id:x y' AS second_eq;

--
-- ordering and the btree opclass
--

-- ordering_is_by_type_then_value_bytes (no collation: upper case before
-- lower case, a shorter type first, non-ASCII after ASCII)
SELECT i::cdp.identifier AS identifier
  FROM (VALUES ('user_id:b'), ('user_id:B'), ('user_id:a'), ('email:z@z.z'), ('email_x:a'),
               ('a0:x'), ('a:z'), ('user_id:ä'), ('user_id:aa'), ('user_id:10'), ('user_id:9')) v(i)
 ORDER BY 1;

-- comparison_operators_agree_with_ordering
SELECT a, b, a::cdp.identifier < b::cdp.identifier AS lt, a::cdp.identifier <= b::cdp.identifier AS le,
       a::cdp.identifier = b::cdp.identifier AS eq, a::cdp.identifier >= b::cdp.identifier AS ge,
       a::cdp.identifier > b::cdp.identifier AS gt, a::cdp.identifier <> b::cdp.identifier AS ne,
       cdp.identifier_cmp(a::cdp.identifier, b::cdp.identifier) AS cmp
  FROM (VALUES ('email:a', 'email:b'), ('email:b', 'email:a'), ('email:A', 'email:a'),
               ('a:z', 'ab:a'), ('user_id:a', 'user_id:aa')) v(a, b);

-- primary_key_on_an_identifier_column
CREATE TEMP TABLE id_pk (id cdp.identifier PRIMARY KEY, n int);
INSERT INTO id_pk SELECT ('user_id:u' || g)::cdp.identifier, g FROM generate_series(1, 2000) g;
INSERT INTO id_pk VALUES ('email:Ann@X.io', -1);
ANALYZE id_pk;

-- normalised_duplicates_violate_the_primary_key
INSERT INTO id_pk VALUES ('email: ANN@x.IO ', -2);

-- the_btree_index_serves_equality_and_range_scans
SET enable_seqscan = off;
SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF) SELECT n FROM id_pk WHERE id = 'user_id:u42';
SELECT n FROM id_pk WHERE id = 'user_id:u42';
SELECT n FROM id_pk WHERE id = 'email:ann@x.io';
EXPLAIN (COSTS OFF) SELECT id FROM id_pk WHERE id BETWEEN 'user_id:u1999' AND 'user_id:u2';
SELECT id FROM id_pk WHERE id BETWEEN 'user_id:u1999' AND 'user_id:u2' ORDER BY id;
EXPLAIN (COSTS OFF) SELECT id FROM id_pk ORDER BY id LIMIT 3;
SELECT id FROM id_pk ORDER BY id LIMIT 3;
RESET enable_seqscan;
RESET enable_bitmapscan;

-- unique_constraint_sees_normalised_duplicates
CREATE TEMP TABLE id_unique (id cdp.identifier UNIQUE);
INSERT INTO id_unique VALUES ('phone:+1 (555) 123-4567');
INSERT INTO id_unique VALUES ('phone:+15551234567');
INSERT INTO id_unique VALUES ('phone:15551234567');   -- no '+': a different number
SELECT id FROM id_unique ORDER BY id;

--
-- the hash opclass
--

-- equal_identifiers_hash_equal
SELECT cdp.identifier_hash('email:A@B.C') = cdp.identifier_hash('email: a@b.c ') AS hash_eq,
       cdp.identifier_hash_extended('email:A@B.C', 7) = cdp.identifier_hash_extended('email:a@b.c', 7) AS ext_eq,
       (cdp.identifier_hash_extended('email:a@b.c', 0) & 4294967295)
         = (cdp.identifier_hash('email:a@b.c')::bigint & 4294967295) AS seed_0_low_bits_match,
       cdp.identifier_hash('email:a@b.c') <> cdp.identifier_hash('user_id:a@b.c') AS type_in_hash;

-- group_by_uses_hash_aggregate
CREATE TEMP TABLE id_many AS
SELECT ('email:User' || (g % 50) || '@X.io')::cdp.identifier AS id, g FROM generate_series(1, 1000) g;
ANALYZE id_many;
SET enable_sort = off;
EXPLAIN (COSTS OFF) SELECT id, count(*) FROM id_many GROUP BY id;
SELECT count(*) AS groups, sum(c) AS rows, min(c) AS min_per_group, max(c) AS max_per_group
  FROM (SELECT id, count(*) AS c FROM id_many GROUP BY id) s;
RESET enable_sort;

-- hash_join_on_identifiers
SET enable_mergejoin = off;
SET enable_nestloop = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM id_many m JOIN id_pk p ON p.id = m.id;
SELECT count(*) AS joined
  FROM (SELECT DISTINCT id FROM id_many) m
  JOIN (SELECT ('email:user' || g || '@x.IO')::cdp.identifier AS id FROM generate_series(0, 9) g) q
    ON q.id = m.id;
RESET enable_mergejoin;
RESET enable_nestloop;

-- hash_index_works
CREATE TEMP TABLE id_hashidx (id cdp.identifier);
CREATE INDEX ON id_hashidx USING hash (id);
INSERT INTO id_hashidx SELECT ('anonymous_id:a' || g)::cdp.identifier FROM generate_series(1, 500) g;
ANALYZE id_hashidx;
SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT * FROM id_hashidx WHERE id = 'anonymous_id:a7';
SELECT * FROM id_hashidx WHERE id = 'anonymous_id: a7 ';
RESET enable_seqscan;

--
-- binary send/receive: COPY ... (FORMAT binary) through a server-side file
-- in the data directory; receive checks and normalises like text input
--

-- send_gives_the_text_form
SELECT cdp.identifier_send('email: A@B.C ') AS sent, convert_from(cdp.identifier_send('email:A@B.C'), 'UTF8') AS as_text;

-- binary_copy_round_trip
CREATE TEMP TABLE id_bin_out (id cdp.identifier, n int);
INSERT INTO id_bin_out VALUES ('email:a@b.c', 1), ('phone:+4420', 2), ('user_id:ä:ö', 3),
                              (('user_id:' || repeat('z', 1024))::cdp.identifier, 4);
SELECT current_setting('data_directory') || '/cdp_regress_identifier.bin' AS binfile \gset
COPY id_bin_out TO :'binfile' WITH (FORMAT binary);
CREATE TEMP TABLE id_bin_in (id cdp.identifier, n int);
COPY id_bin_in FROM :'binfile' WITH (FORMAT binary);
SELECT n, i.id = o.id AS equal, left(i.id::text, 20) AS id FROM id_bin_in i JOIN id_bin_out o USING (n) ORDER BY n;

-- binary_receive_normalises (text written in binary, read as identifiers)
CREATE TEMP TABLE id_bin_text (t text, n int);
INSERT INTO id_bin_text VALUES ('email:  MIXED@Case.IO ', 1), ('phone:+1 (555) 010', 2);
COPY id_bin_text TO :'binfile' WITH (FORMAT binary);
TRUNCATE id_bin_in;
COPY id_bin_in FROM :'binfile' WITH (FORMAT binary);
SELECT n, id FROM id_bin_in ORDER BY n;

-- binary_receive_rejects_bad_input_with_22P02
TRUNCATE id_bin_text;
INSERT INTO id_bin_text VALUES ('no colon here', 1);
COPY id_bin_text TO :'binfile' WITH (FORMAT binary);
SELECT * FROM pg_temp.try_sql(format('COPY id_bin_in FROM %L WITH (FORMAT binary)', :'binfile'));
TRUNCATE id_bin_text;
INSERT INTO id_bin_text VALUES ('Email:x@y.z', 1);
COPY id_bin_text TO :'binfile' WITH (FORMAT binary);
SELECT * FROM pg_temp.try_sql(format('COPY id_bin_in FROM %L WITH (FORMAT binary)', :'binfile'));
SELECT count(*) AS rows_loaded FROM id_bin_in;

--
-- bad input: 22P02, with a detail naming the problem
--

-- bad_input_is_22P02_naming_the_problem
SELECT label, t.*
  FROM (VALUES
    ('no colon',                   'email'),
    ('no colon, spaces',           'user id 42'),
    ('empty value',                'email:'),
    ('whitespace-only value',      E'user_id:  \t '),
    ('value of 1025 bytes',        'user_id:' || repeat('x', 1025)),
    ('value of 1026 UTF-8 bytes',  'user_id:' || repeat('é', 513)),
    ('control character',          E'user_id:a\u0001b'),
    ('tab inside the value',       E'user_id:a\tb'),
    ('newline inside the value',   E'user_id:a\nb'),
    ('DEL character',              E'user_id:a\u007fb'),
    ('upper-case type',            'Email:x@y.z'),
    ('type with a leading digit',  '1abc:x'),
    ('type with a leading _',      '_abc:x'),
    ('type with a hyphen',         'user-id:x'),
    ('type with a space',          'user id:x'),
    ('empty type',                 ':x'),
    ('type of 64 characters',      repeat('a', 64) || ':x'),
    ('phone without digits',       'phone:n/a'),
    ('phone of only a plus',       'phone:+'),
    ('phone of punctuation',       'phone: (-) ')
  ) v(label, input), pg_temp.try_in(input) t;

-- the_constructor_raises_the_same_errors
SELECT label, t.*
  FROM (VALUES
    ('empty value',               'email', ''),
    ('whitespace-only value',     'email', '   '),
    ('value of 1025 bytes',       'user_id', repeat('x', 1025)),
    ('control character',         'user_id', E'a\u0001b'),
    ('upper-case type',           'Email', 'x'),
    ('type with a colon',         'a:b', 'x'),
    ('empty type',                '', 'x'),
    ('type of 64 characters',     repeat('a', 64), 'x'),
    ('phone without digits',      'phone', 'none given')
  ) v(label, t, val), pg_temp.try_make(t, val) t;

-- the_error_as_a_user_sees_it
SELECT 'email'::cdp.identifier;
SELECT 'email:   '::cdp.identifier;
SELECT 'Email:x@y.z'::cdp.identifier;
SELECT 'phone:call me'::cdp.identifier;
SELECT cdp.identifier('email', '  ');

DROP TABLE id_cast, id_pk, id_unique, id_many, id_hashidx, id_bin_out, id_bin_in, id_bin_text;
