# The HTTP endpoint's connections: several requests on one kept-alive
# connection; a thousand connections open at once, each answered; a silent
# connection closed after cdp.http_idle_timeout; a client that sends a byte
# at a time cut after cdp.http_request_timeout while others are served;
# past cdp.http_max_connections a connection waits.
use strict;
use warnings;

# a thousand client sockets need more descriptors than the usual soft limit
# of 1024: raise it (up to the hard limit) and start again
BEGIN
{
	if (!$ENV{CDP_HTTP_NOFILE_RAISED} && `sh -c 'ulimit -n'` + 0 < 4096)
	{
		$ENV{CDP_HTTP_NOFILE_RAISED} = 1;
		exec('sh', '-c', 'ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$@"',
			'sh', $^X, $0, @ARGV);
	}
}

use FindBin;
use lib $FindBin::Bin;
use CdpHttp;
use IO::Select;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my ($node, $port) = start_http_node('http_connections');
sub sql { return $node->safe_psql('postgres', $_[0]); }
my $key = sql(q{SELECT cdp.create_source('web')});
my $auth = basic("$key:");

sub metric
{
	my ($name) = @_;
	my $r = http_request($port, 'GET', '/metrics', undef);
	return $r->{body} =~ /^\Q$name\E (\S+)$/m ? $1 : -1;
}

# --- keep-alive: requests one after another on one connection
my $sock = http_connect($port);
my @answers;
for my $i (1 .. 5)
{
	send_request($sock, 'POST', '/v1/track', track_body("keep-$i"), $auth);
	push @answers, error_of(read_response($sock, 30));
	send_request($sock, 'GET', '/health');
	push @answers, read_response($sock, 30)->{status};
}
is("@answers", join(' ', ('200 true -', 200) x 5), 'ten requests on one kept-alive connection');
# three requests in one write (pipelined), answered in order
my $three = '';
for my $i (1 .. 3)
{
	my $body = track_body("pipelined-$i");
	$three .= "POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\n$auth\r\n"
	  . 'Content-Length: ' . length($body) . "\r\n\r\n$body";
}
syswrite($sock, $three);
@answers = map { error_of(read_response($sock, 30)) } 1 .. 3;
is(join(',', @answers), join(',', ('200 true -') x 3), 'three pipelined requests: three answers');
close $sock;

# --- a thousand connections open at once, then a request on each; every
# tenth is refused by a trigger on the inbox, which must not sink the others
# committed with it
sql(q{CREATE FUNCTION public.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS
	$$BEGIN IF NEW.payload LIKE '%poison-%' THEN RAISE EXCEPTION 'poison refused'; END IF;
	RETURN NEW; END$$;
	CREATE TRIGGER refuse_poison BEFORE INSERT ON cdp.inbox
	FOR EACH ROW EXECUTE FUNCTION public.refuse_poison()});
my $nofile = `sh -c 'ulimit -n'` + 0;
my $want = $nofile >= 1100 ? 1000 : $nofile - 100;
note("descriptors allowed: $nofile; connections opened: $want")
  if $want < 1000;
my @socks;
for my $i (1 .. $want)
{
	my $s = http_connect($port) or last;
	push @socks, $s;
}
is(scalar(@socks), $want, "$want connections open");
my $open = -1;
for (1 .. 300)
{
	$open = metric('cdp_http_connections');
	last if $open > $want;
	select(undef, undef, undef, 0.1);
}
cmp_ok($open, '>', $want, "the server holds all $want at once (and the one asking)");
send_request($socks[$_], 'POST', '/v1/track', track_body($_ % 10 ? "conc-$_" : "poison-$_"), $auth)
  for 0 .. $#socks;
my %index = map { ($socks[$_] => $_) } 0 .. $#socks;
my $select = IO::Select->new(@socks);
my %status;
my $until = time + 60;
while ($select->count && time < $until)
{
	for my $s ($select->can_read(1))
	{
		$status{ $index{$s} } = read_response($s, 10)->{status};
		$select->remove($s);
		close $s;
	}
}
my $poisoned = int(($want + 9) / 10);
is(scalar(grep { $status{$_} == 200 } grep { $_ % 10 } keys %status), $want - $poisoned,
	'each of the ' . ($want - $poisoned) . ' good ones is answered 200');
is(scalar(grep { $status{$_} >= 500 } grep { !($_ % 10) } keys %status), $poisoned,
	"each of the $poisoned refused by the trigger is answered 5xx");
ok(wait_drained($node), 'the inbox drains');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'conc-%'}), $want - $poisoned,
	'every good message is stored');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'poison-%'}), '0',
	'no refused one');
sql('DROP TRIGGER refuse_poison ON cdp.inbox');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'keep-%' OR message_id LIKE 'pipelined-%'}),
	'8', 'and those of the kept-alive connection');

# --- an idle connection is closed after cdp.http_idle_timeout
$node->append_conf('postgresql.conf', "cdp.http_idle_timeout = 2\n");
$node->restart;
ok(wait_http($port), 'restarted with cdp.http_idle_timeout = 2');

# true when the server closes the connection within $secs
sub closed_within
{
	my ($s, $secs) = @_;
	my $end = time + $secs;
	while (time < $end)
	{
		next unless IO::Select->new($s)->can_read($end - time);
		my $n = sysread($s, my $buf, 4096);
		return 1 if !$n;
	}
	return 0;
}
$sock = http_connect($port);
my $t0 = time;
ok(closed_within($sock, 20), 'a connection that never sends is closed');
note(sprintf('closed after %.1f s', time - $t0));
close $sock;
$sock = http_connect($port);
send_request($sock, 'POST', '/v1/track', track_body('idle-after'), $auth);
is(error_of(read_response($sock, 30)), '200 true -', 'a request on a connection');
ok(closed_within($sock, 20), 'which is closed when it then stays silent');
close $sock;

# --- slow clients are cut after cdp.http_request_timeout: one sending its
# headers a byte a second, one its body; meanwhile a client sending a
# request a second on one kept-alive connection is served throughout
$node->append_conf('postgresql.conf', "cdp.http_idle_timeout = 30\ncdp.http_request_timeout = 3\n");
$node->restart;
ok(wait_http($port), 'restarted with cdp.http_request_timeout = 3');
my %slow = (
	headers => { sock => http_connect($port), bytes => "POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1\r\n"
		  . "$auth\r\nX-Padding: " . ('p' x 40) . "\r\n" },
	body => { sock => http_connect($port), bytes => track_body('slow-body') . (' ' x 60) });
send_request($slow{body}{sock}, 'POST', '/v1/track', undef, $auth,
	'Content-Length: ' . length($slow{body}{bytes}));
my $steady = http_connect($port);
my @served;
$t0 = time;
{
	local $SIG{PIPE} = 'IGNORE';
	for my $i (0 .. 59)
	{
		for my $s (grep { !defined $_->{cut} } values %slow)
		{
			$s->{cut} = time - $t0
			  if !defined syswrite($s->{sock}, substr($s->{bytes}, $i, 1))
			  || closed_within($s->{sock}, 0.01);
		}
		send_request($steady, 'POST', '/v1/track', track_body("meanwhile-$i"), $auth);
		push @served, error_of(read_response($steady, 30));
		# go on for twice the timeout at least: the steady client must outlive it
		last if time - $t0 > 20 || (time - $t0 > 7 && !grep { !defined $_->{cut} } values %slow);
		select(undef, undef, undef, 1);
	}
}
for my $what (sort keys %slow)
{
	ok(defined $slow{$what}{cut}, "a client sending its $what a byte a second is cut off")
	  and note(sprintf('cut after %.1f s', $slow{$what}{cut}));
	close $slow{$what}{sock};
}
cmp_ok(scalar(@served), '>=', 6, 'meanwhile another sent a request a second on one connection');
is(join(',', grep { $_ ne '200 true -' } @served), '',
	'and each was answered 200, past the request timeout');
close $steady;
ok(wait_drained($node), 'the inbox drains');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'meanwhile-%'}),
	scalar(@served), 'their messages are stored');
is(sql(q{SELECT count(*) FROM cdp.events WHERE message_id = 'slow-body'}), '0',
	'nothing of the cut body');

# --- past cdp.http_max_connections a connection waits to be accepted
$node->append_conf('postgresql.conf',
	"cdp.http_request_timeout = 60\ncdp.http_max_connections = 16\n");
$node->restart;
ok(wait_http($port), 'restarted with cdp.http_max_connections = 16');
# sixteen connections, the last answered (connections are accepted in
# order, so all sixteen are)
my @idle = map { http_connect($port) } 1 .. 16;
send_request($idle[15], 'GET', '/health');
is(read_response($idle[15], 30)->{status}, 200, 'sixteen connections accepted');
$sock = http_connect($port);
ok($sock, 'a seventeenth connection is made (it waits in the backlog)');
send_request($sock, 'POST', '/v1/track', track_body('seventeenth'), $auth);
my $early = read_response($sock, 1);
is($early->{status} . ' ' . ($early->{error} // ''), '0 timeout',
	'it is not served while sixteen are open');
close $_ for @idle[0 .. 3];
is(error_of(read_response($sock, 30)), '200 true -', 'once some close, it is served');
cmp_ok(metric('cdp_http_connections'), '<=', 16, 'never more than sixteen open');
close $_ for $sock, @idle[4 .. 15];

$node->stop;
done_testing();
