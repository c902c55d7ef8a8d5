# Windows of computed traits: a profile's windowed value changes when its
# event ages out, without anyone calling anything: the maintenance worker
# recomputes states whose oldest event left the window, within a second of
# the moment it left.  Events that arrive later keep counting.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);


my $node = PostgreSQL::Test::Cluster->new('windows');
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
wait_for(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cdp maintenance worker'},
	'1', 'the maintenance worker runs');
sql(q{SELECT cdp.define_computed_trait('recent_orders', 'count', 'Order', time_window => '6 seconds')});
sql(q{SELECT cdp.define_computed_trait('all_orders', 'count', 'Order')});

# two orders, the second 2 s after the first
sql(q{SELECT cdp.track('alice', 'Order', '{}', NULL, now())});
wait_for(q{SELECT cdp.computed_traits_of(cdp.resolve('user_id:alice'))->>'recent_orders'}, '1',
	'the ingest worker counts the first order');
my $first = sql(q{SELECT extract(epoch FROM max(ts)) FROM cdp.events});
sleep 2;
sql(q{SELECT cdp.track('alice', 'Order', '{}', NULL, now())});
wait_for(q{SELECT cdp.computed_traits_of(cdp.resolve('user_id:alice'))->>'recent_orders'}, '2',
	'... and the second');

# the first leaves the window 6 s after its time; the value drops by itself
wait_for(q{SELECT cdp.computed_traits_of(cdp.resolve('user_id:alice'))->>'recent_orders'}, '1',
	'the first order ages out of the window');
# how late, for the log only: timing is bench/computed's to measure
note(sprintf('the exit came %.2f s after the moment', time - ($first + 6)));
is(sql(q{SELECT expires_at > now() FROM cdp.trait_state_rows s JOIN cdp.computed_traits t ON t.id = s.trait_id
	WHERE t.name = 'recent_orders'}), 't', 'the next change is the second order leaving');
wait_for(q{SELECT cdp.computed_traits_of(cdp.resolve('user_id:alice'))->>'recent_orders'}, '0',
	'the second ages out too');
is(sql(q{SELECT cdp.computed_traits_of(cdp.resolve('user_id:alice'))->>'all_orders'}), '2',
	'a trait without a window keeps both');
is(sql(q{SELECT count(*) FROM cdp.trait_state_rows s JOIN cdp.computed_traits t ON t.id = s.trait_id
	WHERE t.name = 'recent_orders'}), '0', 'a state left with no event is removed');

done_testing();
