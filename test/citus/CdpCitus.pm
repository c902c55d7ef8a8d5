# What the Citus suite's tests share: a coordinator and two workers with
# Citus and pg_cdp preloaded (Citus first), the workers added to the
# coordinator's metadata, and pg_cdp installed on the coordinator (Citus
# propagates it to the workers).  One cluster per test file keeps the suite
# fast.
package CdpCitus;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

our @EXPORT = qw(start_citus_cluster stop_citus_cluster on_shards);

# Settings every node gets: TCP on loopback (Citus connects between nodes by
# host name), few shards per table (each partition of cdp.events has
# citus.shard_count shards), no TLS between nodes.
my $common_conf = q{
shared_preload_libraries = 'citus,pg_cdp'
listen_addresses = '127.0.0.1'
max_worker_processes = 32
max_connections = 100
citus.shard_count = 4
citus.node_conninfo = 'sslmode=disable'
cdp.database_name = 'cdp'
};

# A worker node stores shards only: no pg_cdp background workers there (they
# would stand down by themselves; $opts->{worker_conf} can leave them on).
my $worker_conf = q{
cdp.ingest_workers = 0
cdp.maintenance_interval = 0
};

# Start a coordinator and two workers named after $name.  $opts->{coordinator_conf}
# is appended to the coordinator's postgresql.conf (e.g. cdp.ingest_workers);
# by default the coordinator runs no pg_cdp background workers either, so a
# test calls cdp.process_inbox() itself.  $opts->{worker_conf} replaces the
# workers' pg_cdp settings.  Returns a hash: coordinator,
# workers (array ref), sql (a closure running SQL on the coordinator's cdp).
sub start_citus_cluster
{
	my ($name, $opts) = @_;
	$opts //= {};
	my $coordinator_conf = $opts->{coordinator_conf} // $worker_conf;
	my $workers_conf = $opts->{worker_conf} // $worker_conf;

	my @nodes;
	for my $role ('coord', 'w1', 'w2')
	{
		my $node = PostgreSQL::Test::Cluster->new("${name}_$role");
		$node->init(allows_streaming => 0);
		$node->append_conf('postgresql.conf', $common_conf
			  . ($role eq 'coord' ? $coordinator_conf : $workers_conf));
		$node->start;
		$node->safe_psql('postgres', 'CREATE DATABASE cdp');
		$node->safe_psql('cdp', 'CREATE EXTENSION citus');
		push @nodes, $node;
	}
	my ($coord, @workers) = @nodes;

	$coord->safe_psql('cdp',
		"SELECT citus_set_coordinator_host('127.0.0.1', " . $coord->port . ")");
	for my $w (@workers)
	{
		$coord->safe_psql('cdp',
			"SELECT citus_add_node('127.0.0.1', " . $w->port . ")");
	}
	$coord->safe_psql('cdp', 'CREATE EXTENSION pg_cdp');

	return {
		coordinator => $coord,
		workers => \@workers,
		sql => sub { return $coord->safe_psql('cdp', $_[0]); },
	};
}

# Stop every node of a cluster from start_citus_cluster.
sub stop_citus_cluster
{
	my ($cluster) = @_;
	$_->stop for @{ $cluster->{workers} };
	$cluster->{coordinator}->stop;
}

# The rows the shards of a distributed table (and of its partitions) hold,
# summed over the workers, counted on each worker directly rather than
# through the coordinator.
sub on_shards
{
	my ($cluster, $table) = @_;
	my $total = 0;
	for my $w (@{ $cluster->{workers} })
	{
		my $port = $w->port;
		my $shards = $cluster->{coordinator}->safe_psql('cdp', qq{
			SELECT string_agg('SELECT count(*) FROM ' || s.shard_name, ' UNION ALL ')
			  FROM citus_shards s
			 WHERE s.nodeport = $port
			   AND (s.table_name = '$table'::regclass
			        OR s.table_name IN (SELECT relid FROM pg_partition_tree('$table')))});
		next if $shards eq '';
		$total += $w->safe_psql('cdp', "SELECT coalesce(sum(count), 0) FROM ($shards) s");
	}
	return $total;
}

1;
