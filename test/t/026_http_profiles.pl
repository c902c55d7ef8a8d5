# The profile API over HTTP: GET /v1/profiles/{identifier}/traits and
# /audiences with a read key answer a person's traits for the key's purpose
# (only those the person granted), 404 alike for people unknown, not
# consenting or forgotten; 401 without a known, enabled read key (a write
# key is none, and a read key writes nothing); 400 for an identifier that
# cannot be one; 405 for another method; 503 when a read cannot be
# answered now; every answer counted in /metrics.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use CdpHttp;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my ($node, $port) = start_http_node('http_profiles');
sub sql { return $node->safe_psql('postgres', $_[0]); }

my $write_key = sql(q{SELECT cdp.create_source('web')});
my $key = sql(q{SELECT cdp.create_read_key('personal', 'personalization')});
my $marketing_key = sql(q{SELECT cdp.create_read_key('mkt', 'marketing')});
my $disabled_key = sql(q{SELECT cdp.create_read_key('gone', 'personalization')});
sql(q{SELECT cdp.disable_read_key('gone')});
like($key, qr/^cdp_rk_[0-9a-f]{64}$/, 'a read key');

my $consent = '{"consent": {"categoryPreferences": {"personalization": true}}}';
sql(qq{
SELECT cdp.define_trait('age', 'int', 'personalization');
SELECT cdp.define_trait('email', 'text', 'marketing');
SELECT cdp.ingest('{"type": "identify", "userId": "u1", "traits": {"email": "Alice\@Example.com", "age": "41"},
                    "context": $consent}');
SELECT cdp.ingest('{"type": "identify", "userId": "u2", "traits": {"age": 30}}');
SELECT cdp.ingest('{"type": "identify", "userId": "u3", "traits": {"age": 50}, "context": $consent}');
SELECT cdp.ingest('{"type": "identify", "userId": "a/b ü", "traits": {"age": 9}, "context": $consent}');
SELECT cdp.process_inbox();
});
ok(wait_drained($node), 'the messages are stored');
my $u1 = sql(q{SELECT cdp.resolve('user_id:u1')});

sub get
{
	my ($path, @headers) = @_;
	return http_request($port, 'GET', $path, undef, @headers);
}
sub bearer { return "Authorization: Bearer $_[0]"; }
my $json = JSON::PP->new->canonical;
sub body_of { my ($r) = @_; return $r->{json} ? $json->encode($r->{json}) : $r->{body}; }

# --- what a consenting person's traits are
my $r = get('/v1/profiles/user_id:u1/traits', bearer($key));
is($r->{status}, 200, 'a consenting person: 200');
is($r->{headers}{'content-type'}, 'application/json', 'as JSON');
is(body_of($r), qq({"profile_id":$u1,"traits":{"age":41}}),
	'the traits of the key\'s purpose, typed; a trait of a purpose not granted left out');
is(body_of(http_request($port, 'GET', '/v1/profiles/user_id:u1/traits', undef, basic("$key:"))),
	body_of($r), 'the read key as the user name of Basic authorization works too');
is(body_of(get('/v1/profiles/email:alice%40example.com/traits', bearer($key))), body_of($r),
	'a percent-encoded email identifier finds the same person (normalised: lower case)');
is(body_of(get('/v1/profiles/user_id%3Au1/traits', bearer($key))), body_of($r),
	'an escaped ":" is decoded too');
is(get('/v1/profiles/user_id:a%2Fb%20%C3%BC/traits', bearer($key))->{status}, 200,
	'an identifier holding an escaped "/", a space and UTF-8 is decoded');
$r = get('/v1/profiles/user_id:u1/audiences', bearer($key));
is($r->{status} . ' ' . body_of($r), qq(200 {"audiences":[],"profile_id":$u1}), '/audiences: 200 and the list (none yet)');
sql(q{SELECT cdp.define_audience('adults', 'age >= 18', 'personalization')});
sql(q{SELECT cdp.define_audience('mailable', 'age IS NOT NULL', 'marketing')});
$r = get('/v1/profiles/user_id:u1/audiences', bearer($key));
is(body_of($r), qq({"audiences":["adults"],"profile_id":$u1}),
	'/audiences: the audiences of the key\'s purpose the person is in, not those of a purpose not granted');

# --- 404 alike for unknown, not consenting, forgotten people
my $unknown = get('/v1/profiles/user_id:nobody/traits', bearer($key));
is(error_of($unknown), '404 false not_found', 'an unknown person: 404 not_found');
my $refused = get('/v1/profiles/user_id:u2/traits', bearer($key));
is(error_of($refused), '404 false not_found', 'a person who did not grant the purpose: 404');
is($refused->{body}, $unknown->{body}, '... with the same answer as for an unknown person');
is(error_of(get('/v1/profiles/user_id:u1/traits', bearer($marketing_key))), '404 false not_found',
	'a person who granted another purpose than the key\'s: 404');
is(error_of(get('/v1/profiles/user_id:u2/audiences', bearer($key))), '404 false not_found',
	'/audiences of a person who did not grant the purpose: 404');
is(get('/v1/profiles/user_id:u3/traits', bearer($key))->{status}, 200, 'u3 answers ...');
sql(q{SELECT cdp.forget('user_id:u3')});
is(error_of(get('/v1/profiles/user_id:u3/traits', bearer($key))), '404 false not_found',
	'... and 404 once forgotten');
is(error_of(get('/v1/profiles/user_id:u3/audiences', bearer($key))), '404 false not_found',
	'/audiences of a forgotten person: 404');

# --- 401: no read key, a write key, a disabled or rotated one
is(error_of(get('/v1/profiles/user_id:u1/traits')), '401 false unauthorized', 'no key: 401');
is(error_of(get('/v1/profiles/user_id:u1/traits', bearer($write_key))), '401 false unauthorized',
	'a write key: 401');
is(error_of(http_request($port, 'GET', '/v1/profiles/user_id:u1/traits', undef, basic("$write_key:"))),
	'401 false unauthorized', 'a write key in Basic: 401');
is(error_of(get('/v1/profiles/user_id:u1/traits', bearer($disabled_key))), '401 false unauthorized',
	'a disabled read key: 401');
is(error_of(get('/v1/profiles/user_id:u1/traits', 'Authorization: Bearer ')), '401 false unauthorized',
	'an empty Bearer: 401');
is(error_of(get('/v1/profiles/user_id:u1/traits', 'Authorization: Digest x')), '401 false unauthorized',
	'another scheme: 401');
is(error_of(get('/v1/profiles/user_id:nobody/traits', bearer('cdp_rk_0000'))), '401 false unauthorized',
	'an unknown key: 401 (before whether the person exists)');
is(error_of(get('/v1/profiles/nocolon/traits', bearer('cdp_rk_0000'))), '401 false unauthorized',
	'an unknown key: 401 (before whether the identifier is valid)');
is(error_of(get('/v1/profiles/user_id:u1/traits', "Authorization: Bearer cdp_rk_\xff\xfe")),
	'401 false unauthorized', 'a key that is not ASCII: 401 (not looked up)');
is(error_of(post($port, '/v1/track', { userId => 'u1', event => 'x' }, key => "cdp_\xff")),
	'401 false unauthorized', 'a write key that is not ASCII on /v1/track: 401 too (not 400)');
my $old = $key;
$key = sql(q{SELECT cdp.rotate_read_key('personal')});
is(error_of(get('/v1/profiles/user_id:u1/traits', bearer($old))), '401 false unauthorized',
	'a rotated read key: 401 at once');
is(get('/v1/profiles/user_id:u1/traits', bearer($key))->{status}, 200, 'its new key: 200');

# --- a read key writes nothing
my $before = sql(q{SELECT count(*) FROM cdp.inbox}) + sql(q{SELECT count(*) FROM cdp.events});
is(error_of(post($port, '/v1/track', { userId => 'u1', event => 'Read Key' }, key => $key)),
	'401 false unauthorized', 'a read key on /v1/track (Basic): 401');
is(error_of(post($port, '/v1/batch', { writeKey => $key, batch => [ { type => 'track', userId => 'u1', event => 'x' } ] })),
	'401 false unauthorized', 'a read key as a batch\'s writeKey: 401');
is(sql(q{SELECT count(*) FROM cdp.inbox}) + sql(q{SELECT count(*) FROM cdp.events}), $before,
	'nothing was queued');

# --- 400: identifiers that cannot be one
for my $case (
	[ 'nocolon', 'no type:value' ],
	[ 'User_ID:u1', 'a type with capitals' ],
	[ 'user_id:%20', 'an empty value' ],
	[ 'user_id:a%00b', 'a NUL byte' ],
	[ 'user_id:%ff%fe', 'not UTF-8' ],
	[ 'user_id:%zz', 'a bad escape' ],
	[ 'user_id:%4', 'an escape cut short' ],
	[ 'user_id:' . ('x' x 1093), 'over 1100 bytes' ],
	[ 'user_id:' . ('%41' x 1093), 'over 1100 bytes once decoded' ])
{
	my ($id, $what) = @$case;
	$r = get("/v1/profiles/$id/traits", bearer($key));
	is(error_of($r), '400 false invalid_identifier', "$what: 400 invalid_identifier") or diag($r->{body});
}
for my $id ('user_id:' . ('x' x 1093), 'user_id:' . ('%41' x 1093))
{
	like(get("/v1/profiles/$id/traits", bearer($key))->{json}{message} // '', qr/longer than 1100/,
		'over 1100 bytes is refused for its length, ' . length($id) . ' bytes as sent');
}
like(get('/v1/profiles/user_id:' . ('x' x 1092) . '/traits', bearer($key))->{json}{message} // '',
	qr/value is longer than 1024 bytes/, '1100 bytes are read (the value is too long)');
is(get('/v1/profiles/' . ('t' x 63) . ':' . ('%41' x 1024) . '/traits', bearer($key))->{status}, 404,
	'the longest identifier there can be is looked up (and unknown: 404)');
like(get('/v1/profiles/nocolon/traits', bearer($key))->{json}{message} // '', qr/type:value/,
	'the answer says why');

# --- paths and methods
is(get('/v1/profiles//traits', bearer($key))->{status}, 404, 'no identifier: 404 (no such path)');
is(get('/v1/profiles/user_id:u1/other', bearer($key))->{status}, 404, 'another what: 404');
is(get('/v1/profiles/user_id:u1', bearer($key))->{status}, 404, 'no what: 404');
$r = http_request($port, 'POST', '/v1/profiles/user_id:u1/traits', '{}', bearer($key));
is($r->{status}, 405, 'POST: 405');
is($r->{headers}{allow}, 'GET, HEAD', '... with Allow: GET, HEAD');
is(http_request($port, 'DELETE', '/v1/profiles/user_id:u1/audiences', undef, bearer($key))->{status}, 405,
	'DELETE: 405');
is(get('/v1/tr%61ck', basic("$write_key:"))->{status}, 405,
	'the fixed paths are still matched percent-decoded (GET /v1/tr%61ck: 405, not 404)');

# --- many reads on one keep-alive connection
my $sock = http_connect($port);
my @seen;
for my $i (1 .. 20)
{
	send_request($sock, 'GET', '/v1/profiles/user_id:u1/traits', undef, bearer($key));
	push @seen, read_response($sock)->{status};
}
close $sock;
is(join(',', @seen), join(',', (200) x 20), 'twenty reads on one connection: all 200');

# --- /metrics counts them by path and status
$r = http_request($port, 'GET', '/metrics', undef);
my @wrong;
for my $path ('/v1/profiles/{identifier}/traits', '/v1/profiles/{identifier}/audiences')
{
	for my $status (200, 400, 401, 404, 405)
	{
		my ($n) = $r->{body} =~ /^cdp_http_requests_total\{path="\Q$path\E",status="$status"\} (\d+)$/m;
		push @wrong, "$path $status: " . ($n // 0) . ' != ' . tally_of($path, $status)
		  if ($n // 0) != tally_of($path, $status);
	}
}
is(join('; ', @wrong), '', '/metrics counts the profile requests by path and status, as sent');
cmp_ok(tally_of('/v1/profiles/{identifier}/traits', 200), '>', 20, 'and there were some');

# --- a read that cannot be answered now (a lock timeout) is 503 (retry),
# never a 404 that would say the person is gone, and holds up no write
# for longer than the lock_timeout
my $old_pid = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'});
sql(q{ALTER DATABASE postgres SET lock_timeout = '1s'});
sql("SELECT pg_terminate_backend($old_pid)");
$node->poll_query_until('postgres',
	qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_cdp http' AND pid <> $old_pid})
  or die 'the HTTP worker did not come back';
ok(wait_http($port), 'the endpoint answers again, its lookups bounded by lock_timeout');
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE cdp.profile_records IN ACCESS EXCLUSIVE MODE');
my $reader = http_connect($port);
my $writer = http_connect($port);
send_request($reader, 'GET', '/v1/profiles/user_id:u1/traits', undef, bearer($key));
send_request($writer, 'POST', '/v1/track', encode_json({ userId => 'u9', event => 'During Lock' }),
	basic("$write_key:"));
my $read = read_response($reader);
my $write = read_response($writer);
$locker->query_safe('COMMIT');
$locker->quit;
close $reader;
close $writer;
is(error_of($read), '503 false unavailable', 'a read waiting on a lock past lock_timeout: 503');
is($read->{headers}{'retry-after'}, '1', '... with Retry-After: 1');
is(error_of($write), '200 true -', 'a write beside it is accepted');
sql('ALTER DATABASE postgres RESET lock_timeout');
is(get('/v1/profiles/user_id:u1/traits', bearer($key))->{status}, 200, 'once the lock is gone: 200');

$node->stop;
done_testing();
