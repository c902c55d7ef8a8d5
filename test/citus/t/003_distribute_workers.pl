# cdp.distribute() moves cdp.events and the events already stored to the
# workers' shards (an event without a profile gets profile 0), refuses off
# the coordinator, and does nothing the second time.  Then what the ingest
# workers store, from cdp.ingest and from the HTTP endpoint, reaches the
# shards too, two workers storing side by side.  pg_cdp's own background
# workers stand down on the Citus worker nodes, whatever their settings ask.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/..";
use CdpCitus;
use IO::Socket::INET;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $http_port = PostgreSQL::Test::Cluster::get_free_port();
my $worker_http_port = PostgreSQL::Test::Cluster::get_free_port();
my $c = start_citus_cluster('workers', { coordinator_conf => qq{
cdp.ingest_workers = 2
cdp.maintenance_interval = 0
cdp.http_port = $http_port
}, worker_conf => qq{
cdp.ingest_workers = 2
cdp.maintenance_interval = 1
cdp.http_port = $worker_http_port
} });
my $sql = $c->{sql};
my $coord = $c->{coordinator};
my ($w1) = @{ $c->{workers} };

my $local_bytes = q{SELECT sum(pg_relation_size(relid))
	  FROM pg_partition_tree('cdp.events') WHERE isleaf};

sub wait_for
{
	my ($query, $expected, $what) = @_;
	ok($coord->poll_query_until('cdp', $query, $expected), $what)
	  or diag('last: ' . $sql->($query));
}

# before distribution: the workers store locally, one event without a profile
$sql->(q{SELECT cdp.block_identifier('anonymous_id', 'anon-blocked')});
$sql->(q{SELECT cdp.ingest(jsonb_build_object('batch', (
	SELECT jsonb_agg(jsonb_build_object('type', 'track', 'event', 'Before',
	         'userId', 'u' || (i % 5), 'messageId', 'before-' || i))
	  FROM generate_series(1, 20) i) || '[{"type": "track", "event": "Before",
	  "anonymousId": "anon-blocked", "messageId": "before-anon"}]'::jsonb))});
wait_for(q{SELECT count(*) FROM cdp.events}, '21', 'the ingest worker stores locally');
is($sql->(q{SELECT profile_id IS NULL FROM cdp.events WHERE message_id = 'before-anon'}), 't',
	'undistributed, an event without a profile has profile_id NULL');

# off the coordinator
my ($rc, $out, $err) = $w1->psql('cdp', 'SELECT cdp.distribute()');
like($err, qr/must run on the Citus coordinator/, 'cdp.distribute() on a worker is refused');
($rc, $out, $err) = $w1->psql('cdp', q{DO $$ BEGIN PERFORM cdp.distribute();
	EXCEPTION WHEN object_not_in_prerequisite_state THEN RAISE NOTICE 'sqlstate 55000'; END $$});
like($err, qr/sqlstate 55000/, 'with SQLSTATE 55000');

# a batch in flight, stored locally and not yet committed, with an event
# without a profile: cdp.distribute() waits for it, and moves it too
my $batch = $coord->background_psql('cdp');
$batch->query_safe('BEGIN');
$batch->query_safe(q{SELECT cdp.ingest('{"batch": [
	{"type": "track", "event": "In Flight", "userId": "f1", "messageId": "flight-1"},
	{"type": "track", "event": "In Flight", "anonymousId": "anon-blocked", "messageId": "flight-2"}]}')});
is($batch->query_safe('SELECT cdp.process_inbox()'), '2', 'a batch in flight stores two events');
my $distribute = $coord->background_psql('cdp');
$distribute->query_until(qr/started/, q{\echo started
SELECT cdp.distribute();
\echo distributed
});
ok($coord->poll_query_until('cdp', q{SELECT count(*) FROM pg_stat_activity
	WHERE query LIKE 'SELECT cdp.distribute()%' AND wait_event_type = 'Lock'}, '1'),
	'cdp.distribute() waits for the batch in flight');
$batch->query_safe('COMMIT');
$batch->quit;
like($distribute->query_until(qr/distributed/, ''), qr/^t$/m,
	'cdp.distribute() distributes cdp.events once it committed');
$distribute->quit;
is($sql->(q{SELECT column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition
	WHERE logicalrelid = 'cdp.events'::regclass}), 'profile_id', 'by profile_id');
is($sql->('SELECT count(*) FROM cdp.events'), '23', 'the events stored before are all there');
is(on_shards($c, 'cdp.events'), 23, 'on the workers\' shards');
is($coord->safe_psql('cdp', $local_bytes), '0', 'and no longer in the coordinator\'s partitions');
is($sql->(q{SELECT string_agg(message_id, ',' ORDER BY message_id) FROM cdp.events
	WHERE profile_id = 0}), 'before-anon,flight-2',
	'the events without a profile got profile 0, the one in flight too');
is($sql->('SELECT cdp.distribute()'), 'f', 'a second cdp.distribute() has nothing to do');
($rc, $out, $err) = $coord->psql('cdp', q{SELECT cdp.distribute('anonymous_id')});
like($err, qr/already distributed by profile_id/, 'nor does another distribution column');

# the ingest workers store through Citus
$sql->(q{SELECT count(cdp.ingest(jsonb_build_object('batch', (
	SELECT jsonb_agg(jsonb_build_object('type', 'track', 'event', 'After',
	         'userId', 'u' || (i % 9), 'messageId', 'after-' || b || '-' || i))
	  FROM generate_series(1, 20) i)))) FROM generate_series(1, 10) b});
$sql->(q{SELECT cdp.ingest('{"type": "track", "event": "After", "anonymousId": "anon-blocked",
	"messageId": "after-anon"}')});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'After'}, '201',
	'the ingest worker stores every event through Citus');
is(on_shards($c, 'cdp.events'), 224, 'the shards hold them');
is($sql->(q{SELECT profile_id FROM cdp.events WHERE message_id = 'after-anon'}), '0',
	'the worker stores an event without a profile with profile 0');
is($coord->safe_psql('cdp', $local_bytes), '0', 'the coordinator\'s partitions stay empty');
is($sql->('SELECT count(*) FROM cdp.dead_letters'), '0', 'no dead letter');

# the HTTP endpoint: the request is queued and a worker stores it
my $key = $sql->(q{SELECT cdp.create_source('web')});
my $body = '{"batch": [{"type": "track", "userId": "h1", "event": "Over HTTP", "messageId": "http-1"},'
  . '{"type": "track", "userId": "h2", "event": "Over HTTP", "messageId": "http-2"}]}';
my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $http_port, Timeout => 30)
  or die "cannot connect to the HTTP endpoint: $!";
print $sock "POST /v1/batch HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
  . 'Authorization: Basic ' . encode_base64("$key:", '') . "\r\n"
  . "Content-Type: application/json\r\nContent-Length: " . length($body) . "\r\n\r\n$body";
my $answer = do { local $/; <$sock> };
like($answer, qr{^HTTP/1\.1 200}, 'the HTTP endpoint accepts a batch');
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Over HTTP'}, '2',
	'what arrived over HTTP is stored through Citus');
is(on_shards($c, 'cdp.events'), 226, 'on the shards');
is($coord->safe_psql('cdp', $local_bytes), '0', 'the coordinator\'s partitions stay empty');

# the worker nodes were configured for ingest workers, upkeep and HTTP, but
# hold shards only: the pool stands down there, saying so once
for my $w (@{ $c->{workers} })
{
	my $name = $w->name;
	ok($w->wait_for_log(qr/background workers stand down: this node is a Citus worker/),
		"$name: the launcher says the pool stands down on a worker node");
	is($w->safe_psql('cdp', q{SELECT count(*) FROM pg_stat_activity
		WHERE backend_type IN ('pg_cdp ingest worker', 'pg_cdp maintenance worker', 'pg_cdp http')}),
		'0', "$name: no ingest, maintenance or HTTP worker runs there");
	my $log = slurp_file($w->logfile);
	my $said = () = $log =~ /stand down: this node is a Citus worker/g;
	is($said, 1, "$name: said once");
}
ok(!IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $worker_http_port, Timeout => 5),
	'no HTTP endpoint listens on a worker node');

stop_citus_cluster($c);
done_testing();
