# The HTTP endpoint across server restarts, with the real SDKs: Segment's
# analytics-node and RudderStack's rudder-sdk-node (gzip) send events without
# pause while the server is stopped 'fast' and started, then stopped
# 'immediate' (a crash for the database) and started.  The SDKs retry what was
# refused or cut off, resending the same messageIds; every messageId must end
# up stored exactly once, under the source whose key sent it.
#
# Needs Node.js and the SDKs installed by test/sdk/install.sh (CI does both);
# without them the test fails rather than skips.
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Spec;
use IO::Socket::INET;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $sdk_dir = $ENV{CDP_SDK_DIR} // File::Spec->rel2abs(dirname(__FILE__) . '/../sdk');
my $node_version = `node --version 2>&1`;
ok($? == 0, 'Node.js is installed') or die "node not found: the SDK tests need Node.js";
ok(-d "$sdk_dir/node_modules/\@segment/analytics-node"
	  && -d "$sdk_dir/node_modules/\@rudderstack/rudder-sdk-node",
	'the SDKs are installed') or die "no SDKs in $sdk_dir/node_modules: run test/sdk/install.sh";

my $node = PostgreSQL::Test::Cluster->new('http_restart');
my $http_port = PostgreSQL::Test::Cluster::get_free_port();
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'cdp'
cdp.http_port = $http_port
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE cdp');

sub sql { return $node->safe_psql('cdp', $_[0]); }

# GET path on the endpoint: the status code, or 0 when nothing answers
sub http_status
{
	my ($path) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $http_port,
		Proto => 'tcp', Timeout => 5) or return 0;
	print $s "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
	my $line = <$s>;
	close $s;
	return ($line // '') =~ m{^HTTP/1\.[01] (\d{3})} ? $1 : 0;
}

sub wait_healthy
{
	for (1 .. 600)
	{
		return 1 if http_status('/health') == 200;
		select(undef, undef, undef, 0.1);
	}
	return 0;
}

sql('CREATE EXTENSION pg_cdp');
ok(wait_healthy(), 'the endpoint answers /health with 200 after CREATE EXTENSION');
my %key = (
	segment => sql(q{SELECT cdp.create_source('restart_segment')}),
	rudder => sql(q{SELECT cdp.create_source('restart_rudder')}));

# the senders: paced (200 events/s each), on until the stop file exists;
# RudderStack is told to retry more than its default 3 times (about
# 1.4 s in all), which a restart outlasts
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $stop_file = "$tmp/stop";
my %sender;
for my $sdk ('segment', 'rudder')
{
	my ($out, $err) = ('', '');
	my @cmd = ('node', "$sdk_dir/send.js", '--sdk', $sdk,
		'--url', "http://127.0.0.1:$http_port", '--key', $key{$sdk},
		'--prefix', "rs-$sdk", '--count', '100', '--max', '30000',
		'--until-file', $stop_file, '--per-tick', '10', '--tick-ms', '50',
		'--flush-at', '20', '--retries', '12', '--deadline-s', '240',
		'--ids-out', "$tmp/$sdk.ids");
	$sender{$sdk} = { h => IPC::Run::start(\@cmd, '>', \$out, '2>', \$err),
		out => \$out, err => \$err };
}

# senders still running when the test dies are stopped
END
{
	eval { $_->{h}->kill_kill } for values %sender;
}

my $stored = q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'rs-%'};
sub stored_more_than
{
	my ($n, $what) = @_;
	ok($node->poll_query_until('cdp', "SELECT ($stored) > $n"), $what)
	  or die "nothing stored: no use going on";
}

stored_more_than(200, 'both SDKs deliver');
$node->stop('fast');
sleep(1);    # the SDKs meet a closed port meanwhile
$node->start;
ok(wait_healthy(), 'the endpoint is back after a fast restart');
stored_more_than(sql($stored) + 200, 'delivery goes on after the fast restart');

$node->stop('immediate');
sleep(1);
$node->start;
ok(wait_healthy(), 'the endpoint is back after an immediate stop (crash recovery)');
stored_more_than(sql($stored) + 200, 'delivery goes on after the immediate stop');

ok($node->poll_query_until('cdp', "SELECT ($stored) >= 3000"), '3,000 events stored');
# stop sending; each sender flushes and waits for every delivery callback
open(my $fh, '>', $stop_file) or die "cannot create $stop_file: $!";
close $fh;
my %sent;
for my $sdk ('segment', 'rudder')
{
	my $s = $sender{$sdk};
	my $ok = $s->{h}->finish;
	my ($summary) = ${ $s->{out} } =~ /^(\{.*\})\s*\z/ms;
	note("$sdk: " . ($summary // 'no summary'));
	ok($ok, "$sdk: every event acknowledged (the SDK retried through both restarts)")
	  or diag("$sdk: " . ($summary // 'no summary') . "\n" . substr(${ $s->{err} }, 0, 2000));
	my ($retries) = ($summary // '') =~ /"retries":(\d+)/;
	cmp_ok($retries // 0, '>', 0, "$sdk: the SDK did retry");
	like($summary // '', qr/"stoppedBy":"file"/, "$sdk: it was sending until after the restarts");
	open(my $ids, '<', "$tmp/$sdk.ids") or die "no ids from $sdk: $!";
	while (my $line = <$ids>)
	{
		chomp $line;
		my ($id) = split /\t/, $line;
		$sent{$id} = "restart_$sdk" if $id ne '';
	}
	close $ids;
}
cmp_ok(scalar(keys %sent), '>=', 3000, 'at least 3,000 events sent');

ok($node->poll_query_until('cdp', 'SELECT count(*) FROM cdp.inbox', '0'), 'the inbox drains');
my %rows;
for my $row (split /\n/,
	sql(q{SELECT message_id || ' ' || source FROM cdp.events WHERE message_id LIKE 'rs-%'}))
{
	my ($id, $source) = split / /, $row;
	push @{ $rows{$id} }, $source;
}
my @missing = grep { !exists $rows{$_} } sort keys %sent;
my @twice = grep { @{ $rows{$_} } > 1 } sort keys %rows;
my @extra = grep { !exists $sent{$_} } sort keys %rows;
my @wrong = grep { exists $sent{$_} && $rows{$_}[0] ne $sent{$_} } sort keys %rows;
is(scalar(@missing), 0, 'every messageId is stored') or diag("missing: @missing[0 .. ($#missing < 9 ? $#missing : 9)]");
is(scalar(@twice), 0, 'none twice') or diag("twice: @twice[0 .. ($#twice < 9 ? $#twice : 9)]");
is(scalar(@extra), 0, 'nothing stored that was not sent');
is(scalar(@wrong), 0, 'each under the source of the key that sent it');
is(sql(q{SELECT count(*) FROM cdp.dead_letters}), '0', 'nothing dead-lettered');

$node->stop;
done_testing();
