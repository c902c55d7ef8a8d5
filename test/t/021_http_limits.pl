# The HTTP endpoint's bounds: a request over cdp.max_request_bytes is
# refused from its Content-Length before its body is sent, and when chunked
# as soon as it outgrows the limit; a gzip bomb is refused without the
# worker growing; corrupt gzip is refused; a full inbox answers 429 with
# when to come back.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use CdpHttp;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IO::Socket::INET;
use Test::More;
use Time::HiRes qw(time);

my ($node, $port) = start_http_node('http_limits');
sub sql { return $node->safe_psql('postgres', $_[0]); }

my $key = sql(q{SELECT cdp.create_source('web')});
my $auth = basic("$key:");
my $limit = 512 * 1024;
is(sql(q{SELECT setting FROM pg_settings WHERE name = 'cdp.max_request_bytes'}), $limit,
	'cdp.max_request_bytes is 512kB');

# a batch of exactly $size bytes (items of 20kB, padded with spaces)
sub batch_of
{
	my ($size, $tag) = @_;
	my @items = map { { type => 'track', userId => 'u1', event => 'Big', messageId => "$tag-$_",
		properties => { blob => 'z' x 20000 } } } 1 .. int(($size - 200) / 20100);
	my $body = encode_json({ batch => \@items });
	die "batch too large" if length($body) > $size;
	return $body . (' ' x ($size - length($body)));
}

# --- Content-Length at and over the limit
my $r = http_request($port, 'POST', '/v1/batch', batch_of($limit, 'at-limit'), $auth);
is(error_of($r), '200 true -', 'a batch of exactly cdp.max_request_bytes: 200');
$r = http_request($port, 'POST', '/v1/batch', batch_of($limit + 1, 'over-limit'), $auth);
is(error_of($r), '400 false too_large', 'one byte more: 400 too_large');

# headers announcing a huge body, and no body: the answer comes without it
my $sock = http_connect($port);
send_request($sock, 'POST', '/v1/batch', undef, $auth, 'Content-Length: 1000000000');
$r = read_response($sock, 20);
is(error_of($r), '400 false too_large',
	'Content-Length of 1 GB: 400 too_large before any of the body is sent');
close $sock;

# a single call announcing more than cdp.max_event_bytes: the same, at once
$sock = http_connect($port);
send_request($sock, 'POST', '/v1/track', undef, $auth, 'Content-Length: 100000');
$r = read_response($sock, 20);
is(error_of($r), '400 false too_large',
	'a single call with Content-Length over 32kB: 400 too_large before its body is sent');
close $sock;

# chunked: under the limit stored, over it refused
sub send_chunked
{
	my ($body, $chunk) = @_;
	my $s = http_connect($port);
	send_request($s, 'POST', '/v1/batch', undef, $auth, 'Transfer-Encoding: chunked');
	local $SIG{PIPE} = 'IGNORE';
	for (my $off = 0; $off < length $body; $off += $chunk)
	{
		my $piece = substr($body, $off, $chunk);
		last unless syswrite($s, sprintf("%x\r\n", length $piece) . $piece . "\r\n");
	}
	syswrite($s, "0\r\n\r\n");
	my $answer = read_response($s, 30);
	close $s;
	return $answer;
}
is(error_of(send_chunked(batch_of(100_000, 'chunked-small'), 16384)), '200 true -',
	'a chunked batch under the limit: 200');
is(error_of(send_chunked(batch_of($limit + 50_000, 'chunked-big'), 65536)),
	'400 false too_large', 'a chunked batch over the limit: 400 too_large');

# headers are bounded too
$r = http_request($port, 'POST', '/v1/track', '{}', $auth, 'X-Big: ' . ('h' x 65536));
like($r->{status}, qr/^4\d\d$/, "a 64kB header: refused ($r->{status})");
$r = http_request($port, 'POST', '/v1/track', '{}', $auth, map { "X-Header-$_: v" } 1 .. 5000);
like($r->{status}, qr/^4\d\d$/, "5000 headers: refused ($r->{status})");
$r = http_request($port, 'POST', '/v1/' . ('x' x 100000), '{}', $auth);
like($r->{status}, qr/^4\d\d$/, "a path of 100kB: refused ($r->{status})");

# --- gzip
sub http_worker_peak_kb
{
	my $pid = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'});
	my $status = slurp_file("/proc/$pid/status");
	return $status =~ /^VmHWM:\s+(\d+) kB/m ? $1 : die "no VmHWM for $pid";
}
my $peak_before = http_worker_peak_kb();
my $bomb = gzipped('{"batch": [' . ("\0" x 20_000_000));
cmp_ok(length($bomb), '<', 100_000, 'a gzip bomb: 20 MB in under 100 kB');
$r = http_request($port, 'POST', '/v1/batch', $bomb, $auth, 'Content-Encoding: gzip');
is(error_of($r), '400 false too_large', 'a gzip bomb: 400 too_large');
my $growth = http_worker_peak_kb() - $peak_before;
cmp_ok($growth, '<', 8 * 1024, 'the HTTP worker did not grow by the bomb\'s size')
  or diag("peak RSS grew by $growth kB");
my $zipped_big = gzipped(encode_json({ userId => 'u1', event => 'Zipped', messageId => 'gz-big',
	properties => { blob => 'q' x 40000 } }));
cmp_ok(length($zipped_big), '<', 2000, 'a single call of 40kB gzips to under 2kB');
is(error_of(http_request($port, 'POST', '/v1/track', $zipped_big, $auth, 'Content-Encoding: gzip')),
	'400 false too_large', 'and is refused once inflated: 400 too_large');
my $gz = gzipped(encode_json({ userId => 'u1', event => 'Zipped', messageId => 'gz-ok' }));
is(error_of(http_request($port, 'POST', '/v1/track', $gz, $auth, 'Content-Encoding: gzip')),
	'200 true -', 'after the bomb, a gzipped call: 200');
is(error_of(http_request($port, 'POST', '/v1/track', 'this is not gzip at all', $auth,
	'Content-Encoding: gzip')), '400 false bad_encoding', 'a body that is not gzip: 400 bad_encoding');
is(error_of(http_request($port, 'POST', '/v1/track', substr($gz, 0, length($gz) - 12), $auth,
	'Content-Encoding: gzip')), '400 false bad_encoding', 'a truncated gzip body: 400 bad_encoding');
my $flipped = $gz;
substr($flipped, 12, 4) = "\xff\xff\xff\xff";
is(error_of(http_request($port, 'POST', '/v1/track', $flipped, $auth, 'Content-Encoding: gzip')),
	'400 false bad_encoding', 'a gzip body with damaged bytes: 400 bad_encoding');
is(error_of(http_request($port, 'POST', '/v1/track', $gz, $auth, 'Content-Encoding: br')),
	'400 false bad_encoding', 'Content-Encoding: br: 400 bad_encoding');
ok(wait_drained($node), 'the inbox drains');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'at-limit-%'}),
	int(($limit - 200) / 20100), 'the batch at the limit is stored whole');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'chunked-small-%'}),
	int((100_000 - 200) / 20100), 'the small chunked batch is stored');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'over-limit-%'
	OR message_id LIKE 'chunked-big-%' OR message_id = 'gz-big'}), '0',
	'nothing of the refused requests is stored');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id = 'gz-ok'}), '1',
	'the gzipped call is stored');

# --- a full inbox: 429 with Retry-After and X-RateLimit-Reset
sql('ALTER SYSTEM SET cdp.ingest_workers = 0');
sql('ALTER SYSTEM SET cdp.max_inbox_depth = 3');
sql('SELECT pg_reload_conf()');
ok($node->poll_query_until('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cdp ingest worker'}, '0'),
	'the ingest workers stop');
# the HTTP worker takes the bound at its next reload: wait until it refuses
my $n = 0;
$n++ while $n < 200
  && post($port, '/v1/track', { userId => 'u1', event => 'Fill', messageId => "fill-$n" },
	key => $key)->{status} == 200;
cmp_ok($n, '<', 200, 'the HTTP worker takes the bound');
sql('SELECT cdp.process_inbox()');
is(sql('SELECT count(*) FROM cdp.inbox'), '0', 'inbox emptied');
my @statuses = map { post($port, '/v1/track', { userId => 'u1', event => 'Full',
	messageId => "full-$_" }, key => $key)->{status} } 1 .. 3;
is("@statuses", '200 200 200', 'three messages fit in an inbox of depth 3');
my $sent_at = time;
$r = post($port, '/v1/track', { userId => 'u1', event => 'Full', messageId => 'full-4' },
	key => $key);
is(error_of($r), '429 false inbox_full', 'the fourth: 429 inbox_full');
like($r->{headers}{'retry-after'} // '', qr/^[1-9]\d*$/, 'with Retry-After in seconds');
like($r->{headers}{'x-ratelimit-reset'} // '', qr/^\d{13}$/,
	'and X-RateLimit-Reset in epoch milliseconds');
cmp_ok($r->{headers}{'x-ratelimit-reset'} // 0, '>', $sent_at * 1000,
	'X-RateLimit-Reset is in the future');
cmp_ok($r->{headers}{'x-ratelimit-reset'} // 0, '<=', (time + 3600) * 1000,
	'but not far off');
$r = post($port, '/v1/batch', { batch => [ { type => 'track', userId => 'u1', event => 'Full',
	messageId => 'full-batch' } ] }, key => $key);
is(error_of($r), '429 false inbox_full', 'a batch: 429 inbox_full too');
is(sql(q{SELECT string_agg(payload::jsonb->>'messageId', ',' ORDER BY id) FROM cdp.inbox}),
	'full-1,full-2,full-3', 'the inbox holds what was acknowledged, nothing refused');
sql('SELECT cdp.process_inbox()');
is(error_of(post($port, '/v1/track', { userId => 'u1', event => 'Full', messageId => 'full-5' },
	key => $key)), '200 true -', 'once processed, a message is accepted again');
sql('SELECT cdp.process_inbox()');
# twenty at once, answered together: the bound holds among them
my @socks = map { http_connect($port) } 1 .. 20;
send_request($socks[$_], 'POST', '/v1/track', track_body("together-$_"), $auth) for 0 .. $#socks;
my %count;
$count{ read_response($_, 30)->{status} }++ for @socks;
is(join(' ', map { "$_:$count{$_}" } sort keys %count), '200:3 429:17',
	'twenty requests at once into an inbox of depth 3: three 200, the rest 429');
is(sql('SELECT count(*) FROM cdp.inbox'), '3', 'the inbox holds three');
sql('SELECT cdp.process_inbox()');

sql('ALTER SYSTEM RESET cdp.ingest_workers');
sql('ALTER SYSTEM RESET cdp.max_inbox_depth');
sql('SELECT pg_reload_conf()');
ok(wait_drained($node), 'with the workers back the inbox drains');
is(sql(q{SELECT string_agg(message_id, ',' ORDER BY message_id) FROM cdp.events
	WHERE message_id LIKE 'full-%'}), 'full-1,full-2,full-3,full-5',
	'every acknowledged message is stored, no refused one');
is(http_request($port, 'GET', '/health', undef)->{status}, 200, 'the endpoint is healthy');

# --- thousands of requests, good and bad, leave the worker's own memory as
# it was (requests are freed when answered, rounds reset)
sub http_worker_anon_kb
{
	my $pid = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'});
	my $status = slurp_file("/proc/$pid/status");
	return $status =~ /^RssAnon:\s+(\d+) kB/m ? $1 : die "no RssAnon for $pid";
}
sub mixed_requests
{
	my ($n, $tag) = @_;
	my %statuses;
	for my $i (1 .. $n)
	{
		my @kind = (
			[ '/v1/track', track_body("$tag-$i") ],
			[ '/v1/track', '{"userId": "u1", "event": ' ],
			[ '/v1/batch', encode_json({ batch => [ map { { type => 'track', userId => 'u1',
				event => 'Mixed', messageId => "$tag-$i-$_", properties => { x => 'y' x 500 } } }
				1 .. 20 ] }) ],
			[ '/v1/track', gzipped(track_body("$tag-gz-$i")), 'Content-Encoding: gzip' ]);
		my ($path, $body, @headers) = @{ $kind[ $i % 4 ] };
		$statuses{ http_request($port, 'POST', $path, $body, $auth, @headers)->{status} }++;
	}
	sql('TRUNCATE cdp.inbox');
	return join(' ', map { "$_:$statuses{$_}" } sort keys %statuses);
}
mixed_requests(200, 'warm');
my $anon_before = http_worker_anon_kb();
is(mixed_requests(1200, 'many'), '200:900 400:300', 'twelve hundred requests, a quarter bad');
my $anon_growth = http_worker_anon_kb() - $anon_before;
cmp_ok($anon_growth, '<', 1024, 'the HTTP worker\'s private memory did not grow with them')
  or diag("RssAnon grew by $anon_growth kB");

# --- the port taken: the worker says so, and listens once it is free
$node->stop;
my $squatter = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
	Listen => 5, ReuseAddr => 1) or die "cannot take port $port: $!";
my $log_offset = -s $node->logfile;
$node->start;
ok($node->wait_for_log(qr/pg_cdp http: cannot listen on 127\.0\.0\.1 port $port/, $log_offset),
	'with its port taken the worker logs that it cannot listen');
close $squatter;
ok(wait_http($port), 'once the port is free it listens');
is(error_of(post($port, '/v1/track', { userId => 'u1', event => 'Late', messageId => 'late' },
	key => $key)), '200 true -', 'and acknowledges a message');

$node->stop;
done_testing();
