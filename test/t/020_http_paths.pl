# The HTTP endpoint's tracking API, request by request: every path stores
# its message with the type the path names and the source of the write key;
# every way SDKs authenticate and encode a body is accepted; what can never
# be stored is refused with 400 and the reason, while a batch stores its
# good items and dead-letters the bad ones; /health and /metrics.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use CdpHttp;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my ($node, $port) = start_http_node('http_paths');
sub sql { return $node->safe_psql('postgres', $_[0]); }

my $web = sql(q{SELECT cdp.create_source('web')});
my $mobile = sql(q{SELECT cdp.create_source('mobile')});
like($web, qr/^cdp_\w+$/, 'a source and its write key');

# messages acknowledged with 200, as /metrics should count them
my $accepted = 0;

sub send_ok
{
	my ($path, $msg, $what, %o) = @_;
	my $r = post($port, $path, $msg, %o);
	is(error_of($r), '200 true -', "$what: 200 {\"success\":true}")
	  or diag($r->{body});
	if ($r->{status} == 200)
	{
		my $m = ref $msg ? $msg : decode_json($msg);
		$accepted += $path =~ m{^/v1/(batch|b|import)$} ? scalar @{ $m->{batch} } : 1;
	}
	return $r;
}

sub refused
{
	my ($path, $msg, $expected, $what, %o) = @_;
	my $r = post($port, $path, $msg, %o);
	is(error_of($r), $expected, "$what: $expected") or diag($r->{body});
	return $r;
}

# what is stored of a message: "type source", or '' when nothing
sub stored
{
	my ($id) = @_;
	return sql(qq{SELECT string_agg(type || ' ' || source, ',') FROM cdp.events
		WHERE message_id = '$id'});
}

# --- every path; "type" comes from the path
my %single = (
	track => { userId => 'u1', event => 'Clicked' },
	identify => { userId => 'u1', traits => { plan => 'pro' } },
	page => { anonymousId => 'a1', name => 'Home' },
	screen => { userId => 'u1', name => 'Settings' },
	group => { userId => 'u1', groupId => 'g1' },
	alias => { previousId => 'a1', userId => 'u1' });
for my $type (sort keys %single)
{
	my $letter = substr($type, 0, 1);
	send_ok("/v1/$type", { %{ $single{$type} }, messageId => "long-$type" }, "/v1/$type",
		key => $web);
	send_ok("/v1/$letter", { %{ $single{$type} }, messageId => "short-$type" }, "/v1/$letter",
		key => $mobile);
}
for my $path ('/v1/batch', '/v1/b', '/v1/import')
{
	(my $tag = $path) =~ s{/v1/}{};
	send_ok($path, { batch => [
		{ type => 'track', userId => 'u2', event => 'In Batch', messageId => "$tag-1" },
		{ type => 'identify', anonymousId => 'a2', messageId => "$tag-2" } ] }, $path,
		key => $web);
}
ok(wait_drained($node), 'the workers drain the inbox');
for my $type (sort keys %single)
{
	is(stored("long-$type"), "$type web", "/v1/$type stored as a $type of source web");
	is(stored("short-$type"), "$type mobile",
		'/v1/' . substr($type, 0, 1) . " stored as a $type of source mobile");
}
for my $tag ('batch', 'b', 'import')
{
	is(stored("$tag-1") . ';' . stored("$tag-2"), 'track web;identify web',
		"/v1/$tag: each item stored with its own type");
}
send_ok('/v1/track', { type => 'track', userId => 'u1', event => 'E', messageId => 'typed' },
	'a single call naming its own type', key => $web);
refused('/v1/track', { type => 'identify', userId => 'u1', messageId => 'mismatch' },
	'400 false type_mismatch', 'a /v1/track call with "type": "identify"', key => $web);
refused('/v1/i', { type => 'page', userId => 'u1', messageId => 'mismatch-2' },
	'400 false type_mismatch', 'a /v1/i call with "type": "page"', key => $web);
send_ok('/v1/track', { type => undef, userId => 'u1', event => 'E', messageId => 'null-type' },
	'a single call with "type": null', key => $web);

# --- authentication
my $track = { userId => 'u3', event => 'Auth' };
send_ok('/v1/track', { %$track, messageId => 'auth-colon' }, 'Basic with "key:"', key => $web);
send_ok('/v1/track', { %$track, messageId => 'auth-nocolon' }, 'Basic with the key and no ":"',
	headers => [ basic($web) ]);
send_ok('/v1/track', { %$track, messageId => 'auth-body', writeKey => $mobile },
	'writeKey in the body of a single call');
send_ok('/v1/batch', { writeKey => $mobile, batch => [ { %$track, type => 'track',
	messageId => 'auth-envelope' } ] }, 'writeKey in a batch envelope');
send_ok('/v1/track', { %$track, messageId => 'auth-password' }, 'Basic with a password (ignored)',
	headers => [ basic("$web:whatever") ]);
send_ok('/v1/batch', { batch => [ { %$track, type => 'track', messageId => 'auth-item',
	writeKey => $mobile }, { %$track, type => 'track', messageId => 'auth-item-2' } ] },
	'writeKey in the first batch item');
refused('/v1/track', { %$track, messageId => 'unauth-missing' },
	'401 false unauthorized', 'no key');
refused('/v1/track', { %$track, messageId => 'unauth-unknown' },
	'401 false unauthorized', 'an unknown key', key => 'cdp_' . ('0' x 64));
refused('/v1/track', { %$track, messageId => 'unauth-unknown-body', writeKey => 'nope' },
	'401 false unauthorized', 'an unknown key in the body');
refused('/v1/track', { %$track, messageId => 'unauth-garbage' },
	'401 false unauthorized', 'an Authorization header that is not Basic base64',
	headers => ['Authorization: Basic !!!not base64!!!']);
refused('/v1/track', { %$track, messageId => 'unauth-bearer' },
	'401 false unauthorized', 'a Bearer header', headers => ["Authorization: Bearer $web"]);
my $gone = sql(q{SELECT cdp.create_source('gone')});
send_ok('/v1/track', { %$track, messageId => 'gone-before' }, 'a source before it is disabled',
	key => $gone);
sql(q{SELECT cdp.disable_source('gone')});
refused('/v1/track', { %$track, messageId => 'unauth-disabled' },
	'401 false unauthorized', 'a disabled source', key => $gone);
my $old = sql(q{SELECT cdp.create_source('rotated')});
send_ok('/v1/track', { %$track, messageId => 'rotated-before' }, 'a key before rotation',
	key => $old);
my $new = sql(q{SELECT cdp.rotate_write_key('rotated')});
refused('/v1/track', { %$track, messageId => 'unauth-rotated' },
	'401 false unauthorized', 'the old key after rotation', key => $old);
send_ok('/v1/track', { %$track, messageId => 'rotated-after' }, 'the new key after rotation',
	key => $new);

# --- bodies
send_ok('/v1/track', { %$track, messageId => 'gzip-single' }, 'a gzipped single call',
	key => $web, gzip => 1);
send_ok('/v1/batch', { batch => [ map { { %$track, type => 'track', messageId => "gzip-batch-$_" } }
	1 .. 3 ] }, 'a gzipped batch', key => $web, gzip => 1);
send_ok('/v1/track', { %$track, messageId => 'ct-text' }, 'Content-Type: text/plain',
	key => $web, headers => ['Content-Type: text/plain']);
send_ok('/v1/track', { %$track, messageId => 'ct-none' }, 'no Content-Type', key => $web);
send_ok('/v1/track', { %$track, messageId => 'ct-form' },
	'Content-Type: application/x-www-form-urlencoded', key => $web,
	headers => ['Content-Type: application/x-www-form-urlencoded']);
refused('/v1/track', '{"userId": "u3", "event": ', '400 false invalid_json', 'truncated JSON',
	key => $web);
refused('/v1/batch', '{"batch": [}', '400 false invalid_json', 'a batch of bad JSON',
	key => $web);
refused('/v1/track', '[{"userId": "u3", "event": "E"}]', '400 false invalid_json',
	'an array body', key => $web);
refused('/v1/track', '"just a string"', '400 false invalid_json', 'a string body', key => $web);
refused('/v1/batch', { messageId => 'no-batch', userId => 'u3' }, '400 false not_a_batch',
	'a batch without "batch"', key => $web);
send_ok('/v1/batch', {
	context => { app => { name => 'shop' }, library => { name => 'envelope-lib' } },
	batch => [
		{ %$track, type => 'track', messageId => 'ctx-inherit' },
		{ %$track, type => 'track', messageId => 'ctx-own', context => { locale => 'fr-FR' } } ] },
	'a batch with an envelope context', key => $web);

# a batch item of valid JSON that cannot become text (a NUL, half of a
# surrogate pair: a browser string cut in an emoji) or nests deep: the
# pipeline dead-letters or stores it alone, so it must not sink its batch
for my $case ([ 'nul', '"a\\u0000b"' ], [ 'surrogate', '"a\\ud83db"' ],
	[ 'deep', ('[' x 62) . (']' x 62) ])
{
	my ($tag, $value) = @$case;
	my $r = post($port, '/v1/batch', qq({"batch": [
		{"type": "track", "userId": "u5", "event": "E", "messageId": "odd-$tag-good-1"},
		{"type": "track", "userId": "u5", "event": "E", "messageId": "odd-$tag-bad",
		 "properties": {"x": $value}},
		{"type": "track", "userId": "u5", "event": "E", "messageId": "odd-$tag-good-2"}]}),
		key => $web);
	$accepted += 3 if $r->{status} == 200;
	is(error_of($r), '200 true -', "a batch with an item holding $tag: 200") or diag($r->{body});
}

# the server's receivedAt corrects the client's clock: the event happened
# (sentAt - timestamp) before the request arrived; a batch's sentAt is the
# envelope's
my $before = time;
send_ok('/v1/track', { %$track, messageId => 'skewed', timestamp => '2020-01-01T00:00:00Z',
	sentAt => '2020-01-01T00:10:00Z' }, 'a call with timestamp and sentAt', key => $web);
send_ok('/v1/batch', { sentAt => '2020-01-01T01:00:00Z', batch => [ { %$track, type => 'track',
	messageId => 'skewed-item', timestamp => '2020-01-01T00:30:00Z' } ] },
	'a batch with sentAt and an item with timestamp', key => $web);
my $after = time;
send_ok('/v1/track', { %$track, messageId => 'deflated' }, 'Content-Encoding: deflate',
	key => $web, deflate => 1);

# --- what a single call cannot be
my $long_id = 'm' x 101;
refused('/v1/track', { event => 'E', messageId => 'no-identity' }, '400 false missing_identity',
	'a track without userId or anonymousId', key => $web);
refused('/v1/alias', { userId => 'u1', messageId => 'alias-half' }, '400 false missing_identity',
	'an alias without previousId', key => $web);
refused('/v1/track', { userId => 'u1', messageId => 'no-event' }, '400 false missing_event',
	'a track without event', key => $web);
refused('/v1/group', { userId => 'u1', messageId => 'no-group' }, '400 false missing_group_id',
	'a group without groupId', key => $web);
refused('/v1/track', { %$track, messageId => $long_id }, '400 false message_id_too_long',
	'a messageId of 101 characters', key => $web);
send_ok('/v1/track', { %$track, messageId => 'n' x 100 }, 'a messageId of 100 characters',
	key => $web);
refused('/v1/track', { %$track, messageId => 'props-array', properties => [] },
	'400 false invalid_field_type', 'properties that are an array', key => $web);
refused('/v1/identify', { userId => 'u1', messageId => 'traits-string', traits => 'x' },
	'400 false invalid_field_type', 'traits that are a string', key => $web);
refused('/v1/track', qq({"userId": "u3", "event": "Deep", "messageId": "nested-600",
	"properties": {"x": @{[ ('[' x 598) . (']' x 598) ]}}}),
	'400 false invalid_json', 'JSON nested 600 levels deep', key => $web);
send_ok('/v1/track', qq({"userId": "u3", "event": "Deep", "messageId": "nested-100",
	"properties": {"x": @{[ ('[' x 98) . (']' x 98) ]}}}), 'JSON nested 100 levels deep',
	key => $web);
my $r = refused('/v1/track', { %$track, messageId => 'too-large',
	properties => { blob => 'x' x 33000 } }, '400 false too_large',
	'a single call over 32kB', key => $web);
like($r->{json}{message} // '', qr/\S/, 'the refusal says why in "message"');
send_ok('/v1/track', { %$track, messageId => 'just-fits', properties => { blob => 'x' x 32000 } },
	'a single call just under 32kB', key => $web);

# a batch with bad items: the good ones stored, the bad ones dead letters, 200
send_ok('/v1/batch', { batch => [
	{ type => 'track', userId => 'u4', event => 'Good', messageId => 'mixed-good-1' },
	{ type => 'track', event => 'Nobody', messageId => 'mixed-no-identity' },
	{ type => 'track', userId => 'u4', event => 'Huge', messageId => 'mixed-huge',
	  properties => { blob => 'y' x 33000 } },
	{ type => 'track', userId => 'u4', event => 'Good', messageId => 'mixed-good-2' } ] },
	'a batch with an item lacking identity and one over 32kB', key => $web);

# --- dedup: a retry with the same messageId is stored once
send_ok('/v1/track', { %$track, messageId => 'twice', sentAt => '2026-01-01T00:00:00Z' },
	'a message', key => $web);
send_ok('/v1/track', { %$track, messageId => 'twice', sentAt => '2026-01-01T00:00:05Z' },
	'its retry', key => $web);

ok(wait_drained($node), 'the workers drain the inbox');
is(sql(q{SELECT string_agg(message_id || '=' || source, ',' ORDER BY message_id)
	FROM cdp.events WHERE message_id LIKE 'auth-%' OR message_id LIKE 'rotated-%'
	OR message_id = 'gone-before'}),
	'auth-body=mobile,auth-colon=web,auth-envelope=mobile,auth-item=mobile,auth-item-2=mobile,'
	  . 'auth-nocolon=web,auth-password=web,gone-before=gone,'
	  . 'rotated-after=rotated,rotated-before=rotated',
	'each authenticated message stored with its key\'s source');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'unauth-%' OR message_id LIKE 'mismatch%'})
	  . ' ' . sql(q{SELECT count(*) FROM cdp.dead_letters WHERE payload LIKE '%unauth-%'}),
	'0 0', 'nothing of a refused request is stored or dead-lettered');
is(sql(qq{SELECT count(*) FROM cdp.events e WHERE e::text LIKE '%$mobile%'})
	  . ' ' . sql(qq{SELECT count(*) FROM cdp.dead_letters d WHERE d::text LIKE '%$mobile%'}),
	'0 0', 'a write key sent in the body is stored nowhere');
is(sql(q{SELECT string_agg(message_id, ',' ORDER BY message_id) FROM cdp.events
	WHERE message_id LIKE 'gzip-%' OR message_id LIKE 'ct-%'}),
	'ct-form,ct-none,ct-text,gzip-batch-1,gzip-batch-2,gzip-batch-3,gzip-single',
	'gzipped bodies and bodies of any Content-Type are stored');
is(sql(q{SELECT context->'app'->>'name' FROM cdp.events WHERE message_id = 'ctx-inherit'}),
	'shop', 'an item without context gets the envelope\'s');
is(sql(q{SELECT context->>'locale' FROM cdp.events WHERE message_id = 'ctx-own'}),
	'fr-FR', 'an item with its own context keeps it');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id IN ('no-identity', 'alias-half',
	'no-event', 'no-group', 'too-large', 'props-array', 'traits-string', 'nested-600')
	OR length(message_id) > 100}),
	'0', 'no refused single call is stored');
is(stored('n' x 100) . ';' . stored('just-fits') . ';' . stored('nested-100'),
	'track web;track web;track web', 'the calls at the limits are stored');
is(sql(q{SELECT string_agg(message_id, ',' ORDER BY message_id) FROM cdp.events
	WHERE message_id LIKE 'mixed-%'}), 'mixed-good-1,mixed-good-2',
	'the batch\'s good items are stored');
is(sql(q{SELECT string_agg(error_code || ' ' || source, ',' ORDER BY error_code)
	FROM cdp.dead_letters WHERE payload LIKE '%mixed-%'}),
	'missing_identity web,too_large web', 'its bad items are dead letters with the reason');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id = 'twice'}), '1',
	'a messageId sent twice is stored once');
is(sql(qq{SELECT string_agg(message_id || ' ' || (received_at - ts)::text, ',' ORDER BY message_id)
	FROM cdp.events WHERE message_id LIKE 'skewed%'
	AND received_at BETWEEN to_timestamp($before) AND to_timestamp($after)}),
	'skewed 00:10:00,skewed-item 00:30:00',
	'receivedAt is when the request came; ts is receivedAt less (sentAt - timestamp)');
is(stored('deflated'), 'track web', 'the deflated call is stored');
is(stored('null-type') . ' ' . sql(q{SELECT string_agg(error_code, ',') FROM cdp.dead_letters
	WHERE payload LIKE '%null-type%'}), 'track web ', '"type": null takes the path\'s type');
is(sql(q{SELECT string_agg(message_id, ',' ORDER BY message_id) FROM cdp.events
	WHERE message_id ~ '^odd-(nul|surrogate)-good-'}),
	'odd-nul-good-1,odd-nul-good-2,odd-surrogate-good-1,odd-surrogate-good-2',
	'the good siblings of items that cannot become text are stored');
is(sql(q{SELECT string_agg(error_code || ' ' || substring(payload from 'odd-[a-z]+-bad'), ','
	ORDER BY error_code) FROM cdp.dead_letters WHERE payload ~ 'odd-(nul|surrogate)-bad'}),
	'invalid_json odd-surrogate-bad,null_character odd-nul-bad',
	'those items are dead letters with the reason');
is(sql(q{SELECT string_agg(message_id, ',' ORDER BY message_id) FROM cdp.events
	WHERE message_id LIKE 'odd-deep-%'}), 'odd-deep-bad,odd-deep-good-1,odd-deep-good-2',
	'a batch with an item nesting 64 levels (as a single call may) is stored');

# --- what browsers and curl-based SDKs do besides
send_ok('/v1/batch', { batch => [] }, 'an empty batch', key => $web);
my $sock = http_connect($port);
my $body = encode_json({ %$track, messageId => 'expect-continue' });
send_request($sock, 'POST', '/v1/track', undef, basic("$web:"), 'Expect: 100-continue',
	'Content-Length: ' . length($body));
is(read_response($sock, 20)->{status}, 100, 'Expect: 100-continue: 100 before the body');
syswrite($sock, $body);
is(error_of(read_response($sock, 20)), '200 true -', 'and 200 after it');
$accepted++;
close $sock;
$sock = http_connect($port);
send_request($sock, 'POST', '/v1/batch', undef, basic("$web:"), 'Expect: 100-continue',
	'Content-Length: 100000000');
is(error_of(read_response($sock, 20)), '400 false too_large',
	'Expect: 100-continue with a body over the limit: 400 at once');
close $sock;
$r = http_request($port, 'OPTIONS', '/v1/batch', undef, 'Origin: https://shop.example',
	'Access-Control-Request-Method: POST', 'Access-Control-Request-Headers: content-type');
is($r->{status} . ' ' . ($r->{headers}{'access-control-allow-origin'} // '-'), '204 *',
	'a CORS preflight: 204 allowing any origin');
like($r->{headers}{'access-control-allow-methods'} // '', qr/POST/, 'and POST');
$r = send_ok('/v1/track', { %$track, messageId => 'from-browser' }, 'a call from a browser',
	key => $web, headers => ['Origin: https://shop.example', 'Content-Type: text/plain']);
is($r->{headers}{'access-control-allow-origin'}, '*', 'its answer allows any origin');

# --- unknown paths and methods
is(http_request($port, 'POST', '/v1/nothing', '{}', basic("$web:"))->{status}, 404,
	'POST to an unknown path: 404');
is(http_request($port, 'GET', '/', undef)->{status}, 404, 'GET /: 404');
is(http_request($port, 'POST', '/v1/track/', '{}', basic("$web:"))->{status}, 404,
	'a known path with a trailing "/": 404');
$r = http_request($port, 'GET', '/v1/track', undef, basic("$web:"));
is($r->{status}, 405, 'GET /v1/track: 405');
like($r->{headers}{allow} // '', qr/POST/, 'and Allow names POST');
is(http_request($port, 'GET', '/v1/batch', undef)->{status}, 405, 'GET /v1/batch: 405');
is(http_request($port, 'POST', '/health', '{}')->{status}, 405, 'POST /health: 405');

# --- /health
$r = http_request($port, 'GET', '/health', undef);
is($r->{status} . ' ' . ($r->{json}{status} // '-'), '200 ok', '/health: 200 {"status":"ok"}');

# --- /metrics (once what the calls above queued is stored, so the figures are settled)
ok(wait_drained($node), 'the workers drain the inbox');
$r = http_request($port, 'GET', '/metrics', undef);
is($r->{status}, 200, '/metrics: 200');
my (%metric, @bad, @order);
for my $line (split /\n/, $r->{body})
{
	next if $line =~ /^#/ || $line eq '';
	if ($line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^{}]*\})?) (-?[0-9.]+(?:[eE][-+]?\d+)?|[-+]Inf|NaN)$/)
	{
		$metric{$1} = $2;
		push @order, $1;
	}
	else
	{
		push @bad, $line;
	}
}
is(join("\n", @bad), '', 'every line is a comment or "name{labels} value"');
ok(scalar(keys %metric) > 10, 'there are metrics');
for my $name ('cdp_received_total', 'cdp_inbox_depth', 'cdp_oldest_queued_seconds',
	'cdp_http_connections', 'cdp_http_events_accepted_total')
{
	ok(exists $metric{$name}, "$name is there");
}
is($metric{cdp_received_total}, sql(q{SELECT value FROM cdp.stats WHERE name = 'received'}),
	'cdp_received_total is cdp.stats\' received');
is($metric{cdp_inbox_depth}, '0', 'cdp_inbox_depth is 0 once drained');
is($metric{'cdp_http_requests_total{path="/v1/track",status="200"}'}, tally_of('/v1/track', 200),
	'cdp_http_requests_total{path="/v1/track",status="200"} counts the 200s sent to /v1/track and /v1/t');
my @series = grep { /^cdp_http_requests_total\{/ && !/path="\/metrics"/ } keys %metric;
my @wrong;
for my $s (@series)
{
	my ($path, $status) = $s =~ /path="([^"]*)",status="(\d+)"/;
	push @wrong, "$s $metric{$s} != " . tally_of($path, $status)
	  if $metric{$s} != tally_of($path, $status);
}
is(join('; ', @wrong), '', 'every other path and status is counted as sent');
cmp_ok(scalar(@series), '>=', 12, 'paths and statuses are told apart');
is($metric{cdp_http_events_accepted_total}, $accepted,
	'cdp_http_events_accepted_total counts the messages acknowledged');
my @buckets = grep { /^cdp_http_request_duration_seconds_bucket\{/ } @order;
my @le = map { /le="([^"]+)"/ ? $1 : '?' } @buckets;
is($le[-1], '+Inf', 'the histogram ends with le="+Inf"');
my @unsorted = grep { $le[$_] ne '+Inf' && $le[$_ - 1] >= $le[$_] } 1 .. $#le;
is(scalar(@unsorted), 0, 'its bounds increase');
my @falling = grep { $metric{ $buckets[$_ - 1] } > $metric{ $buckets[$_] } } 1 .. $#buckets;
is(scalar(@falling), 0, 'its buckets are cumulative');
is($metric{ $buckets[-1] }, $metric{cdp_http_request_duration_seconds_count},
	'le="+Inf" is _count');
my $answered = 0;
$answered += $metric{$_} for grep { /^cdp_http_requests_total\{/ } keys %metric;
is($metric{cdp_http_request_duration_seconds_count}, $answered,
	'_count is every request answered');

$node->stop;
done_testing();
