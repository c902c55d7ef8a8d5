# An ingest worker keeps the stored identities it read for its later
# batches (cdp.identity_cache_size), and what it keeps never outlives a
# change of the graph: after a split, a link that merges and forget, and
# after splits and links that race the worker, the next message of a kept
# identifier goes where a lookup would send it, and a kept pair of
# identifiers is relinked after a rebuild unlinked it.  Identifiers the
# worker stored itself are kept too.  cdp.worker_stats counts
# identifiers served from what was kept.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('recall');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'cdp'
cdp.ingest_workers = 1
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE cdp');

sub sql { return $node->safe_psql('cdp', $_[0]); }

sub wait_for
{
	my ($query, $expected, $what) = @_;
	ok($node->poll_query_until('cdp', $query, $expected), $what)
	  or diag("last: " . sql($query));
}

sql('CREATE EXTENSION pg_cdp');
wait_for(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cdp ingest worker'},
	'1', 'the worker runs');

my $n = 0;

# one track message of anonymous id $anon (and user id $user), stored by the worker
sub send_track
{
	my ($anon, $user) = @_;
	$n++;
	my $user_json = defined $user ? qq{, "userId": "$user"} : '';
	sql(qq{SELECT cdp.ingest('{"type": "track", "event": "e", "messageId": "m$n",
		"anonymousId": "$anon"$user_json}')});
	$node->poll_query_until('cdp', qq{SELECT count(*) FROM cdp.events WHERE message_id = 'm$n'}, '1')
	  or die "message m$n was not stored";
	return "m$n";
}

# the profile message $mid's event resolves to, and the one holding anonymous id $anon
sub lands_where_held
{
	my ($mid, $anon, $what) = @_;
	is(sql(qq{SELECT profile_id FROM cdp.events_resolved WHERE message_id = '$mid'}),
		sql(qq{SELECT cdp.resolve('anonymous_id:$anon')}), $what);
}

sub recalled
{
	return sql(q{SELECT coalesce(sum(identities_recalled), 0) FROM cdp.worker_stats});
}

# a1 and u1 on one profile; a1 looked up once (then kept), then served from what was kept
send_track('a1', 'u1');
send_track('a1');
my $before = recalled();
send_track('a1');
cmp_ok(recalled(), '>', $before, 'a message of an identifier read before is served from what the worker kept');

# an identifier the worker stored itself is kept as it wrote it: its next
# message is served without a lookup (stats are reported after the commit)
send_track('a5');
$before = recalled();
send_track('a5');
ok($node->poll_query_until('cdp', qq{SELECT sum(identities_recalled) > $before FROM cdp.worker_stats}),
	'an identifier the worker stored itself is served from what it kept on its next message');
lands_where_held(send_track('a5'), 'a5', '... and goes to the profile it was stored with');

# a split moves a1 to a profile of its own: the next message of a1 goes there
my $u1_profile = sql(q{SELECT cdp.resolve('user_id:u1')});
sql(qq{SELECT count(*) FROM cdp.split_profile($u1_profile, 'anonymous_id:a1')});
isnt(sql(q{SELECT cdp.resolve('anonymous_id:a1')}), $u1_profile, 'the split moved a1 away from u1');
lands_where_held(send_track('a1'), 'a1', 'after a split, a kept identifier goes to the profile it moved to');
lands_where_held(send_track('a1'), 'a1', '... and stays there');

# a link merges a2's profile into another: the next message of a2 follows
send_track('a2');
send_track('a2');
send_track('a2');
sql(q{SELECT cdp.link('anonymous_id:a2', 'user_id:u1')});
lands_where_held(send_track('a2'), 'a2', 'after a link merged it, a kept identifier goes to the merged profile');

# forget: a kept identifier's later messages are suppressed, not stored
send_track('a4');
send_track('a4');
sql(q{SELECT cdp.forget('anonymous_id:a4', 'test')});
$n++;
sql(qq{SELECT cdp.ingest('{"type": "track", "event": "e", "messageId": "m$n", "anonymousId": "a4"}')});
wait_for(q{SELECT count(*) FROM cdp.inbox}, '0', 'the message after forget is taken');
is(sql(qq{SELECT count(*) FROM cdp.events WHERE message_id = 'm$n'}), '0',
	'after forget, a kept identifier is not stored again');
is(sql(q{SELECT count(*) FROM cdp.identities WHERE identifier::text = 'anonymous_id:a4'}), '0',
	'... nor recreated');

# a kept pair (stored, its message linking both ends) never outlives a
# rebuild that took one end's link away: once the rule is lifted, the next
# message linking both ends becomes the pair's message again
send_track('pa', 'pu');
# a message that changes the graph (a new device) reads whether the pair's message linked it
$n++;
sql(qq{SELECT cdp.ingest('{"type": "track", "event": "e", "messageId": "m$n", "anonymousId": "pa",
	"userId": "pu", "context": {"device": {"id": "pd"}}}')});
wait_for(qq{SELECT count(*) FROM cdp.events WHERE message_id = 'm$n'}, '1', 'a new device joins pa and pu');
send_track('pa', 'pu');
sql(q{INSERT INTO cdp.blocked_identifiers VALUES ('user_id', 'pu', false)});
sql(q{SELECT cdp.rebuild_identities()});
isnt(sql(q{SELECT cdp.resolve('anonymous_id:pa')}), sql(q{SELECT cdp.resolve('user_id:pu')}),
	'the rebuild under the blocking rule took pa and pu apart');
sql(q{DELETE FROM cdp.blocked_identifiers WHERE pattern = 'pu'});
my $relinking = send_track('pa', 'pu');
is(sql(q{SELECT message_id FROM cdp.identity_pairs
	WHERE 'anonymous_id:pa' IN (a::text, b::text) AND 'user_id:pu' IN (a::text, b::text)}),
	$relinking, 'after the rebuild, the next message linking both ends is the pair\'s message');

$before = recalled();

# Splits and links racing the worker: 40 rounds, each a transaction of 60
# messages (30 visitors, a third logging in as one of 10 users) and, without
# waiting for the worker, a split or a link.  Then, with the graph left
# alone, every visitor comes back twice: each of those events must land on
# the profile a lookup gives its visitor, whatever the worker kept.
srand(20261204);
sql(q{CREATE TABLE race_changes (n int)});
for my $round (1 .. 40)
{
	my @msgs;
	for my $k (1 .. 60)
	{
		my $anon = 'r' . int(rand(30));
		my $user = rand() < 0.33 ? ', "userId": "ru' . int(rand(10)) . '"' : '';
		push @msgs, qq!{"type": "track", "event": "e", "messageId": "race-$round-$k", "anonymousId": "$anon"$user}!;
	}
	sql(q!SELECT cdp.ingest('{"batch": [! . join(', ', @msgs) . q!]}')!);
	# a change the rules refuse (a second user for a profile, a profile of
	# one identifier) is no change: only the ones that took effect count
	my $anon = 'r' . int(rand(30));
	my $change = $round % 2
	  ? qq{PERFORM cdp.split_profile(cdp.resolve('anonymous_id:$anon'), 'anonymous_id:$anon')}
	  : qq{PERFORM cdp.link('anonymous_id:$anon', 'user_id:ru} . int(rand(10)) . q{')};
	sql(qq{DO \$\$ BEGIN $change; INSERT INTO race_changes VALUES (1);
		EXCEPTION WHEN OTHERS THEN NULL; END \$\$});
}
my $changes = sql(q{SELECT count(*) FROM race_changes});
cmp_ok($changes, '>', 10, "splits and links took effect while the worker ran ($changes)");
wait_for(q{SELECT count(*) FROM cdp.inbox}, '0', 'the worker drained the racing rounds');
for my $visit (1 .. 2)
{
	sql(q!SELECT cdp.ingest('{"batch": [! . join(', ',
		map { qq!{"type": "track", "event": "e", "messageId": "back-$visit-$_", "anonymousId": "r$_"}! } 0 .. 29)
		. q!]}')!);
}
wait_for(q{SELECT count(*) FROM cdp.events WHERE message_id LIKE 'back-%'}, '60',
	'the returning visitors are stored');
is(sql(q{SELECT count(*) FROM cdp.events_resolved e
	WHERE e.message_id LIKE 'back-%'
	  AND e.profile_id IS DISTINCT FROM cdp.resolve(('anonymous_id:' || e.anonymous_id)::cdp.identifier)}),
	'0', 'after splits and links raced the worker, every returning visitor lands on its profile');
cmp_ok(recalled(), '>', $before, '... served partly from what the worker kept');

# cdp.identity_cache_size = 0: nothing is kept
$node->append_conf('postgresql.conf', "cdp.identity_cache_size = 0\n");
$node->reload;
sleep 1;
send_track('a5');
send_track('a5');
$before = recalled();
send_track('a5');
send_track('a5');
is(recalled(), $before, 'with cdp.identity_cache_size = 0 every identifier is looked up');

done_testing();
