-- How many partitions writers can make is bounded: ranges that ended more
-- than archive_after ago span archive_interval (a month by default), events
-- older than cdp.max_event_age or further ahead than cdp.max_future_skew are
-- dead-lettered (too_old, too_far_ahead), and ingest creates no partition
-- beyond cdp.max_partitions (partition_limit).  A backfill of years of
-- history still works, and a query over all of cdp.events still runs.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(31);

\ir include/partition_setup.psql

CREATE FUNCTION pg_temp.msg(event text, ts text) RETURNS text LANGUAGE sql AS $$
    SELECT jsonb_build_object('type', 'track', 'userId', 'u', 'event', event, 'timestamp', ts)::text;
$$;
CREATE FUNCTION pg_temp.dead(event text) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(error_code, ',') FROM cdp.dead_letters WHERE payload::jsonb ->> 'event' = event;
$$;
CREATE FUNCTION pg_temp.stored(event text) RETURNS int LANGUAGE sql AS $$
    SELECT count(*)::int FROM cdp.events WHERE events.event = stored.event;
$$;

-- the defaults
SELECT is((SELECT row(archive_interval, archive_after)::text FROM cdp.partition_config),
          row('1 month'::interval, '3 months'::interval)::text,
          'by default ranges older than 3 months span a calendar month');
SELECT is(current_setting('cdp.max_event_age'), '7305d', 'cdp.max_event_age defaults to 20 years');
SELECT is(current_setting('cdp.max_partitions'), '1000', 'cdp.max_partitions defaults to 1000');

-- a flood of 3,000 distinct past days (8 years), plus times from long ago
DO $$ BEGIN PERFORM pg_temp.drop_partitions(); PERFORM cdp.configure_partitions(); END $$;
CREATE TEMP TABLE premade AS SELECT pg_temp.nparts() AS n;
INSERT INTO cdp.inbox (payload)
SELECT pg_temp.msg('Day', to_char(now() - g * interval '1 day', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
  FROM generate_series(1, 3000) g;
INSERT INTO cdp.inbox (payload) VALUES
    (pg_temp.msg('Year 1', '0001-02-01T00:00:00Z')),
    (pg_temp.msg('Year 1900', '1900-01-01T00:00:00Z')),
    (pg_temp.msg('21 Years Ago', to_char(now() - interval '21 years', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))),
    (pg_temp.msg('19 Years Ago', to_char(now() - interval '19 years', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')));
SELECT is(cdp.process_inbox(), 3004::bigint, 'all 3004 messages are taken');
SELECT is(pg_temp.stored('Day'), 3000, 'the 3000 events of 8 years of history are stored');
SELECT cmp_ok(pg_temp.nparts() - (SELECT n FROM premade), '<', 200,
              'they made fewer than 200 partitions: one a day for 3 months, one a month before');
SELECT is((SELECT count(*)::int FROM cdp.partitions
            WHERE date_trunc('month', range_from) + interval '1 month' <= now() - interval '3 months'
              AND NOT (range_from = date_trunc('month', range_from)
                       AND range_to = range_from + interval '1 month')), 0,
          'every partition in a month that ended more than 3 months ago is that calendar month');
SELECT is((SELECT count(*)::int FROM cdp.partitions
            WHERE range_from >= date_trunc('month', now() - interval '3 months') + interval '1 month'
              AND range_to - range_from <> interval '1 day'), 0,
          'partitions of the last months are days');
SELECT is((SELECT count(*)::int FROM cdp.partitions a JOIN cdp.partitions b
              ON a.partition <> b.partition AND a.range_from < b.range_to AND b.range_from < a.range_to), 0,
          'no two partitions overlap');
SELECT is((SELECT count(*)::int FROM cdp.events), 3001, 'a count(*) over all of cdp.events works');
SELECT is(pg_temp.stored('19 Years Ago'), 1, 'an event 19 years old is stored');
SELECT is((SELECT tableoid::regclass::text FROM cdp.events WHERE event = '19 Years Ago'),
          'cdp.events_p' || to_char(now() - interval '19 years', 'YYYYMM'),
          '... in its month''s partition, named events_pYYYYMM');
SELECT is(pg_temp.dead('21 Years Ago'), 'too_old', 'an event 21 years old is dead-lettered too_old');
SELECT is(pg_temp.dead('Year 1900') || ' ' || pg_temp.dead('Year 1'), 'too_old too_old',
          'so are events from 1900 and from year 1');
SELECT is((SELECT error_message FROM cdp.dead_letters WHERE payload::jsonb ->> 'event' = 'Year 1900'),
          format('event time 1900-01-01 00:00:00+00 is before %s, the oldest cdp.max_event_age accepts',
                 now() - interval '7305 days'),
          'the dead letter names the event time and the oldest time accepted');
SELECT is((SELECT count(*)::int FROM cdp.partitions WHERE range_from < now() - interval '20 years'), 0,
          'no partition was made for them');

-- cdp.max_event_age follows the setting
SET LOCAL cdp.max_event_age = '365d';
INSERT INTO cdp.inbox (payload) VALUES
    (pg_temp.msg('400 Days Ago', to_char(now() - interval '400 days', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))),
    (pg_temp.msg('300 Days Ago', to_char(now() - interval '300 days', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')));
SELECT is(cdp.process_inbox(), 2::bigint, 'with cdp.max_event_age = 365d');
SELECT is(pg_temp.dead('400 Days Ago'), 'too_old', 'an event 400 days old is too_old');
SELECT is(pg_temp.stored('300 Days Ago'), 1, 'an event 300 days old is stored');
RESET cdp.max_event_age;

-- received_at far ahead of the clock (a loaded inbox row): too_far_ahead
INSERT INTO cdp.inbox (payload, received_at) VALUES
    (pg_temp.msg('Ahead', NULL), now() + interval '3 days'),
    (pg_temp.msg('Infinitely Ahead', NULL), 'infinity'),
    (pg_temp.msg('Infinitely Old', NULL), '-infinity');
SELECT is(cdp.process_inbox(), 3::bigint, 'inbox rows with received_at ahead of the clock or infinite');
SELECT is(pg_temp.dead('Ahead'), 'too_far_ahead', 'a receipt 3 days ahead is too_far_ahead');
SELECT is(pg_temp.dead('Infinitely Ahead'), 'too_far_ahead', 'a receipt at infinity is too_far_ahead');
SELECT is(pg_temp.dead('Infinitely Old'), 'invalid_timestamp', 'a receipt at -infinity is an invalid_timestamp');

-- cdp.max_partitions: ingest creates none beyond it
DO $$ BEGIN PERFORM set_config('cdp.max_partitions', pg_temp.nparts()::text, true); END $$;
CREATE TEMP TABLE at_limit AS SELECT pg_temp.nparts() AS n;
INSERT INTO cdp.inbox (payload) VALUES
    (pg_temp.msg('Needs A New Partition', '2010-06-15T00:00:00Z')),
    (pg_temp.msg('Fits An Old One', to_char(now() - interval '1000 days', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')));
SELECT is(cdp.process_inbox(), 2::bigint, 'at cdp.max_partitions');
SELECT is(pg_temp.dead('Needs A New Partition'), 'partition_limit',
          'an event that needs a new partition is dead-lettered partition_limit');
SELECT matches((SELECT error_message FROM cdp.dead_letters WHERE payload::jsonb ->> 'event' = 'Needs A New Partition'),
               '^event time 2010-06-15 00:00:00\+00 needs a new partition and cdp.events has \d+, the most cdp.max_partitions allows$',
               '... with a message naming the limit');
SELECT is(pg_temp.stored('Fits An Old One'), 1, 'an event with a partition already made is stored');
SELECT is(pg_temp.nparts(), (SELECT n FROM at_limit), 'no partition was added');
-- maintenance's premaking is not capped: live traffic keeps flowing
DO $$ BEGIN
    EXECUTE format('DROP TABLE %s', (SELECT partition FROM cdp.partitions ORDER BY range_from DESC LIMIT 1));
END $$;
SET LOCAL cdp.max_partitions = 10;
SELECT is(cdp.run_maintenance() -> 'partitions_created', '1'::jsonb,
          'above cdp.max_partitions, maintenance still makes the partition ahead it lacks');
RESET cdp.max_partitions;
SELECT is(cdp.replay_dead_letters((SELECT array_agg(id) FROM cdp.dead_letters
                                    WHERE payload::jsonb ->> 'event' = 'Needs A New Partition')), 1::bigint,
          'below the limit again, the dead letter is replayed');
DO $$ BEGIN PERFORM cdp.process_inbox(); END $$;
SELECT is(pg_temp.stored('Needs A New Partition'), 1, '... and stored');

SELECT * FROM finish();
ROLLBACK;
