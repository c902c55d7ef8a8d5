# What the HTTP endpoint's tests share: a node serving the endpoint, and a
# small HTTP/1.1 client over plain sockets, so that a test controls every
# byte it sends (no Content-Type, a false Content-Length, chunks, a header
# byte at a time) and sees every byte of the answer.
package CdpHttp;

use strict;
use warnings;
use Exporter 'import';
use IO::Compress::Deflate qw(deflate $DeflateError);
use IO::Compress::Gzip qw(gzip $GzipError);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use Time::HiRes qw(time);

our @EXPORT = qw(start_http_node http_connect send_request read_response http_request
  post basic gzipped track_body wait_http wait_drained error_of tally_of);

# how long any single answer may take before the client gives up
our $ANSWER_TIMEOUT = 60;

my $json = JSON::PP->new->canonical;

# answered requests by the endpoint's metrics label and status, as sent here
my %tally;

# the path label /metrics counts a request under
sub label_of
{
	my ($path) = @_;
	my %long = (t => 'track', i => 'identify', p => 'page', s => 'screen', g => 'group',
		a => 'alias', b => 'batch', import => 'batch');
	return $path if $path =~ m{^/(health|metrics)$};
	return "/v1/profiles/{identifier}/$1" if $path =~ m{^/v1/profiles/.+/(traits|audiences)$};
	return "/v1/$1" if $path =~ m{^/v1/(track|identify|page|screen|group|alias|batch)$};
	return "/v1/$long{$1}" if $path =~ m{^/v1/(t|i|p|s|g|a|b|import)$};
	return 'other';
}

sub tally_of { my ($label, $status) = @_; return $tally{$label}{$status} // 0; }

# A node with pg_cdp preloaded, installed in postgres and serving HTTP on a
# free port, with the extra settings given; returns (node, port) once
# /health answers.
sub start_http_node
{
	my ($name, $conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	$node->init;
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'postgres'
cdp.http_port = $port
max_worker_processes = 16
restart_after_crash = on
} . ($conf // ''));
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION pg_cdp');
	die "the HTTP endpoint did not start on port $port" unless wait_http($port);
	return ($node, $port);
}

# wait (bounded) until GET /health answers 200
sub wait_http
{
	my ($port) = @_;
	my $until = time + 60;
	while (time < $until)
	{
		my $sock = http_connect($port);
		if ($sock)
		{
			send_request($sock, 'GET', '/health');
			my $r = read_response($sock, 5);
			close $sock;
			return 1 if $r->{status} == 200;
		}
		select(undef, undef, undef, 0.2);
	}
	return 0;
}

sub http_connect
{
	my ($port) = @_;
	return IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
		Proto => 'tcp', Timeout => 10);
}

# Send one request: headers is a list of "Name: value"; a Content-Length is
# added for a body unless the headers set Content-Length or Transfer-Encoding.
# Returns false when the connection is gone.
sub send_request
{
	my ($sock, $method, $path, $body, @headers) = @_;
	my $text = "$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\n";
	$text .= "$_\r\n" for @headers;
	$text .= "Content-Length: " . length($body) . "\r\n"
	  if defined $body && !grep { /^(Content-Length|Transfer-Encoding):/i } @headers;
	$text .= "\r\n" . ($body // '');
	${*$sock}{cdp_path} = $path;
	local $SIG{PIPE} = 'IGNORE';
	my $off = 0;
	while ($off < length $text)
	{
		my $n = syswrite($sock, $text, length($text) - $off, $off);
		return 0 unless defined $n && $n > 0;
		$off += $n;
	}
	return 1;
}

# more bytes from the socket into its buffer; false at its end or timeout
sub fill
{
	my ($sock, $until) = @_;
	my $wait = $until - time;
	return 0 if $wait <= 0;
	return 0 unless IO::Select->new($sock)->can_read($wait);
	my $n = sysread($sock, my $chunk, 65536);
	return 0 unless $n;
	${*$sock}{cdp_buf} .= $chunk;
	return 1;
}

# Read one answer: {status, headers (lower-case names), body, json}; status 0
# with {error} 'closed' or 'timeout' when none came.  A connection the
# server closed has {closed} set.
sub read_response
{
	my ($sock, $timeout) = @_;
	my $until = time + ($timeout // $ANSWER_TIMEOUT);
	${*$sock}{cdp_buf} //= '';
	my $buf = \${*$sock}{cdp_buf};
	while ($$buf !~ /\r\n\r\n/)
	{
		next if fill($sock, $until);
		return { status => 0, error => (time >= $until ? 'timeout' : 'closed'), headers => {} };
	}
	$$buf =~ s/^(.*?)\r\n\r\n//s;
	my ($status_line, @lines) = split /\r\n/, $1;
	my ($status) = $status_line =~ m{^HTTP/1\.[01] (\d{3})};
	my %h;
	for (@lines)
	{
		my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
		$h{lc $k} = $v;
	}
	# an interim answer (100 Continue) has no body, and the final one follows
	return { status => $status, headers => \%h, body => '' } if ($status // 0) =~ /^1\d\d$/;
	my $body = '';
	if (defined $h{'content-length'})
	{
		while (length($$buf) < $h{'content-length'})
		{
			last unless fill($sock, $until);
		}
		$body = substr($$buf, 0, $h{'content-length'}, '');
	}
	else
	{
		1 while fill($sock, $until);
		$body = $$buf;
		$$buf = '';
	}
	my $r = { status => $status // 0, headers => \%h, body => $body };
	$r->{json} = eval { $json->decode($body) } if $body =~ /^\s*\{/;
	$tally{ label_of(${*$sock}{cdp_path} // '') }{ $r->{status} }++ if $r->{status};
	return $r;
}

# one request on a new connection, closed after its answer
sub http_request
{
	my ($port, $method, $path, $body, @headers) = @_;
	my $sock = http_connect($port)
	  or return { status => 0, error => "cannot connect: $!", headers => {} };
	send_request($sock, $method, $path, $body, @headers);
	my $r = read_response($sock);
	close $sock;
	return $r;
}

sub basic
{
	my ($user_pass) = @_;
	return 'Authorization: Basic ' . encode_base64($user_pass, '');
}

sub gzipped
{
	my ($text) = @_;
	gzip(\$text => \my $out) or die "gzip failed: $GzipError";
	return $out;
}

# a track call's body with this messageId
sub track_body
{
	my ($id) = @_;
	return $json->encode({ userId => "u-$id", event => 'Tracked', messageId => $id });
}

# POST a message (a hash or array, sent as JSON, or text sent as is);
# options: key (Basic with "key:"), gzip or deflate, headers (array of more headers)
sub post
{
	my ($port, $path, $msg, %o) = @_;
	my $body = ref $msg ? $json->encode($msg) : $msg;
	my @headers = @{ $o{headers} // [] };
	push @headers, basic("$o{key}:") if defined $o{key};
	if ($o{gzip})
	{
		$body = gzipped($body);
		push @headers, 'Content-Encoding: gzip';
	}
	if ($o{deflate})
	{
		my $text = $body;
		deflate(\$text => \$body) or die "deflate failed: $DeflateError";
		push @headers, 'Content-Encoding: deflate';
	}
	return http_request($port, 'POST', $path, $body, @headers);
}

# "status error" of an answer, to compare in one check
sub error_of
{
	my ($r) = @_;
	my $j = $r->{json} // {};
	my $success = defined $j->{success} ? ($j->{success} ? 'true' : 'false') : '-';
	return "$r->{status} $success " . ($j->{error} // '-');
}

# wait (bounded) until the ingest workers have emptied the inbox
sub wait_drained
{
	my ($node) = @_;
	return $node->poll_query_until('postgres', 'SELECT count(*) FROM cdp.inbox', '0');
}

1;
