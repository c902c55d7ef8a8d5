-- Partitions of cdp.events: configuration is validated; partitions are made
-- ahead and on demand, aligned to UTC days, Monday weeks and calendar months;
-- there is never a default partition; retention dead-letters old events.
-- Coarser partitions for old ranges are switched off here (archive_interval
-- NULL) and tested in partition_bounds.sql.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(59);

\ir include/partition_setup.psql

-- ingest one message and process it; the partition its event went to
CREATE FUNCTION pg_temp.route(msg jsonb) RETURNS regclass LANGUAGE plpgsql AS $$
DECLARE
    id text := 'p-' || (SELECT count(*) FROM cdp.events) || '-' || md5(msg::text);
BEGIN
    PERFORM cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'u', 'event', 'Routed',
                                          'messageId', id) || msg);
    PERFORM cdp.process_inbox();
    RETURN (SELECT tableoid::regclass FROM cdp.events WHERE message_id = id);
END
$$;
CREATE FUNCTION pg_temp.range_of(p regclass) RETURNS text LANGUAGE sql AS $$
    SELECT to_char(range_from, 'YYYY-MM-DD HH24:MI') || ' .. ' || to_char(range_to, 'YYYY-MM-DD HH24:MI')
      FROM cdp.partitions WHERE partition = p;
$$;

-- validation
SELECT throws_ok($$SELECT cdp.configure_partitions('1 month 1 day')$$, '22023',
                 'partition interval must be whole months or a fixed length, not both',
                 'a mixed months-and-days interval is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('10 minutes')$$, '22023',
                 'partition interval must be at least 1 hour',
                 'an interval under an hour is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('-1 day')$$, '22023', NULL,
                 'a negative interval is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('-1 month')$$, '22023', NULL,
                 'a negative month interval is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', -1)$$, '22023', 'premake must be between 0 and 1000',
                 'premake -1 is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 1001)$$, '22023', NULL,
                 'premake 1001 is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 7, '-1 day')$$, '22023',
                 'retention must be a positive interval of at most 1000 years',
                 'a negative retention is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 7, '0')$$, '22023', NULL,
                 'a zero retention is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 7, '30 days', 'zap')$$, '22023',
                 'retention_mode must be ''drop'' or ''detach'', not "zap"',
                 'retention_mode zap is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions(NULL)$$, '22004', NULL,
                 'a NULL interval is refused with 22004');
SELECT is((SELECT row(part_interval, premake, retention, retention_mode)::text FROM cdp.partition_config),
          row('1 day'::interval, 7, NULL::interval, 'drop')::text,
          'refused configurations leave the default configuration in place');

-- premaking (from no partitions at all)
DO $$ BEGIN PERFORM pg_temp.drop_partitions(); END $$;
SELECT lives_ok($$SELECT cdp.configure_partitions('1 day', 3, archive_interval => NULL)$$, 'configure_partitions(1 day, 3) works');
SELECT is(pg_temp.nparts(), 4,
          'configure_partitions makes the partition holding now and premake more: premake + 1');
SELECT is((SELECT min(range_from) FROM cdp.partitions), date_trunc('day', now()),
          'the first of them starts at midnight UTC today');
SELECT is((SELECT max(range_to) FROM cdp.partitions), date_trunc('day', now()) + interval '4 days',
          'the last ends premake + 1 days later');
SELECT is((SELECT count(*)::int FROM (
              SELECT range_from, lag(range_to) OVER (ORDER BY range_from) AS prev_to
                FROM cdp.partitions) s
            WHERE prev_to IS NOT NULL AND prev_to <> range_from), 0,
          'premade partitions are contiguous');
SELECT is((SELECT count(*)::int FROM cdp.partitions WHERE range_to - range_from <> interval '1 day'), 0,
          'each premade partition is one day');
CREATE TEMP TABLE premade AS SELECT pg_temp.nparts() AS n;
SELECT lives_ok($$SELECT cdp.configure_partitions('1 day', 3, archive_interval => NULL)$$, 'configuring again works');
SELECT is(pg_temp.nparts(), (SELECT n FROM premade), 'configuring again makes no extra partition');
DO $$ BEGIN PERFORM pg_temp.drop_partitions(); END $$;
SELECT lives_ok($$SELECT cdp.configure_partitions('1 month', 0, archive_interval => NULL)$$, 'configure_partitions(1 month, 0) works');
SELECT results_eq($$SELECT range_from, range_to FROM cdp.partitions$$,
                  $$VALUES (date_trunc('month', now()), date_trunc('month', now()) + interval '1 month')$$,
                  'configure_partitions premakes with the new interval: one partition, this calendar month');

-- on demand, for an event years in the past
SELECT lives_ok($$SELECT cdp.configure_partitions('1 day', 0, archive_interval => NULL)$$, 'daily partitions, nothing ahead');
CREATE TEMP TABLE n AS SELECT pg_temp.nparts() AS before;
SET LOCAL timezone = 'America/Los_Angeles';
CREATE TEMP TABLE r AS SELECT pg_temp.route('{"timestamp": "2019-03-15T13:00:00Z"}') AS p;
SET LOCAL timezone = 'UTC';
SELECT is(pg_temp.nparts(), (SELECT before + 1 FROM n), 'an event in 2019 creates exactly one partition');
SELECT is((SELECT pg_temp.range_of(p) FROM r), '2019-03-15 00:00 .. 2019-03-16 00:00',
          'its range is the UTC day of the event, whatever the session TimeZone');
SELECT is((SELECT relname::text FROM pg_class WHERE oid = (SELECT p FROM r)), 'events_p20190315',
          'it is named events_pYYYYMMDD');
SELECT is(pg_temp.route('{"timestamp": "2019-03-15T23:59:59.999999Z"}'), (SELECT p FROM r),
          'another event of that day goes to the same partition');
SELECT is(pg_temp.nparts(), (SELECT before + 1 FROM n), '... without creating another');
SELECT isnt(pg_temp.route('{"timestamp": "2019-03-16T00:00:00Z"}'), (SELECT p FROM r),
            'midnight belongs to the next day');
SET LOCAL cdp.max_event_age = 2147483647;
SELECT is(pg_temp.range_of(pg_temp.route('{"timestamp": "0001-01-10T12:00:00Z"}')),
          '0001-01-10 00:00 .. 0001-01-11 00:00', 'with cdp.max_event_age at its most, an event in year 1 gets its partition');
RESET cdp.max_event_age;

-- other intervals
SELECT lives_ok($$SELECT cdp.configure_partitions('1 month', 0, archive_interval => NULL)$$, 'monthly partitions');
SELECT is(pg_temp.range_of(pg_temp.route('{"timestamp": "2018-07-20T10:00:00Z"}')),
          '2018-07-01 00:00 .. 2018-08-01 00:00', 'a monthly partition is a calendar month');
SELECT is(pg_temp.range_of(pg_temp.route('{"timestamp": "2016-02-29T23:00:00Z"}')),
          '2016-02-01 00:00 .. 2016-03-01 00:00', 'February of a leap year is one monthly partition');
SELECT is(pg_temp.range_of(pg_temp.route('{"timestamp": "2019-03-20T10:00:00Z"}')),
          '2019-03-17 00:00 .. 2019-04-01 00:00',
          'a month that overlaps an older daily partition is clipped to the gap');
SELECT lives_ok($$SELECT cdp.configure_partitions('3 months', 0, archive_interval => NULL)$$, 'quarterly partitions');
SELECT is(pg_temp.range_of(pg_temp.route('{"timestamp": "2017-08-20T10:00:00Z"}')),
          '2017-07-01 00:00 .. 2017-10-01 00:00', 'a quarter starts in January, April, July or October');
SELECT lives_ok($$SELECT cdp.configure_partitions('1 week', 0, archive_interval => NULL)$$, 'weekly partitions');
SELECT is(pg_temp.range_of(pg_temp.route('{"timestamp": "2015-05-14T10:00:00Z"}')),
          '2015-05-11 00:00 .. 2015-05-18 00:00', 'a weekly partition runs Monday to Monday');
SELECT is((SELECT count(*)::int FROM cdp.partitions
            WHERE range_to - range_from = interval '7 days' AND extract(isodow FROM range_from) <> 1), 0,
          'every weekly partition starts on a Monday');
SELECT lives_ok($$SELECT cdp.configure_partitions('6 hours', 0, archive_interval => NULL)$$, 'six-hour partitions');
SELECT is(pg_temp.range_of(pg_temp.route('{"timestamp": "2014-01-01T13:00:00Z"}')),
          '2014-01-01 12:00 .. 2014-01-01 18:00', 'a six-hour partition is aligned to midnight UTC');
SELECT is((SELECT relname::text FROM pg_class WHERE relname LIKE 'events_p20140101%' AND relkind = 'r'), 'events_p20140101_1200',
          'a partition starting inside a day is named events_pYYYYMMDD_HHMI');

-- there is never a default partition
SELECT is((SELECT count(*)::int FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'cdp.events'::regclass
              AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'), 0,
          'cdp.events has no default partition');
SELECT is((SELECT count(*)::int FROM pg_partition_tree('cdp.events') WHERE level > 1), 0,
          'partitions are plain tables, one level deep');
SELECT is((SELECT count(*)::int FROM pg_partition_tree('cdp.events') WHERE isleaf),
          (SELECT count(*)::int FROM cdp.partitions), 'cdp.partitions lists every partition');

-- event times before 0001-01-08 UTC are refused as bad timestamps, so every
-- partition range (weeks included) starts in the common era
DO $$ BEGIN
    PERFORM cdp.configure_partitions('1 day', 0, archive_interval => NULL);
    PERFORM pg_temp.route('{"timestamp": "0001-01-01T00:30:00+01:00", "event": "Before Year 1"}');
END $$;
SELECT matches((SELECT coalesce((SELECT 'stored' FROM cdp.events WHERE event = 'Before Year 1'),
                                (SELECT error_code FROM cdp.dead_letters WHERE payload LIKE '%Before Year 1%'))),
               '^invalid_timestamp$',
               'an event before 0001-01-08 UTC (here 1 BC after its offset) is dead-lettered invalid_timestamp');
DO $$ BEGIN
    PERFORM pg_temp.route('{"timestamp": "0001-01-03T00:00:00Z", "event": "Early Year 1"}');
END $$;
SELECT matches((SELECT error_message FROM cdp.dead_letters WHERE payload LIKE '%Early Year 1%'),
               'before 0001-01-08 00:00:00\+00, the earliest event time accepted$',
               '... also one in the first week of year 1, and its message names the earliest time accepted');

-- retention: older events are dead-lettered as expired
SELECT lives_ok($$SELECT cdp.configure_partitions('1 day', 0, '30 days', archive_interval => NULL)$$, 'retention of 30 days');
SELECT is(pg_temp.route('{"timestamp": "2019-06-01T00:00:00Z", "event": "Too Old"}'), NULL,
          'an event older than the retention is not stored');
SELECT is((SELECT error_code FROM cdp.dead_letters WHERE payload LIKE '%Too Old%'), 'expired',
          '... it is a dead letter with code expired');
SELECT is((SELECT error_message FROM cdp.dead_letters WHERE payload LIKE '%Too Old%'),
          'event time 2019-06-01 00:00:00+00 is before the retention horizon ' || (now() - interval '30 days'),
          '... and a message naming the event time and the horizon');
SELECT isnt(pg_temp.route(jsonb_build_object('timestamp', now() - interval '30 days', 'event', 'At Horizon')), NULL,
            'an event exactly at the horizon is stored');
SELECT isnt(pg_temp.route(jsonb_build_object('timestamp', now() - interval '29 days', 'event', 'Recent')), NULL,
            'an event inside the retention is stored');

-- the cdp.partitions view
SELECT columns_are('cdp', 'partitions',
                   ARRAY['partition', 'range_from', 'range_to', 'row_estimate', 'total_bytes', 'total_size'],
                   'cdp.partitions has partition, range_from, range_to, row_estimate, total_bytes, total_size');
SELECT results_eq($$SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                     WHERE attrelid = 'cdp.partitions'::regclass AND attnum > 0 ORDER BY attnum$$,
                  $$VALUES ('regclass'), ('timestamp with time zone'), ('timestamp with time zone'),
                           ('bigint'), ('bigint'), ('text')$$,
                  'cdp.partitions column types');
SELECT is((SELECT row_estimate FROM cdp.partitions WHERE partition = 'cdp.events_p20190315'::regclass), NULL,
          'row_estimate is NULL before ANALYZE');
ANALYZE cdp.events_p20190315;
SELECT is((SELECT row_estimate FROM cdp.partitions WHERE partition = 'cdp.events_p20190315'::regclass), 2::bigint,
          'row_estimate counts rows after ANALYZE');
SELECT ok((SELECT bool_and(total_bytes > 0 AND total_size ~ '^[0-9]+ (bytes|kB|MB)$') FROM cdp.partitions),
          'total_bytes and total_size describe every partition');

-- indexes on every partition
SELECT is((SELECT count(*)::int FROM cdp.partitions p
            WHERE NOT EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                JOIN pg_am a ON a.oid = i.relam
                               WHERE x.indrelid = p.partition AND a.amname = 'brin'
                                 AND pg_get_indexdef(x.indexrelid) LIKE '%USING brin (ts)')
               OR NOT EXISTS (SELECT 1 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
                                JOIN pg_am a ON a.oid = i.relam
                               WHERE x.indrelid = p.partition AND a.amname = 'btree'
                                 AND pg_get_indexdef(x.indexrelid) LIKE '%USING btree (profile_id, ts)')), 0,
          'every partition has a BRIN index on ts and a btree on (profile_id, ts)');
SELECT is((SELECT count(*)::int FROM cdp.partitions p
            WHERE has_table_privilege('public', p.partition, 'SELECT, INSERT, UPDATE, DELETE')), 0,
          'partitions made on demand are not readable or writable by PUBLIC');

SELECT * FROM finish();
ROLLBACK;
