# The statements cdp.process_inbox() runs are never JIT-compiled with the
# server's default JIT settings.  Identity resolution plans its statements
# with scans disabled; a statement with no index to use instead (the
# identity clock's one-row update) then cost more than the JIT thresholds,
# and compiling it took 0.1 to 0.3 s on every batch that took the identity
# lock.  pg_stat_statements, tracking nested statements, counts the
# functions JIT compiled for each.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('nojit');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
jit = on
});
$node->start;

if ($node->safe_psql('postgres', 'SELECT pg_jit_available()') ne 't')
{
	plan skip_all => 'JIT is not available in this server';
}

$node->safe_psql('postgres', 'CREATE EXTENSION pg_cdp');
$node->safe_psql('postgres', 'CREATE EXTENSION pg_stat_statements');

# new visitors in two batches, then known ones: batches that take the
# identity lock and batches that do not
$node->safe_psql('postgres', q{
	SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'e', 'messageId', 'm-' || i,
	                                     'anonymousId', 'a-' || (i % 6), 'userId', 'u-' || (i % 3),
	                                     'timestamp', now()))
	  FROM generate_series(1, 12) AS i;
});
$node->safe_psql('postgres', 'SELECT pg_stat_statements_reset()');
is( $node->safe_psql('postgres', 'SET cdp.batch_size = 4; SELECT cdp.process_inbox()'),
	'12', 'process_inbox takes the twelve messages');
cmp_ok(
	$node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_statements WHERE query LIKE '%identity_clock%'"),
	'>', 0, 'the identity lock was taken');
is( $node->safe_psql('postgres', q{
		SELECT coalesce(string_agg(left(query, 60) || ': ' || jit_functions, '; '), 'none')
		  FROM pg_stat_statements WHERE jit_functions > 0}),
	'none', 'no statement was JIT-compiled');

$node->stop;
done_testing();
