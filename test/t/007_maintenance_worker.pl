# The maintenance worker: with pg_cdp preloaded it premakes partitions and
# applies retention without anyone calling run_maintenance; retention
# detaches concurrently, so a long report and sustained ingest go on while
# it is due (the old partition goes once the report ends); a detach cut
# short is finished on the next pass; schedule_jobs leaves out the pg_cron
# jobs the workers make needless; cdp.maintenance_interval = 0 stops the
# worker, and a new one purges the dedup window at once.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('maintenance');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cron,pg_cdp'
cron.database_name = 'cdp'
cdp.database_name = 'cdp'
cdp.ingest_workers = 1
cdp.maintenance_interval = '1s'
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE cdp');

sub sql { return $node->safe_psql('cdp', $_[0]); }

sub wait_for
{
	my ($sql, $expected, $what) = @_;
	ok($node->poll_query_until('cdp', $sql, $expected), $what)
	  or diag("last: " . $node->safe_psql('cdp', $sql));
}

my $maintenance_sql = q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'pg_cdp maintenance worker'};

sql('CREATE EXTENSION pg_cdp');
wait_for($maintenance_sql, '1', 'CREATE EXTENSION starts the maintenance worker');

# premaking: the current partition and 7 days ahead, nobody calling anything
wait_for(q{SELECT count(*) >= 8 AND max(range_to) > now() + interval '7 days'
	FROM cdp.partitions WHERE range_to > now()}, 't',
	'partitions are premade without run_maintenance');

# old events, in two day partitions that retention will remove
sql(q{SELECT cdp.track('old-' || i, 'Old', '{}', NULL, now() - make_interval(days => 9 + i % 2))
	FROM generate_series(1, 40) i});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Old'}, '40', 'old events stored');
my @old = split /\n/, sql(q{SELECT partition FROM cdp.partitions
	WHERE range_to <= now() - interval '5 days' ORDER BY range_from});
is(scalar(@old), 2, 'the old events lie in two partitions');

# a long report holds a snapshot of cdp.events
my $report = $node->background_psql('cdp');
$report->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
my $seen = $report->query_safe('SELECT count(*) FROM cdp.events');

sql(q{SELECT cdp.configure_partitions(retention => '5 days')});
wait_for(q{SELECT count(*) FROM pg_inherits
	WHERE inhparent = 'cdp.events'::regclass AND inhdetachpending}, '1',
	'retention starts detaching the oldest partition concurrently');
wait_for(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cdp maintenance worker'
	AND query LIKE 'ALTER TABLE cdp.events DETACH PARTITION % CONCURRENTLY' AND wait_event_type = 'Lock'},
	'1', 'and waits for the report');

# ingest goes on meanwhile: messages committed one by one, one of them
# needing a new partition (four days back, within retention)
sql(q{DO $$
BEGIN
  FOR i IN 1..200 LOOP
    PERFORM cdp.track('live-' || i % 7, 'Live');
    COMMIT;
  END LOOP;
  PERFORM cdp.track('late', 'Late', '{}', NULL, now() - interval '4 days');
END $$});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event IN ('Live', 'Late')}, '201',
	'the ingest workers store sustained ingest while retention waits for the report');
is(sql(q{SELECT count(*) FROM cdp.inbox}), '0', 'nothing is left queued');
is(sql(q{SELECT count(*) FROM cdp.events WHERE event = 'Old'}), '20',
	'new queries no longer see the partition being detached');
is($report->query_safe('SELECT count(*) FROM cdp.events'), $seen,
	'the report still reads everything its snapshot saw');
is(sql(qq{SELECT count(*) FROM pg_class WHERE oid IN ('$old[0]'::regclass, '$old[1]'::regclass)}), '2',
	'both old partitions still exist while the report runs');

$report->query_safe('COMMIT');
$report->quit;
wait_for(qq{SELECT count(*) FROM pg_class WHERE relname IN ('} . join("','", map { s/^cdp\.//r } @old) . q{')},
	'0', 'once the report ends, the old partitions are detached and dropped');
is(sql(q{SELECT count(*) FROM cdp.events WHERE event = 'Old'}), '0', 'their events are gone');
is(sql(q{SELECT count(*) FROM pg_inherits WHERE inhdetachpending}), '0', 'no detach is left pending');
is(sql(q{SELECT count(*) FROM cdp.events WHERE event IN ('Live', 'Late')}), '201',
	'the rest is untouched');

# a detach cut short (the worker stopped while it waited for a report)
# leaves its partition pending detach: the next pass finishes it
sql(q{SELECT cdp.configure_partitions(retention => NULL)});
sql(q{SELECT cdp.track('older', 'Older', '{}', NULL, now() - interval '12 days')});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Older'}, '1', 'an older event stored');
my $older = sql(q{SELECT partition FROM cdp.partitions WHERE range_to <= now() - interval '5 days'});
$report = $node->background_psql('cdp');
$report->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
$report->query_safe('SELECT count(*) FROM cdp.events');
sql(q{SELECT cdp.configure_partitions(retention => '5 days')});
wait_for(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cdp maintenance worker'
	AND query LIKE 'ALTER TABLE cdp.events DETACH PARTITION % CONCURRENTLY' AND wait_event_type = 'Lock'},
	'1', 'retention waits for the report again');
my $stopped = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp maintenance worker'});
sql(qq{SELECT pg_terminate_backend($stopped)});
wait_for(qq{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'pg_cdp maintenance worker' AND pid <> $stopped}, '1',
	'the maintenance worker, stopped mid-detach, is started again');
is(sql(q{SELECT count(*) FROM pg_inherits WHERE inhdetachpending}), '1',
	'its partition is left pending detach');
wait_for(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cdp maintenance worker'
	AND query LIKE 'ALTER TABLE cdp.events DETACH PARTITION % FINALIZE' AND wait_event_type = 'Lock'},
	'1', 'the next pass finishes the detach, waiting for the report');
$report->query_safe('COMMIT');
$report->quit;
wait_for(qq{SELECT to_regclass('$older') IS NULL}, 't',
	'once the report ends, the partition is detached and dropped');
is(sql(q{SELECT count(*) FROM pg_inherits WHERE inhdetachpending}), '0', 'nothing is pending');

# retention_mode 'detach' keeps the detached table
sql(q{SELECT cdp.configure_partitions(retention => NULL)});
sql(q{SELECT cdp.track('oldest', 'Oldest', '{}', NULL, now() - interval '14 days')});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Oldest'}, '1', 'an even older event stored');
my $oldest = sql(q{SELECT partition FROM cdp.partitions WHERE range_to <= now() - interval '5 days'});
sql(q{SELECT cdp.configure_partitions(retention => '5 days', retention_mode => 'detach')});
wait_for(q{SELECT count(*) FROM cdp.partitions WHERE range_to <= now() - interval '5 days'}, '0',
	'retention_mode detach: the partition is detached');
is(sql(qq{SELECT count(*) FROM $oldest}), '1', 'and kept as a table with its rows');
sql(q{SELECT cdp.configure_partitions(retention => '5 days', retention_mode => 'drop')});
sleep(2);
is(sql(qq{SELECT to_regclass('$oldest') IS NOT NULL}), 't',
	'a table detached in detach mode stays when the mode changes to drop');

# the pg_cron jobs: none while the workers do their work
sql('CREATE EXTENSION pg_cron');
is(sql(q{SELECT count(*) FROM cdp.schedule_jobs()}), '0',
	'schedule_jobs schedules nothing when the workers run');
is(sql(q{SELECT count(*) FROM cron.job}), '0', 'no job in cron.job');

sub reload
{
	my ($setting, $value) = @_;
	sql("ALTER SYSTEM SET $setting = '$value'");
	sql('SELECT pg_reload_conf()');
	ok($node->poll_query_until('cdp', "SELECT current_setting('$setting') = '$value'"),
		"$setting = $value after a reload");
}

reload('cdp.ingest_workers', '0');
reload('cdp.maintenance_interval', '0');
wait_for($maintenance_sql, '0', 'cdp.maintenance_interval = 0 stops the maintenance worker');
is(sql(q{SELECT count(*) FROM cdp.schedule_jobs()}), '2',
	'without workers, schedule_jobs schedules both jobs');
is(sql(q{SELECT string_agg(jobname, ',' ORDER BY jobname) FROM cron.job}),
	'cdp-maintenance,cdp-process-inbox', 'the inbox and maintenance jobs');
reload('cdp.ingest_workers', '1');
is(sql(q{SELECT count(*) FROM cdp.schedule_jobs()}), '1', 'with ingest workers, one job');
is(sql(q{SELECT string_agg(jobname, ',') FROM cron.job}), 'cdp-maintenance',
	'the maintenance job: the inbox job scheduled before is removed');
sql(q{SELECT cdp.ingest('{"type": "track", "event": "Remembered", "anonymousId": "r1", "messageId": "remember-1"}')});
wait_for(q{SELECT count(*) FROM cdp.message_ids}, '1', 'a messageId is remembered');
reload('cdp.dedup_window', '1s');
reload('cdp.maintenance_interval', '1min');
wait_for($maintenance_sql, '1', 'a positive interval starts the maintenance worker again');
wait_for('SELECT count(*) FROM cdp.message_ids', '0',
	'its first pass purges the dedup window');
is(sql(q{SELECT count(*) FROM cdp.schedule_jobs()}), '0', 'and schedule_jobs removes its job');
is(sql(q{SELECT count(*) FROM cron.job}), '0', 'cron.job is empty again');

# the worker logged what it did
ok($node->log_contains(qr/pg_cdp maintenance: \d+ partitions created, 2 detached, 2 dropped/),
	'the worker logs what it did');

$node->stop;
done_testing();
