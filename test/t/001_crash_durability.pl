# Nothing acknowledged is lost in a crash: messages enqueued by committed
# transactions survive an immediate shutdown, stored events survive, and
# processing that was in flight rolls back into the inbox (including a
# partition it was creating) and completes after restart with no duplicates.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.ingest_workers = 0
fsync = on
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cdp');

sub scalar_query
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql);
}

# 100 committed enqueues; process half of them
scalar_query(q{
	SELECT cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'u' || i,
		'event', 'Order Completed', 'messageId', 'msg-' || i,
		'timestamp', '2026-03-01T10:00:00Z'))
	FROM generate_series(1, 100) i});
is(scalar_query('SELECT cdp.process_inbox(50)'), '50', 'half the inbox processed');

# in flight at the crash: processing that also creates a new partition
my $bg = $node->background_psql('postgres', on_error_stop => 1);
$bg->query_safe(q{
	SELECT cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'late',
		'event', 'Backfilled', 'messageId', 'late-1', 'timestamp', '2009-12-31T23:00:00Z'))});
$bg->query_safe('BEGIN');
is($bg->query_safe('SELECT cdp.process_inbox()'), '51', 'in-flight batch took the rest');

$node->stop('immediate');
eval { $bg->quit; };
$node->start;

is(scalar_query('SELECT count(*) FROM cdp.events'), '50',
	'events committed before the crash survive');
is(scalar_query('SELECT count(*) FROM cdp.inbox'), '51',
	'uncommitted processing rolled its messages back into the inbox');
is(scalar_query(q{SELECT count(*) FROM cdp.partitions WHERE range_from < '2010-01-01'}), '0',
	'the partition being created in flight is not there half-made');

is(scalar_query('SELECT cdp.process_inbox()'), '51', 'the rest is processed after restart');
is(scalar_query('SELECT count(*) FROM cdp.events'), '101', 'every acknowledged message stored');
is(scalar_query('SELECT count(DISTINCT message_id) FROM cdp.events'), '101', 'none stored twice');
is(scalar_query('SELECT count(*) FROM cdp.dead_letters'), '0', 'nothing dead-lettered');
is(scalar_query(q{SELECT count(*) FROM cdp.partitions WHERE range_from < '2010-01-01'}), '1',
	'the backfill partition is created after restart');

# a retry after the crash (same messageIds) is recognised as duplicate
scalar_query(q{
	SELECT cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'u' || i,
		'event', 'Order Completed', 'messageId', 'msg-' || i))
	FROM generate_series(1, 10) i});
scalar_query('SELECT cdp.process_inbox()');
is(scalar_query('SELECT count(*) FROM cdp.events'), '101', 'SDK retries after the crash deduplicated');

$node->stop;
done_testing();
