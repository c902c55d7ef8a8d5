# The HTTP endpoint on a standby: in recovery it takes no message and does
# not call itself healthy (clients retry elsewhere or later); promoted, it
# serves the tracking API with the write keys it replicated.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;
use CdpHttp;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my ($primary, $primary_port) = start_http_node('http_primary', qq{
wal_level = replica
max_wal_senders = 4
});
my $key = $primary->safe_psql('postgres', q{SELECT cdp.create_source('web')});
is(post($primary_port, '/v1/track', { userId => 'u1', event => 'E', messageId => 'on-primary' },
	key => $key)->{status}, 200, 'the primary acknowledges a message');

$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('http_standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
my $port = PostgreSQL::Test::Cluster::get_free_port();
$standby->append_conf('postgresql.conf', "cdp.http_port = $port\n");
$standby->start;
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', q{SELECT count(*) FROM cdp.sources WHERE name = 'web'}), '1',
	'the standby has the source');
my $r = post($port, '/v1/track', { userId => 'u1', event => 'E', messageId => 'on-standby' },
	key => $key);
like($r->{status}, qr/^(0|503)$/,
	"the standby does not take a message (refused connection or 503): $r->{status}");
$r = http_request($port, 'GET', '/health', undef);
like($r->{status}, qr/^(0|503)$/, "nor says it is healthy: $r->{status}");

$standby->promote;
ok(wait_http($port), 'promoted, it listens');
$r = post($port, '/v1/track', { userId => 'u1', event => 'E', messageId => 'after-promote' },
	key => $key);
is(error_of($r), '200 true -', 'and acknowledges a message with the replicated key');
ok(wait_drained($standby), 'which its workers store');
is($standby->safe_psql('postgres', q{SELECT string_agg(message_id, ',' ORDER BY message_id)
	FROM cdp.events}), 'after-promote,on-primary', 'beside what the primary stored');

$standby->stop;
$primary->stop;
done_testing();
