-- Event time: ts = receivedAt - (sentAt - originalTimestamp), the client's
-- time when there is no sentAt, the receipt time when there is no client
-- time or the client's clock is too far ahead; strict ISO 8601 parsing.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(45);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;

-- ingest one message as received at a fixed time; its stored row, or none
CREATE FUNCTION pg_temp.one(msg jsonb, received timestamptz DEFAULT '2026-01-02 00:00:00+00')
RETURNS SETOF cdp.events LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE cdp.events;
    TRUNCATE cdp.dead_letters;
    PERFORM cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'u', 'event', 'Skew') || msg);
    UPDATE cdp.inbox SET received_at = received;
    PERFORM cdp.process_inbox();
    RETURN QUERY SELECT * FROM cdp.events;
END
$$;
CREATE FUNCTION pg_temp.ts(msg jsonb, received timestamptz DEFAULT '2026-01-02 00:00:00+00')
RETURNS timestamptz LANGUAGE sql AS $$ SELECT ts FROM pg_temp.one(msg, received) $$;
CREATE FUNCTION pg_temp.dead_code(msg jsonb) RETURNS text LANGUAGE sql AS $$
    SELECT count(*) FROM pg_temp.one(msg);
    SELECT string_agg(error_code, ',') FROM cdp.dead_letters;
$$;

-- the correction (received at 2026-01-02 00:00:00)
SELECT is(pg_temp.ts('{"timestamp": "2026-01-01T10:00:00Z", "sentAt": "2026-01-01T10:05:00Z"}'),
          '2026-01-01 23:55:00+00'::timestamptz,
          'ts = receivedAt - (sentAt - timestamp): sent 5 minutes after the event');
SELECT is(pg_temp.ts('{"timestamp": "2026-06-01T10:00:00Z", "sentAt": "2026-06-01T10:00:30Z"}'),
          '2026-01-01 23:59:30+00'::timestamptz,
          'a client clock months ahead is corrected');
SELECT is(pg_temp.ts('{"timestamp": "2020-01-01T10:00:00Z", "sentAt": "2020-01-01T10:00:00Z"}'),
          '2026-01-02 00:00:00+00'::timestamptz,
          'a client clock years behind is corrected');
SELECT results_eq(
    $$SELECT ts, original_timestamp, sent_at, received_at
        FROM pg_temp.one('{"timestamp": "2026-01-01T10:00:00Z", "sentAt": "2026-01-01T10:05:00Z"}')$$,
    $$VALUES ('2026-01-01 23:55:00+00'::timestamptz, '2026-01-01 10:00:00+00'::timestamptz,
              '2026-01-01 10:05:00+00'::timestamptz, '2026-01-02 00:00:00+00'::timestamptz)$$,
    'original_timestamp, sent_at and received_at are kept beside the corrected ts');
SELECT is(pg_temp.ts('{"originalTimestamp": "2026-01-01T10:00:00Z", "sentAt": "2026-01-01T10:01:00Z"}'),
          '2026-01-01 23:59:00+00'::timestamptz,
          'originalTimestamp (RudderStack) is used when timestamp is absent');
SELECT is((SELECT original_timestamp FROM pg_temp.one(
              '{"originalTimestamp": "2026-01-01T10:00:00Z", "sentAt": "2026-01-01T10:01:00Z"}')),
          '2026-01-01 10:00:00+00'::timestamptz,
          'originalTimestamp is stored as original_timestamp');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-01T10:00:00Z", "originalTimestamp": "2026-01-01T09:00:00Z",
                       "sentAt": "2026-01-01T10:00:10Z"}'),
          '2026-01-01 23:59:50+00'::timestamptz,
          'timestamp wins over originalTimestamp');
SELECT is(pg_temp.ts('{"timestamp": "2025-12-25T08:00:00Z"}'), '2025-12-25 08:00:00+00'::timestamptz,
          'without sentAt, ts = timestamp');
SELECT is(pg_temp.ts('{"timestamp": "2025-12-25T08:00:00Z", "sentAt": null}'), '2025-12-25 08:00:00+00'::timestamptz,
          'a null sentAt is no sentAt');
SELECT is(pg_temp.ts('{}'), '2026-01-02 00:00:00+00'::timestamptz, 'without timestamp, ts = receivedAt');
SELECT is((SELECT original_timestamp FROM pg_temp.one('{}')), NULL,
          'without timestamp, original_timestamp is NULL');
SELECT is(pg_temp.ts('{"sentAt": "2026-01-01T10:00:00Z"}'), '2026-01-02 00:00:00+00'::timestamptz,
          'sentAt alone corrects nothing: ts = receivedAt');
SELECT is(pg_temp.ts('{"timestamp": null}'), '2026-01-02 00:00:00+00'::timestamptz,
          'a null timestamp is no timestamp');

-- clocks too far ahead (cdp.max_future_skew, default 1 day)
SELECT is(pg_temp.ts('{"timestamp": "2026-01-04T00:00:00Z"}'), '2026-01-02 00:00:00+00'::timestamptz,
          'a timestamp two days ahead of receipt is stored at receipt');
SELECT is((SELECT original_timestamp FROM pg_temp.one('{"timestamp": "2026-01-04T00:00:00Z"}')),
          '2026-01-04 00:00:00+00'::timestamptz,
          '... keeping what the client said as original_timestamp');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T23:00:00Z"}'), '2026-01-02 23:00:00+00'::timestamptz,
          'a timestamp 23 hours ahead is believed');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-05T00:00:00Z", "sentAt": "2026-01-01T00:00:00Z"}'),
          '2026-01-02 00:00:00+00'::timestamptz,
          'a corrected time more than a day ahead is stored at receipt too');
SET LOCAL cdp.max_future_skew = '1h';
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T02:00:00Z"}'), '2026-01-02 00:00:00+00'::timestamptz,
          'cdp.max_future_skew = 1h: two hours ahead is stored at receipt');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T00:59:00Z"}'), '2026-01-02 00:59:00+00'::timestamptz,
          'cdp.max_future_skew = 1h: 59 minutes ahead is believed');
RESET cdp.max_future_skew;
SELECT is(pg_temp.dead_code('{"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-01-01T00:00:00Z"}'),
          'invalid_timestamp', 'a correction beyond the timestamp range is dead-lettered invalid_timestamp');

-- ISO 8601 variants, all received on 2027-06-01 so none is in the future
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04:05.123456Z"}', '2027-06-01'),
          '2026-01-02 03:04:05.123456+00'::timestamptz, 'microseconds with Z');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04:05.123Z"}', '2027-06-01'),
          '2026-01-02 03:04:05.123+00'::timestamptz, 'milliseconds with Z (JavaScript toISOString)');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04:05+02:00"}', '2027-06-01'),
          '2026-01-02 01:04:05+00'::timestamptz, '+02:00 offset');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04:05-05:00"}', '2027-06-01'),
          '2026-01-02 08:04:05+00'::timestamptz, '-05:00 offset');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04:05+0530"}', '2027-06-01'),
          '2026-01-01 21:34:05+00'::timestamptz, '+0530 offset without colon');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04:05+02"}', '2027-06-01'),
          '2026-01-02 01:04:05+00'::timestamptz, '+02 offset of hours only');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02"}', '2027-06-01'),
          '2026-01-02 00:00:00+00'::timestamptz, 'a date alone is midnight UTC');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04:05"}', '2027-06-01'),
          '2026-01-02 03:04:05+00'::timestamptz, 'no offset means UTC');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02 03:04:05Z"}', '2027-06-01'),
          '2026-01-02 03:04:05+00'::timestamptz, 'a space instead of T');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02t03:04:05z"}', '2027-06-01'),
          '2026-01-02 03:04:05+00'::timestamptz, 'lower-case t and z');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04Z"}', '2027-06-01'),
          '2026-01-02 03:04:00+00'::timestamptz, 'hours and minutes without seconds');
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04:05.1234567Z"}', '2027-06-01'),
          '2026-01-02 03:04:05.123457+00'::timestamptz, 'a seventh fraction digit rounds');
SELECT is(pg_temp.ts('{"timestamp": "2016-12-31T23:59:60Z"}', '2017-06-01'),
          '2017-01-01 00:00:00+00'::timestamptz, 'a leap second lands on the next minute');
SELECT is(pg_temp.ts('{"timestamp": "2024-02-29T12:00:00Z"}', '2027-06-01'),
          '2024-02-29 12:00:00+00'::timestamptz, '29 February of a leap year');
SET LOCAL timezone = 'America/New_York';
SELECT is(pg_temp.ts('{"timestamp": "2026-01-02T03:04:05"}', '2027-06-01'),
          '2026-01-02 03:04:05+00'::timestamptz, 'no offset means UTC whatever the session TimeZone');
SET LOCAL timezone = 'UTC';

-- and what is not ISO 8601
SELECT is(pg_temp.dead_code('{"timestamp": "2026-1-2"}'), 'invalid_timestamp', 'one-digit month and day are refused');
SELECT is(pg_temp.dead_code('{"timestamp": "20260102T030405Z"}'), 'invalid_timestamp', 'the basic format is refused');
SELECT is(pg_temp.dead_code('{"timestamp": "2026-01-02T03:04:05.Z"}'), 'invalid_timestamp', 'a fraction with no digits is refused');
SELECT is(pg_temp.dead_code('{"timestamp": "2026-01-02T03:04:05+2:00"}'), 'invalid_timestamp', 'a one-digit offset hour is refused');
SELECT is(pg_temp.dead_code('{"timestamp": "2025-02-29T00:00:00Z"}'), 'invalid_timestamp', '29 February of a common year is refused');
SELECT is(pg_temp.dead_code('{"timestamp": "2026-01-02T03:60:00Z"}'), 'invalid_timestamp', 'minute 60 is refused');
SELECT is(pg_temp.dead_code('{"timestamp": "now"}'), 'invalid_timestamp', '"now" is refused');
SELECT is(pg_temp.dead_code('{"timestamp": "Fri, 02 Jan 2026 03:04:05 GMT"}'), 'invalid_timestamp', 'RFC 1123 dates are refused');
SELECT is(pg_temp.dead_code('{"timestamp": " 2026-01-02T03:04:05Z"}'), 'invalid_timestamp', 'leading white space is refused');
SELECT is(pg_temp.dead_code('{"timestamp": "2026-01-02T03:04:05Z", "sentAt": "2026-13-01T00:00:00Z"}'),
          'invalid_timestamp', 'a bad sentAt is refused like a bad timestamp');

SELECT * FROM finish();
ROLLBACK;
