-- The wrappers never change a time silently: a ts a message cannot carry
-- (infinite, before year 1, after 9999) is refused with 22008 and nothing is
-- queued; times from year 1 to 9999 pass through exactly.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(10);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;

SELECT throws_ok($$SELECT cdp.track('u', 'e', ts => '0500-06-01 BC')$$, '22008',
                 'ts 0500-06-01 00:00:00+00 BC is outside the times a message can carry',
                 'track refuses a ts before year 1 (it would be stored as 500 AD)');
SELECT throws_ok($$SELECT cdp.track('u', 'e', ts => 'infinity')$$, '22008',
                 'ts infinity is outside the times a message can carry',
                 'track refuses infinity (it would be stored at receipt)');
SELECT throws_ok($$SELECT cdp.identify('u', '{}', ts => '-infinity')$$, '22008', NULL,
                 'identify refuses -infinity');
SELECT throws_ok($$SELECT cdp.alias('a', 'u', ts => '10000-01-01')$$, '22008', NULL,
                 'alias refuses a time after 9999');
SELECT is((SELECT count(*)::int FROM cdp.inbox), 0, 'nothing was queued');

SELECT lives_ok($$SELECT cdp.track('u', 'Year 500', ts => '0500-06-01 12:00:00+00')$$, 'year 500 AD is accepted');
SELECT lives_ok($$SELECT cdp.track('u', 'Year 9999', ts => '9999-12-31 23:59:59.999999+00')$$,
                'the last microsecond of 9999 is accepted');
SELECT is((SELECT payload::jsonb ->> 'timestamp' FROM cdp.inbox WHERE payload LIKE '%Year 500%'),
          '0500-06-01T12:00:00.000000Z', 'year 500 AD is sent as 0500');
SELECT is((SELECT payload::jsonb ->> 'timestamp' FROM cdp.inbox WHERE payload LIKE '%Year 9999%'),
          '9999-12-31T23:59:59.999999Z', '... and 9999 as 9999');
SELECT lives_ok($$SELECT cdp.track('u', 'No Time', ts => NULL)$$, 'a NULL ts means the receipt time');

SELECT * FROM finish();
ROLLBACK;
