-- "No control characters" in an identifier value means C0 (U+0000-U+001F),
-- DEL (U+007F) and C1 (U+0080-U+009F): all refused with 22P02, by the input
-- function and by cdp.identifier(type, value).  The printable characters
-- next to them, and bytes 0x80-0x9F inside other characters, are values.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(11);

CREATE FUNCTION pg_temp.detail_of(input text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    det text;
BEGIN
    PERFORM input::cdp.identifier;
    RETURN NULL;
EXCEPTION WHEN invalid_text_representation THEN
    GET STACKED DIAGNOSTICS det = PG_EXCEPTION_DETAIL;
    RETURN det;
END
$$;

SELECT throws_ok($$SELECT E'user_id:a\u0080b'::cdp.identifier$$, '22P02', NULL,
                 'U+0080, the first C1 control, is refused with 22P02');
SELECT throws_ok($$SELECT E'user_id:a\u0085b'::cdp.identifier$$, '22P02', NULL,
                 'U+0085 (next line) is refused with 22P02');
SELECT throws_ok($$SELECT E'user_id:ab\u009f'::cdp.identifier$$, '22P02', NULL,
                 'U+009F, the last C1 control, is refused even at the end of the value');
SELECT throws_ok($$SELECT cdp.identifier('email', E'\u0090a@x.io')$$, '22P02', NULL,
                 'cdp.identifier(type, value) refuses a C1 control with 22P02');
SELECT throws_ok($$SELECT cdp.identifier('phone', E'+1 555\u0085 0100')$$, '22P02', NULL,
                 'a C1 control is refused for phone numbers too, before punctuation is dropped');
SELECT is(pg_temp.detail_of(E'device_id:d\u0085'), 'The value contains a control character.',
          'the detail names the problem');
SELECT is(E'user_id:a\u00a0b'::cdp.identifier::text, E'user_id:a\u00a0b',
          'U+00A0 (no-break space, right after the C1 range) is a value');
SELECT is(E'user_id:\u007e'::cdp.identifier::text, E'user_id:\u007e',
          'U+007E (right before DEL) is a value');
SELECT is(E'user_id:\u0100\u0480'::cdp.identifier::text, E'user_id:\u0100\u0480',
          'characters whose UTF-8 continuation byte is 0x80 are values');
SELECT is(cdp.identifier('user_id', E'\u00c2x')::text, E'user_id:\u00c2x',
          'U+00C2 itself (UTF-8 0xC3 0x82) is a value');
SELECT is(E'user_id:caf\u00e9'::cdp.identifier::text, E'user_id:caf\u00e9',
          'accented letters are values');

SELECT * FROM finish();
ROLLBACK;
