# The HTTP endpoint against hostile or broken clients:
# - clients that hang up in the middle of a request (their last bytes and the
#   end of the stream arriving together) give their connection slot back at
#   once, not after cdp.http_idle_timeout, and do not write a log line each;
# - hundreds of small gzip bodies that each inflate to half a megabyte,
#   judged in one round, do not take hundreds of megabytes: what judging a
#   request allocates is freed before the next;
# - a write key that could not be looked up (a lock timeout) is answered
#   503 for every request of the round that brings it, not 401 after the first;
# - Content-Length headers that disagree are refused (request smuggling).
# test/http_soak.py runs these attacks and more for longer.
use strict;
use warnings;

use IO::Compress::Gzip qw(gzip $GzipError);
use IO::Select;
use IO::Socket::INET;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = PostgreSQL::Test::Cluster->new('http_hostile');
my $port = PostgreSQL::Test::Cluster::get_free_port();
$node->init;
# few slots and no timeout that would tidy up after the clients in time
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'postgres'
cdp.http_port = $port
cdp.http_max_connections = 16
cdp.http_idle_timeout = 3600
cdp.http_request_timeout = 3600
cdp.ingest_workers = 0
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cdp');
my $key = $node->safe_psql('postgres', q{SELECT cdp.create_source('web')});
my $auth = 'Authorization: Basic ' . encode_base64("$key:", '');

sub connect_http
{
	return IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
		Proto => 'tcp', Timeout => 10);
}

sub request_text
{
	my ($method, $path, $body, @headers) = @_;
	return "$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\n"
	  . join('', map { "$_\r\n" } @headers)
	  . (defined $body ? 'Content-Length: ' . length($body) . "\r\n" : '')
	  . "\r\n" . ($body // '');
}

sub send_all
{
	my ($sock, $text) = @_;
	local $SIG{PIPE} = 'IGNORE';
	my $off = 0;
	while ($off < length $text)
	{
		my $n = syswrite($sock, $text, length($text) - $off, $off);
		return 0 unless $n;
		$off += $n;
	}
	return 1;
}

# the status of the answer on $sock (0 when none came within $secs)
sub status_of
{
	my ($sock, $secs) = @_;
	my $until = time + $secs;
	my $buf = '';
	for (;;)
	{
		return $1 if $buf =~ m{^HTTP/1\.\d (\d{3})};
		my $wait = $until - time;
		return 0 if $wait <= 0 || !IO::Select->new($sock)->can_read($wait);
		return 0 unless sysread($sock, $buf, 4096, length $buf);
	}
}

# one request on a new connection: its status, 0 when not answered in $secs
sub request_status
{
	my ($secs, @request) = @_;
	my $sock = connect_http() or return 0;
	send_all($sock, request_text(@request));
	my $status = status_of($sock, $secs);
	close $sock;
	return $status;
}

sub wait_http
{
	for (1 .. 300)
	{
		return 1 if request_status(5, 'GET', '/health') == 200;
		select(undef, undef, undef, 0.2);
	}
	return 0;
}
ok(wait_http(), 'the endpoint answers');

# --- clients hanging up mid-request: three times the slots there are
my $track = '{"userId":"u","event":"e","messageId":"after-hangups"}';
for my $i (1 .. 48)
{
	my $sock = connect_http() or last;
	# the request's start and the end of the stream, in one packet or two close ones
	send_all($sock, $i % 2 ? "POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"
		: "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{\"batch\":[");
	close $sock;
}
is(request_status(60, 'POST', '/v1/track', $track, $auth), 200,
	'after 48 clients hung up mid-request, with 16 slots, a request is still answered');
# the open connections /metrics counts ('' when it does not answer in 5 s)
sub open_connections
{
	my $sock = connect_http() or return '';
	send_all($sock, request_text('GET', '/metrics', undef, 'Connection: close'));
	my ($text, $until) = ('', time + 5);
	while (IO::Select->new($sock)->can_read($until - time))
	{
		last unless sysread($sock, $text, 65536, length $text);
	}
	close $sock;
	return $text =~ /^cdp_http_connections (\d+)$/m ? $1 : '';
}
my $conns = '';
for (1 .. 50)
{
	$conns = open_connections();
	last if $conns eq '1';
	select(undef, undef, undef, 0.2);
}
is($conns, 1, 'and the hung-up connections are closed: only the one asking is open');

# --- clients hanging up one after another, each seen in its own pass: the
# log gets a line now and then, not one for each
my $log_from = -s $node->logfile;
for my $i (1 .. 100)
{
	my $sock = connect_http() or last;
	send_all($sock, "POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{");
	select(undef, undef, undef, 0.02);
	close $sock;
	select(undef, undef, undef, 0.02);
}
is(request_status(60, 'POST', '/v1/track', $track, $auth), 200, 'a request after 100 more hang-ups');
my $lines = () = substr(slurp_file($node->logfile), $log_from) =~ /pg_cdp http: /g;
cmp_ok($lines, '<', 10, "100 clients hanging up wrote $lines lines to the log, not one each");
unlike(slurp_file($node->logfile), qr/is not the first option/,
	'libmicrohttpd hears of its logger before any other option');

# --- Content-Length headers that disagree: refused, the connection closed,
# nothing queued (two that agree are one)
my $inbox_before = $node->safe_psql('postgres', 'SELECT count(*) FROM cdp.inbox');
my $smuggled = '{"userId":"u","event":"e","messageId":"two-lengths"}';
my $sock = connect_http();
send_all($sock, "POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\n$auth\r\nContent-Length: "
	  . length($smuggled) . "\r\nContent-Length: 5\r\n\r\n$smuggled");
is(status_of($sock, 30), 400, 'two Content-Length headers that disagree are refused 400');
close $sock;
is($node->safe_psql('postgres', 'SELECT count(*) FROM cdp.inbox'), $inbox_before, 'and nothing is queued');
$sock = connect_http();
send_all($sock, "POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\n$auth\r\nContent-Length: "
	  . length($track) . "\r\ncontent-length: " . length($track) . "\r\n\r\n$track");
is(status_of($sock, 30), 200, 'two that agree are taken as one');
close $sock;

# --- a key lookup that fails (a lock timeout) answers 503, and leaves
# nothing behind: the next requests of the round with the same key are not
# refused 401 as if it were unknown (SDKs drop what gets a 4xx)
my $old_pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'});
$node->safe_psql('postgres', q{ALTER DATABASE postgres SET lock_timeout = '1s'});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old_pid)");
$node->poll_query_until('postgres',
	qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_cdp http' AND pid <> $old_pid})
  or die 'the HTTP worker did not come back';
ok(wait_http(), 'the endpoint answers again, its lookups bounded by lock_timeout');
my @four = map { connect_http() or die "cannot connect: $!" } 1 .. 4;
my $sources_locker = $node->background_psql('postgres');
$sources_locker->query_safe('BEGIN; LOCK TABLE cdp.source_keys IN ACCESS EXCLUSIVE MODE');
# the first waits for the lock in a round; the three others arrive meanwhile,
# to be looked up together in the next round
send_all($four[0], request_text('POST', '/v1/track', $track, $auth));
select(undef, undef, undef, 0.3);
send_all($_, request_text('POST', '/v1/track', $track, $auth)) for @four[ 1 .. 3 ];
my @four_status = map { status_of($_, 60) } @four;
$sources_locker->query_safe('COMMIT');
$sources_locker->quit;
is("@four_status", '503 503 503 503',
	'while the key cannot be looked up, each request with it is answered 503 (retry), none 401');
$node->safe_psql('postgres', 'ALTER DATABASE postgres RESET lock_timeout');

# --- many gzip bodies judged in one round
$node->safe_psql('postgres', 'ALTER SYSTEM SET cdp.http_max_connections = 1000');
$node->restart;
ok(wait_http(), 'restarted with 1000 slots');

# half a megabyte of JSON, gzipped to about 8 kB (inflating 64 times, under
# the ratio guard), refused as invalid JSON only at its very end
my $hex = join('', map { sprintf('%08x', int(rand(2**32))) } 1 .. 2048);
my $json = '{"batch":[{"messageId":"' . $hex . '","p":"' . ('x' x 480_000) . '"}]';
gzip(\$json => \my $gz) or die "gzip failed: $GzipError";
note(sprintf('a body of %d bytes inflating to %d', length $gz, length $json));

sub worker_memory
{
	my $pid = $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'});
	open my $fh, '<', "/proc/$pid/status" or return (0, 0);
	my %kb = map { /^(\w+):\s+(\d+)/ ? ($1 => $2) : () } <$fh>;
	return ($kb{VmRSS}, $kb{VmHWM});
}

# the clients connect first; a lock on the inbox holds the worker in a round
# while all of them send, so that the next round judges them together
my $n = 300;
my @socks = map { connect_http() or die "cannot connect: $!" } 1 .. $n;
select(undef, undef, undef, 0.5);
my ($rss_before) = worker_memory();
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE cdp.inbox IN SHARE MODE');
my $first = connect_http();
send_all($first, request_text('POST', '/v1/track', $track, $auth));
$node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_locks WHERE NOT granted AND relation = 'cdp.inbox'::regclass})
  or die 'the round did not wait for the lock';
send_all($_, request_text('POST', '/v1/batch', $gz, $auth, 'Content-Encoding: gzip'))
  for @socks;
$locker->query_safe('COMMIT');
$locker->quit;
is(status_of($first, 60), 200, 'the request that waited for the lock is answered 200');
my %statuses;
$statuses{ status_of($_, 60) }++ for @socks;
is(join(',', map { "$_ x$statuses{$_}" } sort keys %statuses), "400 x$n",
	"each of the $n gzip bodies is refused 400 (invalid JSON) once inflated");
my ($rss, $hwm) = worker_memory();
note("worker memory: VmRSS $rss_before kB before, VmHWM $hwm kB after");
# judged together they would take over 300 MB; one at a time, a few MB
cmp_ok($hwm - $rss_before, '<', 100 * 1024,
	'judging them took less than 100 MB more than before, not a few MB for each');

unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process crashed');
$node->stop;
done_testing();
