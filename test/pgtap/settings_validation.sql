-- Settings that cannot work are refused with 22023 and leave the working
-- configuration in place: partition intervals too long to align, retention
-- or archive_after so long that now() minus it is out of range, archive
-- intervals that are not whole months, and GUC values out of their range.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(27);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
CREATE TEMP TABLE config_before AS SELECT * FROM cdp.partition_config;

-- configure_partitions
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 1, '300000 years')$$, '22023',
                 'retention must be a positive interval of at most 1000 years',
                 'a retention of 300000 years is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 1, '1001 years')$$, '22023', NULL,
                 'a retention of 1001 years is refused');
SELECT lives_ok($$SELECT cdp.configure_partitions('1 day', 1, '1000 years')$$,
                'a retention of 1000 years is accepted');
SELECT throws_ok($$SELECT cdp.configure_partitions('213503983 days')$$, '22023',
                 'partition interval must be at most 120 months or 3660 days',
                 'a partition interval of 213503983 days is refused with 22023');
SELECT throws_ok($$SELECT cdp.configure_partitions('3661 days')$$, '22023', NULL,
                 'a partition interval of 3661 days is refused');
SELECT throws_ok($$SELECT cdp.configure_partitions('87865 hours')$$, '22023', NULL,
                 'so is one of 87865 hours');
SELECT throws_ok($$SELECT cdp.configure_partitions('121 months')$$, '22023', NULL,
                 'a partition interval of 121 months is refused');
SELECT throws_ok($$SELECT cdp.configure_partitions('-2147483648 days 1 hour')$$, '22023', NULL,
                 'a partition interval with a huge negative day part is refused, not overflowed');
SELECT lives_ok($$SELECT cdp.configure_partitions('10 years', 0)$$, 'a partition interval of 10 years is accepted');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 1, archive_interval => '1 day')$$, '22023',
                 'archive_interval must be whole months, from 1 month to 120 months, or NULL',
                 'an archive_interval that is not whole months is refused');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 1, archive_interval => '121 months')$$, '22023', NULL,
                 'an archive_interval over 10 years is refused');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 1, archive_after => '-1 day')$$, '22023',
                 'archive_after must be a non-negative interval of at most 1000 years',
                 'a negative archive_after is refused');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 1, archive_after => '300000 years')$$, '22023', NULL,
                 'an archive_after of 300000 years is refused');
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 1, archive_after => NULL)$$, '22004', NULL,
                 'a NULL archive_after is refused');

-- after every refusal ingest and maintenance still work
DO $$ BEGIN PERFORM cdp.configure_partitions(); END $$;
SELECT throws_ok($$SELECT cdp.configure_partitions('1 day', 1, '300000 years')$$, '22023', NULL,
                 'refused once more');
SELECT is((SELECT row(c.*)::text FROM cdp.partition_config c),
          (SELECT row(c.*)::text FROM config_before c), 'the configuration is unchanged');
SELECT lives_ok($$SELECT cdp.track('u', 'e'); SELECT cdp.process_inbox()$$, 'process_inbox works');
SELECT lives_ok($$SELECT cdp.run_maintenance()$$, 'run_maintenance works');

-- a row edited by hand is checked when it is read, with a clear error
UPDATE cdp.partition_config SET retention = '300000 years';
SELECT throws_ok($$SELECT cdp.process_inbox()$$, '22023',
                 'retention must be a positive interval of at most 1000 years',
                 'process_inbox refuses a hand-edited retention of 300000 years with 22023');
SELECT throws_ok($$SELECT cdp.run_maintenance()$$, '22023', NULL, '... and so does run_maintenance');
UPDATE cdp.partition_config SET retention = NULL, part_interval = '213503983 days';
SELECT throws_ok($$SELECT cdp.process_inbox()$$, '22023',
                 'partition interval must be at most 120 months or 3660 days',
                 'process_inbox refuses a hand-edited partition interval of 213503983 days');
UPDATE cdp.partition_config SET part_interval = '1 day';
SELECT lives_ok($$SELECT cdp.process_inbox()$$, 'once the row is fixed, processing works again');

-- GUC ranges: now() plus or minus any of them is a valid time
SELECT throws_ok($$SET LOCAL cdp.dedup_window = '3651d'$$, '22023', NULL,
                 'cdp.dedup_window over 3650 days is refused with 22023');
SELECT throws_ok($$SET LOCAL cdp.max_future_skew = '366d'$$, '22023', NULL,
                 'cdp.max_future_skew over 365 days is refused with 22023');
SELECT throws_ok($$SET LOCAL cdp.max_event_age = '59min'$$, '22023', NULL,
                 'cdp.max_event_age under an hour is refused with 22023');
SELECT throws_ok($$SET LOCAL cdp.max_partitions = 5$$, '22023', NULL,
                 'cdp.max_partitions under 10 is refused with 22023');
SELECT throws_ok($$SET LOCAL cdp.retention_lock_wait = '61s'$$, '22023', NULL,
                 'cdp.retention_lock_wait over a minute is refused with 22023');

SELECT * FROM finish();
ROLLBACK;
