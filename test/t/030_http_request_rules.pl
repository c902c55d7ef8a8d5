# What the HTTP endpoint accepts agrees with what the pipeline then stores:
# a single call carrying "batch" is refused instead of being read as an
# envelope, "type": null gets the path's type, a single call at the size
# limit without its type is refused, several gzip members decode whole, a
# batch item holding \u0000 is dead-lettered alone, a repeated "batch"
# counts the last one, the write key never comes from an array item, and an
# error message stays valid UTF-8.  Each of these went wrong once (the HTTP
# request fuzzer found them); this checks them through a running server.
use strict;
use warnings;
use HTTP::Tiny;
use IO::Compress::Gzip qw(gzip $GzipError);
use IO::Socket::INET;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = PostgreSQL::Test::Cluster->new('http_rules');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'cdp'
cdp.http_port = $port
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE cdp');
$node->safe_psql('cdp', 'CREATE EXTENSION pg_cdp');
my $key = $node->safe_psql('cdp', q{SELECT cdp.create_source('web')});

my $http = HTTP::Tiny->new(timeout => 30);
my $base = "http://127.0.0.1:$port";
my $auth = 'Basic ' . encode_base64("$key:", '');

sub post
{
	my ($path, $body, %headers) = @_;
	$headers{'Authorization'} //= $auth;
	delete $headers{'Authorization'} if $headers{'Authorization'} eq '';
	return $http->post("$base$path", { content => $body, headers => \%headers });
}

sub count { return $node->safe_psql('cdp', $_[0]); }

# everything queued has been stored or dead-lettered
sub drained
{
	ok($node->poll_query_until('cdp', 'SELECT count(*) FROM cdp.inbox', '0'),
		'the inbox drains');
}

sub accepted_total
{
	my $m = $http->get("$base/metrics")->{content};
	return $m =~ /^cdp_http_events_accepted_total (\d+)$/m ? $1 : -1;
}

my $up = 0;
for (1 .. 300)
{
	my $r = $http->get("$base/health");
	if ($r->{status} == 200) { $up = 1; last; }
	select(undef, undef, undef, 0.1);
}
ok($up, 'the endpoint answers /health');

# a single call carrying "batch": the pipeline would store the items instead
my $r = post('/v1/track',
	'{"userId":"u-b","event":"e","batch":[{"type":"identify","userId":"someone-else"}]}');
is($r->{status}, 400, 'a track call carrying "batch" is refused');
like($r->{content}, qr/"error":"invalid_field_type"/, '... as invalid_field_type');

# "type": null: the path's type wins
$r = post('/v1/track', '{"type":null,"userId":"u-null","event":"Null Type","messageId":"null-1"}');
is($r->{status}, 200, 'a track call with "type": null is accepted');

# at cdp.max_event_bytes without "type": over it once the type is added
my $at_limit = '{"userId":"u-limit","event":"e","properties":{"p":"%s"}}';
$at_limit = sprintf($at_limit, 'x' x (32768 - length(sprintf($at_limit, ''))));
is(length($at_limit), 32768, 'a call of exactly cdp.max_event_bytes');
$r = post('/v1/track', $at_limit);
is($r->{status}, 400, 'is refused when its type would take it over');
like($r->{content}, qr/"error":"too_large"/, '... as too_large');

# two gzip members
my ($one, $two);
gzip(\'{"batch":[{"type":"track","userId":"u-gz","event":"e","messageId":"gz-1"},', \$one)
  or die $GzipError;
gzip(\'{"type":"track","userId":"u-gz","event":"e","messageId":"gz-2"}]}', \$two)
  or die $GzipError;
$r = post('/v1/batch', $one . $two, 'Content-Encoding' => 'gzip');
is($r->{status}, 200, 'a body of two gzip members is accepted');

# an item with \u0000 beside a good one
$r = post('/v1/batch', '{"batch":[{"type":"track","userId":"u-nul","event":"e","messageId":"nul-1"},'
	  . '{"type":"track","userId":"u-nul","event":"a\u0000b","messageId":"nul-2"}]}');
is($r->{status}, 200, 'a batch with an item holding \u0000 is accepted');

# a repeated "batch": the last one is what the pipeline reads
my $before = accepted_total();
$r = post('/v1/batch', '{"batch":[{"type":"track","userId":"u-rep","event":"e","messageId":"rep-1"},'
	  . '{"type":"track","userId":"u-rep","event":"e","messageId":"rep-2"}],'
	  . '"batch":[{"type":"track","userId":"u-rep","event":"e","messageId":"rep-3"}]}');
is($r->{status}, 200, 'a batch repeating "batch" is accepted');
is(accepted_total() - $before, 1, '... counting the last batch\'s one message');

# the write key of a later item that is an array is not a write key
$r = post('/v1/batch', qq{{"batch":[{"type":"track","userId":"u-k","event":"e","writeKey":{"k":1}},["$key"]]}},
	'Authorization' => '');
is($r->{status}, 401, 'a key in an array item does not authenticate');

# error messages quote a client's text as valid UTF-8
$r = post('/v1/track', '{"type":"x' . ("\xc3\xa9" x 30) . '","userId":"u","event":"e"}');
is($r->{status}, 400, 'a track call naming another type is refused');
my $body = $r->{content};
ok(utf8::decode($body), '... with an answer that is valid UTF-8') or diag($r->{content});

# (HTTP::Tiny refuses to send such a header: a raw request)
my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
  or die "connect: $!";
binmode $sock;
print $sock "POST /v1/batch HTTP/1.1\r\nHost: localhost\r\nAuthorization: $auth\r\n"
  . "Content-Encoding: \xff\xfe\r\nContent-Length: 12\r\nConnection: close\r\n\r\n{\"batch\":[]}";
my $answer = do { local $/; <$sock> };
close $sock;
like($answer, qr{^HTTP/1\.1 400}, 'a Content-Encoding that is not UTF-8 is refused');
$body = $answer =~ /\r\n\r\n(.*)\z/s ? $1 : '';
like($body, qr/"error":"bad_encoding"/, '... as bad_encoding');
ok(utf8::decode($body), '... with an answer that is valid UTF-8') or diag($answer);

drained();
is(count(q{SELECT count(*) FROM cdp.events WHERE user_id = 'someone-else' OR user_id = 'u-b'}),
	'0', 'nothing of the refused call is stored');
is(count(q{SELECT type FROM cdp.events WHERE message_id = 'null-1'}), 'track',
	'the "type": null call is stored as a track');
is(count(q{SELECT count(*) FROM cdp.events WHERE user_id = 'u-limit'}), '0',
	'nothing of the call over the limit is stored');
is(count(q{SELECT string_agg(message_id, ',' ORDER BY message_id) FROM cdp.events WHERE user_id = 'u-gz'}),
	'gz-1,gz-2', 'both gzip members are stored');
is(count(q{SELECT string_agg(message_id, ',') FROM cdp.events WHERE user_id = 'u-nul'}),
	'nul-1', 'the good item beside \u0000 is stored');
is(count(q{SELECT error_code FROM cdp.dead_letters WHERE payload LIKE '%nul-2%'}),
	'null_character', 'the item with \u0000 is dead-lettered alone');
is(count(q{SELECT string_agg(message_id, ',') FROM cdp.events WHERE user_id = 'u-rep'}),
	'rep-3', 'the last "batch" is the one stored');
is(count(q{SELECT count(*) FROM cdp.dead_letters WHERE error_code = 'missing_type'}), '0',
	'no accepted call is dead-lettered for want of a type');

$node->stop;
done_testing();
