# The maintenance worker applies retention to a distributed cdp.events.  It
# detaches expired partitions with DETACH PARTITION ... CONCURRENTLY, which
# Citus refuses on a distributed table: every pass failed and no partition
# was ever retired.  Both retention modes are checked, by their effect.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/..";
use CdpCitus;
use PostgreSQL::Test::Utils;
use Test::More;

my $c = start_citus_cluster('retention_worker', {
	coordinator_conf => q{
cdp.ingest_workers = 0
cdp.maintenance_interval = 1
}});
my $coord = $c->{coordinator};
my $sql = $c->{sql};

# events on five days, a month back, and today
$sql->(q{
SET client_min_messages = warning;
SELECT cdp.ingest(format('{"type":"track","anonymousId":"a%s","event":"Viewed","timestamp":"%s","messageId":"m%s"}',
       i, to_char(now() - interval '30 days' + (i % 5) * interval '1 day', 'YYYY-MM-DD"T"12:00:00"Z"'), i)::jsonb)
  FROM generate_series(1, 50) i;
SELECT cdp.ingest('{"type":"track","anonymousId":"today","event":"Viewed","messageId":"today"}');
SELECT cdp.process_inbox();
SELECT cdp.distribute();
});
is($sql->('SELECT count(*) FROM cdp.events'), '51', 'events stored and distributed');

# detach mode: the five old partitions leave cdp.events and stay as tables
$sql->(q{SELECT cdp.configure_partitions(retention => '20 days', retention_mode => 'detach')});
ok($coord->poll_query_until('cdp', q{SELECT count(*) = 1 FROM cdp.events}),
	'the maintenance worker detached the expired partitions');
is($sql->(q{SELECT count(*) FROM cdp.detached_event_tables()}), '5', 'five detached tables are left');
is($sql->(q{SELECT sum(n) FROM (SELECT 1 AS n FROM cdp.events_resolved) s}), '1', 'today\'s event stays');

# drop mode: premade partitions of days gone by go as the horizon passes them;
# make one by an event 25 days old, then shorten the retention
$sql->(q{
SELECT cdp.ingest(format('{"type":"track","anonymousId":"late","event":"Viewed","timestamp":"%s","messageId":"late"}',
       to_char(now() - interval '15 days', 'YYYY-MM-DD"T"12:00:00"Z"'))::jsonb);
SELECT cdp.process_inbox();
});
is($sql->('SELECT count(*) FROM cdp.events'), '2', 'an event 15 days old stored');
$sql->(q{SELECT cdp.configure_partitions(retention => '10 days', retention_mode => 'drop')});
ok($coord->poll_query_until('cdp', q{SELECT count(*) = 1 FROM cdp.events}),
	'the maintenance worker dropped the expired partition');
is($sql->(q{SELECT count(*) FROM cdp.detached_event_tables()}), '5', 'dropped, not left detached');
unlike(slurp_file($coord->logfile), qr/CONCURRENTLY commands are currently unsupported/,
	'no pass failed on a concurrent detach');

stop_citus_cluster($c);
done_testing();
