# An erasure survives pg_dump and restore: the suppressed hashes, their salt
# and the forget log are dumped with the extension, so a forgotten person's
# next message is still dropped in the restored database, and forget keeps
# working there (its log's ids go on).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('dump');
$node->init;
$node->append_conf('postgresql.conf', qq{shared_preload_libraries = 'pg_cdp'});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE source');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->safe_psql('source', 'CREATE EXTENSION pg_cdp');

sub send_message
{
	my ($db, $user, $mid) = @_;
	return $node->safe_psql($db, qq{
		SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'e', 'userId', '$user',
			'messageId', '$mid', 'timestamp', '2026-05-01T10:00:00Z'));
		SELECT cdp.process_inbox()});
}

send_message('source', 'gone-user', 'm1');
$node->safe_psql('source', q{SELECT cdp.forget('user_id:gone-user', 'ticket 1')});

my $dump = $node->basedir . '/source.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('source'), '-f', $dump ], 'pg_dump');
# (the rest of the dump is not what this test is about: run it through)
$node->command_ok([ 'psql', '-X', '-q', '-d', $node->connstr('restored'), '-f', $dump ],
				  'the dump is restored');

is($node->safe_psql('restored', q{
	SELECT (SELECT count(*) FROM cdp.suppressions) || ',' || (SELECT count(*) FROM cdp.forget_log)
	       || ',' || (SELECT count(*) FROM cdp.suppression_salt)}),
   '1,1,1', 'the hash, the log and the salt are restored');

send_message('restored', 'gone-user', 'm2');
is($node->safe_psql('restored', q{
	SELECT (SELECT count(*) FROM cdp.events) || ',' || (SELECT count(*) FROM cdp.identities)
	       || ',' || (SELECT sum(dropped) FROM cdp.suppressions)}),
   '0,0,1', 'the forgotten person\'s next message is dropped after the restore');

send_message('restored', 'next-user', 'm3');
is($node->safe_psql('restored', q{SELECT (cdp.forget('user_id:next-user') ->> 'forget_id')}),
   '2', 'forget goes on in the restored database, its log numbered on');

$node->stop;
done_testing();
