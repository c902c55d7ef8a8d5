# What the HTTP endpoint promises when the database cannot take a write or
# goes away: 200 only for what has committed durably (a kill -9 of the
# postmaster right after loses none of it, even with synchronous_commit off);
# 503 with Retry-After while transactions are read-only and for a request
# that arrives while the server stops, and nothing of it is queued; a fast
# stop completes while the endpoint waits for a lock.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use CdpHttp;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# no ingest workers: what is acknowledged stays in the inbox to be counted.
# Commits left to the WAL writer would wait up to 10 s in shared memory,
# and a kill -9 would lose them.
my ($node, $port) = start_http_node('http_shutdown', q{
cdp.ingest_workers = 0
synchronous_commit = off
wal_writer_delay = '10s'
wal_writer_flush_after = '1GB'
max_prepared_transactions = 2
});
sub sql { return $node->safe_psql('postgres', $_[0]); }
my $key = sql(q{SELECT cdp.create_source('web')});
my $auth = basic("$key:");

# messageIds in the inbox among those given, comma-separated
sub queued
{
	my $list = join(',', map { "'$_'" } @_);
	return sql(qq{SELECT coalesce(string_agg(payload::jsonb->>'messageId', ',' ORDER BY id), '')
		FROM cdp.inbox WHERE payload::jsonb->>'messageId' IN ($list)});
}

# the server stopped by pg_ctl (not by the node object): start it again
sub start_again
{
	$node->{_pid} = undef;
	my $started = 0;
	for (1 .. 100)
	{
		last if ($started = $node->start(fail_ok => 1));
		$node->{_pid} = undef;
		select(undef, undef, undef, 0.3);
	}
	return $started && wait_http($port);
}

# --- read-only: /health and ingest answer 503, retry later
sql('ALTER SYSTEM SET default_transaction_read_only = on');
$node->reload;
my $r;
for (1 .. 100)
{
	$r = http_request($port, 'GET', '/health', undef);
	last if $r->{status} != 200;
	select(undef, undef, undef, 0.1);
}
is($r->{status} . ' ' . ($r->{json}{status} // '-'), '503 unavailable',
	'/health with read-only transactions: 503');
$r = http_request($port, 'POST', '/v1/track', track_body('read-only'), $auth);
is($r->{status}, 503, 'a track with read-only transactions: 503 (SDKs retry)')
  or diag("got: $r->{status} $r->{body}");
like($r->{headers}{'retry-after'} // '', qr/^\d+$/, 'with Retry-After');
$node->safe_psql('postgres', q{SET default_transaction_read_only = off;
	ALTER SYSTEM RESET default_transaction_read_only});
$node->reload;
ok(wait_http($port), 'writable again: /health 200');
is(queued('read-only'), '', 'nothing of the refused request is queued');

# --- a 200 means committed: kill -9 right after the answers loses none
my @acked;
for my $i (1 .. 30)
{
	push @acked, "acked-$i"
	  if http_request($port, 'POST', '/v1/track', track_body("acked-$i"), $auth)->{status} == 200;
}
is(scalar(@acked), 30, 'thirty messages acknowledged');
$node->kill9;
ok(start_again(), 'the server starts again after kill -9');
is(queued(@acked), join(',', @acked), 'every acknowledged message is in the inbox');

# --- clients that leave while their requests wait for the database: the
# worker carries on (their messages may be queued: a retry is deduplicated)
my $http_pid = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'});
my $holder = $node->background_psql('postgres', on_error_stop => 1);
$holder->query_safe('BEGIN');
$holder->query_safe('LOCK TABLE cdp.inbox IN EXCLUSIVE MODE');
my @leaving = map { http_connect($port) } 1 .. 5;
send_request($leaving[$_], 'POST', '/v1/track', track_body("leaving-$_"), $auth) for 0 .. 4;
ok($node->poll_query_until('postgres',
	q{SELECT wait_event_type FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'}, 'Lock'),
	'requests wait for the lock on the inbox');
close $_ for @leaving;
$holder->query_safe('COMMIT');
$holder->quit;
is(http_request($port, 'POST', '/v1/track', track_body('after-leaving'), $auth)->{status}, 200,
	'after their clients left, the next request is acknowledged');
is(sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'}), $http_pid,
	'by the same worker');
is(queued('after-leaving'), 'after-leaving', 'and queued');

# A fast stop while a request waits for a lock on the inbox and another
# has arrived behind it: each is answered 200 only when it is queued;
# otherwise 503 with Retry-After, or its connection closes.
sub stop_with_two_waiting
{
	my ($tag, $prepared) = @_;
	my $holder = $node->background_psql('postgres', on_error_stop => 1);
	$holder->query_safe('BEGIN');
	$holder->query_safe('LOCK TABLE cdp.inbox IN EXCLUSIVE MODE');
	$holder->query_safe(qq{PREPARE TRANSACTION 'holds_inbox'}) if $prepared;
	my $first = http_connect($port);
	send_request($first, 'POST', '/v1/track', track_body("$tag-waiting"), $auth);
	ok($node->poll_query_until('postgres',
		q{SELECT wait_event_type FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'}, 'Lock'),
		"$tag: the endpoint waits for the lock on the inbox");
	my $second = http_connect($port);
	send_request($second, 'POST', '/v1/track', track_body("$tag-behind"), $auth);
	my ($out, $err) = ('', '');
	my $stop = IPC::Run::start(['pg_ctl', '-D', $node->data_dir, '-m', 'fast', '-w', '-t', '20',
		'stop'], '>', \$out, '2>', \$err);
	my %answer = ("$tag-waiting" => read_response($first, 30),
		"$tag-behind" => read_response($second, 30));
	my $stopped = $stop->finish;
	ok($stopped, "$tag: the fast stop completes") or diag($out . $err);
	IPC::Run::run(['pg_ctl', '-D', $node->data_dir, '-m', 'immediate', '-w', 'stop'])
	  unless $stopped;
	eval { $holder->quit; };
	ok(start_again(), "$tag: the server starts again");
	sql(q{ROLLBACK PREPARED 'holds_inbox'}) if $prepared;
	for my $id (sort keys %answer)
	{
		my $r = $answer{$id};
		my $got = $r->{status} == 0 ? 'closed'
		  : "$r->{status} " . ($r->{status} == 503 && ($r->{headers}{'retry-after'} // '') =~ /^\d+$/
			? 'with Retry-After' : 'without Retry-After');
		note("$id: $got");
		if ($r->{status} == 200)
		{
			is(queued($id), $id, "$id: acknowledged, and queued");
		}
		else
		{
			like($got, qr/^(closed|503 with Retry-After)$/, "$id: 503 with Retry-After, or closed");
			is(queued($id), '', "$id: not acknowledged, and not queued");
		}
	}
	return \%answer;
}

# the lock's holder ends with the stop: either may have committed first
stop_with_two_waiting('ended-holder', 0);

# a prepared transaction keeps its lock through the stop: the stop must not
# wait for it, and neither request can commit
my $answer = stop_with_two_waiting('prepared-holder', 1);
is(join(' ', map { $answer->{$_}{status} } sort keys %$answer), '503 503',
	'behind a prepared transaction\'s lock both are answered 503');

# --- the endpoint comes back: after its worker is terminated or killed,
# and with the extension
for my $how ('terminated', 'killed')
{
	my $pid = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'});
	if ($how eq 'terminated')
	{
		sql("SELECT pg_terminate_backend($pid)");
	}
	else
	{
		kill 'KILL', $pid;
	}
	my $back = 0;
	for (1 .. 300)
	{
		my $new = '';
		$node->psql('postgres', q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cdp http'},
			stdout => \$new);
		last if ($back = $new =~ /^\d+$/ && $new ne $pid && wait_http($port));
		select(undef, undef, undef, 0.1);
	}
	ok($back, "the endpoint comes back after its worker is $how");
	is(http_request($port, 'POST', '/v1/track', track_body("after-$how"), $auth)->{status}, 200,
		'and acknowledges a message');
}
sql('DROP EXTENSION pg_cdp');
my $closed = 0;
for (1 .. 300)
{
	last if ($closed = http_request($port, 'GET', '/health', undef)->{status} == 0);
	select(undef, undef, undef, 0.1);
}
ok($closed, 'DROP EXTENSION closes the endpoint');
sql('CREATE EXTENSION pg_cdp');
ok(wait_http($port), 'CREATE EXTENSION opens it again');
$key = sql(q{SELECT cdp.create_source('web')});
is(post($port, '/v1/track', { userId => 'u1', event => 'Again', messageId => 'again' },
	key => $key)->{status}, 200, 'and it acknowledges a message');
is(queued('again'), 'again', 'which is queued');

$node->stop;
done_testing();
