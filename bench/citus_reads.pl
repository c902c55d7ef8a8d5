# bench/citus_reads's measurement (see bench/citus_reads): a person's latest
# events in three query shapes, on a single node and on Citus by two columns.
use strict;
use warnings;
use CdpCitus;
use Test::More;

Test::More->builder->no_ending(1);
my $out = Test::More->builder->output;
sub say_ { print $out @_; }

my ($people, $queries, $shards) = ($ENV{PEOPLE}, $ENV{QUERIES}, $ENV{SHARDS});
my $c = start_citus_cluster('bench_reads');
my $coord = $c->{coordinator};
$coord->safe_psql('postgres', 'CREATE DATABASE cdp_local');
$coord->safe_psql('cdp_local', 'CREATE EXTENSION pg_cdp');
# a second Citus database, distributed by message_id
for my $node ($coord, @{ $c->{workers} })
{
	$node->safe_psql('postgres', 'CREATE DATABASE cdp_msg');
	$node->safe_psql('cdp_msg', 'CREATE EXTENSION citus');
}
$coord->safe_psql('cdp_msg', "SELECT citus_set_coordinator_host('127.0.0.1', " . $coord->port . ")");
$coord->safe_psql('cdp_msg', "SELECT citus_add_node('127.0.0.1', " . $_->port . ")") for @{ $c->{workers} };
$coord->safe_psql('cdp_msg', 'CREATE EXTENSION pg_cdp');

# each person k: devices A<k> and B<k>, 25 events each; then identify on A,
# and for even k on B too, which merges B's profile into A's
my $load = qq{
SET client_min_messages = warning;
INSERT INTO cdp.inbox (payload, source)
SELECT format('{"type":"track","anonymousId":"%s%s","event":"E%s","properties":{"i":%s},"timestamp":"%s","messageId":"%s%s-%s"}',
              d, k, j % 5, j,
              to_char(date_trunc('day', now()) - interval '20 days' + (j * 11 + k % 97) * interval '37 minutes', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
              d, k, j), 'sql'
  FROM generate_series(0, $people - 1) k, generate_series(1, 25) j, unnest(ARRAY['A', 'B']) d;
SELECT cdp.process_inbox();
INSERT INTO cdp.inbox (payload, source)
SELECT format('{"type":"identify","userId":"u%s","anonymousId":"%s%s","messageId":"i%s%s"}',
              k, d, k, d, k), 'sql'
  FROM generate_series(0, $people - 1) k, unnest(ARRAY['A', 'B']) d
 WHERE d = 'A' OR k % 2 = 0;
SELECT cdp.process_inbox();
ANALYZE;
};
$coord->safe_psql($_, $load) for ('cdp', 'cdp_msg', 'cdp_local');
say_($coord->safe_psql('cdp_local', q{
	SELECT format('events: %s, canonical profiles: %s, merged-away profiles: %s, partitions: %s',
	              (SELECT count(*) FROM cdp.events), (SELECT count(*) FROM cdp.profiles),
	              (SELECT count(*) FROM cdp.profile_records WHERE merged_into IS NOT NULL),
	              (SELECT count(*) FROM cdp.partitions))}) . "\n");

my %shape = (
	R => q{SELECT message_id, ts FROM cdp.events_resolved
	        WHERE profile_id = cdp.resolve(cdp.identifier('user_id', 'u' || :k))
	        ORDER BY ts DESC LIMIT 100;},
	S => q{SELECT message_id, ts FROM cdp.events
	        WHERE profile_id IN (SELECT p.profile_id FROM cdp.profile_records p
	                              WHERE p.profile_id = cdp.resolve(cdp.identifier('user_id', 'u' || :k))
	                                 OR p.merged_into = cdp.resolve(cdp.identifier('user_id', 'u' || :k)))
	        ORDER BY ts DESC LIMIT 100;},
	A => q{SELECT '''' || array_agg(p.profile_id)::text || '''' AS ids FROM cdp.profile_records p
	        WHERE p.profile_id = cdp.resolve(cdp.identifier('user_id', 'u' || :k))
	           OR p.merged_into = cdp.resolve(cdp.identifier('user_id', 'u' || :k)) \gset
	       SELECT message_id, ts FROM cdp.events WHERE profile_id = ANY (:ids::bigint[]) ORDER BY ts DESC LIMIT 100;});
my @shapes = ('R', 'S', 'A');
for my $s (@shapes)
{
	my $sql = $shape{$s};
	$sql =~ s/\n\s+/ /g;
	$sql =~ s/ \\gset / \\gset\n/;
	open my $fh, '>', "$ENV{TESTDIR}/$s.sql" or die;
	print $fh "\\set k random(0, " . ($people - 1) . ")\n$sql\n";
	close $fh;
}

# the same events whatever the layout: ten people's timelines
sub digest
{
	my ($db) = @_;
	return join(';', map {
		$coord->safe_psql($db, qq{
			SELECT string_agg(message_id, ',' ORDER BY ts DESC, message_id)
			  FROM (SELECT message_id, ts FROM cdp.events_resolved
			         WHERE profile_id = cdp.resolve(cdp.identifier('user_id', 'u$_'))
			         ORDER BY ts DESC, message_id LIMIT 100) t}) } 0 .. 9);
}

sub latency_ms
{
	my ($db, $s) = @_;
	my $res = `pgbench -n -f $ENV{TESTDIR}/$s.sql -t $queries -h ${\ $coord->host} -p ${\ $coord->port} $db 2>&1`;
	$res =~ /latency average = ([\d.]+) ms/ or die "pgbench failed: $res";
	return $1;
}

my %ms;
my $single = digest('cdp_local');
$ms{single}{$_} = latency_ms('cdp_local', $_) for @shapes;
$coord->safe_psql('cdp', "SET citus.shard_count = $shards; SELECT cdp.distribute('profile_id')");
is(digest('cdp'), $single, 'by profile_id: the same events');
$ms{profile_id}{$_} = latency_ms('cdp', $_) for @shapes;
$coord->safe_psql('cdp_msg', "SET citus.shard_count = $shards; SELECT cdp.distribute('message_id')");
is(digest('cdp_msg'), $single, 'by message_id: the same events');
$ms{message_id}{$_} = latency_ms('cdp_msg', $_) for @shapes;

say_(sprintf("latest 100 events of a random person, average ms over %d queries, %d shards\n", $queries, $shards));
say_(sprintf("%-6s %10s %12s %12s %14s %14s\n", 'shape', 'single', 'profile_id', 'message_id',
	'profile_id/1', 'message_id/1'));
for my $s (@shapes)
{
	say_(sprintf("%-6s %10.2f %12.2f %12.2f %13.1fx %13.1fx\n", $s, $ms{single}{$s},
		$ms{profile_id}{$s}, $ms{message_id}{$s},
		$ms{profile_id}{$s} / $ms{single}{$s}, $ms{message_id}{$s} / $ms{single}{$s}));
}
stop_citus_cluster($c);
done_testing();
