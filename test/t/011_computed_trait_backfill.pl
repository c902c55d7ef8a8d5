# Backfilling a computed trait in the background: with the maintenance
# worker running, cdp.define_computed_trait returns at once and the worker
# counts the stored events a partition at a time (cdp.computed_trait_status
# shows how far), while ingest goes on.  Events stored meanwhile are neither
# missed nor counted twice: the values equal a count over the events.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('backfill');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'cdp'
cdp.ingest_workers = 1
cdp.maintenance_interval = '1h'
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

sql('CREATE EXTENSION pg_cdp');
wait_for(q{SELECT cdp.maintenance_running()}, 't', 'the maintenance worker serves the database');

# 30 people, orders over the last 5 days (five partitions)
sql(q{SELECT cdp.track('u' || i % 30, 'Order', jsonb_build_object('total', i), NULL,
                       now() - make_interval(days => i % 5, mins => i))
        FROM generate_series(1, 600) i});
wait_for(q{SELECT count(*) FROM cdp.events}, '600', 'the events are stored');

# hold today's partition: the backfill counts the older ones, then waits there
my $today = sql(q{SELECT p.partition FROM cdp.partition_bounds() p
	WHERE now() >= p.range_from AND now() < p.range_to});
my $older = sql(qq{SELECT count(*) FROM cdp.partition_bounds() p
	WHERE p.range_from < (SELECT range_from FROM cdp.partition_bounds() WHERE partition = '$today'::regclass)});
my $holder = $node->background_psql('cdp');
$holder->query_safe("BEGIN; LOCK TABLE $today IN ACCESS EXCLUSIVE MODE");

sql(q{SELECT cdp.define_computed_trait('orders', 'count', 'Order')});
sql(q{SELECT cdp.define_computed_trait('revenue', 'sum', 'Order', 'total')});
is(sql(q{SELECT min(status) FROM cdp.computed_trait_status}), 'backfilling',
	'define returns at once, the backfill in the background');
wait_for(qq{SELECT partitions_done >= $older FROM cdp.computed_trait_status WHERE name = 'orders'}, 't',
	'the partitions before today are counted (orders; revenue, one at a time, waits)');

# late orders, dated in partitions already counted, for some of the same
# people and new ones: ingest notes them, the backfill counts them again
sql(q{SELECT cdp.track('u' || i % 40, 'Order', jsonb_build_object('total', 1000 + i), NULL,
                       now() - make_interval(days => 3, mins => i))
        FROM generate_series(1, 200) i});
# (cdp.events as a whole cannot be read: one of its partitions is locked)
wait_for(q{SELECT count(*) FROM cdp.inbox}, '0', 'ingest goes on meanwhile');
is(sql(q{SELECT min(status) FROM cdp.computed_trait_status}), 'backfilling', '... the backfill still waiting');
cmp_ok(sql(q{SELECT count(*) FROM cdp.trait_dirty}), '>', 0, '... and the profiles the late orders reached are noted');

$holder->query_safe('COMMIT');
$holder->quit;
wait_for(q{SELECT bool_and(status = 'live') FROM cdp.computed_trait_status}, 't',
	'the backfill finishes');
is(sql(q{SELECT bool_and(partitions_done = partitions_total AND profiles_to_recount = 0)
	FROM cdp.computed_trait_status}), 't', 'every partition counted, nothing left to count again');

# more orders now that it is live
sql(q{SELECT cdp.track('u' || i % 50, 'Order', jsonb_build_object('total', 5))
        FROM generate_series(1, 100) i});
wait_for(q{SELECT count(*) FROM cdp.events}, '900', 'ingest after it is live');

my $diff = q{SELECT count(*) FROM (
	SELECT e.profile_id, count(*) AS n, sum((e.properties->>'total')::numeric) AS s
	  FROM cdp.events_resolved e WHERE e.event = 'Order' GROUP BY 1) o
	FULL JOIN (SELECT r.profile_id, (cdp.computed_traits_of(r.profile_id)->>'orders')::bigint AS n,
	                  (cdp.computed_traits_of(r.profile_id)->>'revenue')::numeric AS s
	             FROM cdp.profile_records r WHERE r.merged_into IS NULL) k ON k.profile_id = o.profile_id
	WHERE o.n IS DISTINCT FROM k.n OR o.s IS DISTINCT FROM k.s};
wait_for($diff, '0', 'every value equals a count over the events: nothing missed, nothing twice');

done_testing();
