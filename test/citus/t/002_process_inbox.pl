# Events stored by cdp.process_inbox() into a cdp.events distributed by hand
# with create_distributed_table reach the workers' shards: Citus counts them,
# the shards hold them, the coordinator's partitions stay empty shells.  An
# event without a profile is stored (profile_id 0) and read as one without
# a profile; a partition made on demand is distributed; a row the shards
# refuse becomes a dead letter with its payload, never a silent loss.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/..";
use CdpCitus;
use Test::More;

my $c = start_citus_cluster('inbox');
my $sql = $c->{sql};
my $coord = $c->{coordinator};

# the bytes the coordinator's own partitions hold (reading them with a query
# would be answered by the shards)
my $local_bytes = q{SELECT sum(pg_relation_size(relid))
	  FROM pg_partition_tree('cdp.events') WHERE isleaf};

$sql->(q{SELECT create_distributed_table('cdp.events', 'profile_id')});

$sql->(q{SELECT cdp.ingest(jsonb_build_object('batch', (
	SELECT jsonb_agg(jsonb_build_object('type', 'track', 'event', 'Viewed',
	         'userId', 'u' || (i % 7), 'messageId', 'm-' || i,
	         'timestamp', now() - make_interval(hours => i)))
	  FROM generate_series(1, 60) i)))});
is($sql->(q{SELECT cdp.process_inbox()}), '60', 'process_inbox takes every message');
is($sql->(q{SELECT count(*) FROM cdp.dead_letters}), '0', 'no dead letter');
is($sql->(q{SELECT count(*) FROM cdp.events}), '60', 'Citus counts what was stored');
is(on_shards($c, 'cdp.events'), 60, 'the workers\' shards hold the rows');
is($sql->(q{SELECT count(*) FROM cdp.events WHERE event = 'Viewed' AND profile_id > 0}),
	'60', 'the rows carry their resolved profile');
is($coord->safe_psql('cdp', $local_bytes), '0', 'the coordinator\'s shell partitions are empty');
is($sql->(q{SELECT count(DISTINCT e.profile_id) FROM cdp.events_resolved e
	JOIN cdp.identities i ON i.profile_id = e.profile_id}), '7',
	'events_resolved joins the events to the profiles on the coordinator');

# an event whose only identifier is blocked: stored without a profile
$sql->(q{SELECT cdp.block_identifier('anonymous_id', 'anon-blocked')});
$sql->(q{SELECT cdp.ingest('{"type": "track", "event": "Anonymous Visit",
	"anonymousId": "anon-blocked", "messageId": "unresolved-1"}')});
is($sql->(q{SELECT cdp.process_inbox()}), '1', 'an unresolved event is taken');
is($sql->(q{SELECT count(*) FROM cdp.dead_letters}), '0', 'and not dead-lettered');
is($sql->(q{SELECT profile_id FROM cdp.events WHERE message_id = 'unresolved-1'}), '0',
	'it is stored with profile 0, as a distribution column cannot be NULL');
is($sql->(q{SELECT profile_id IS NULL FROM cdp.events_resolved WHERE message_id = 'unresolved-1'}),
	't', 'events_resolved reads it as an event without a profile');
# distributed by hand, cdp.events_resolved is still the single node's
# branches (right, but each pulled whole); cdp.distribute() makes it one join
my $one_person = q{SELECT string_agg(message_id, ',' ORDER BY message_id) FROM cdp.events_resolved
	WHERE profile_id = cdp.resolve('user_id:u3')};
my $before = $sql->($one_person);
# the distributed scans in its plan: more than one when Citus first runs
# parts of it over the shards and brings their rows to the coordinator
my $pulled = q{SELECT count(*) > 1 FROM regexp_matches(cdp_explain_text(%s), 'Custom Scan \(Citus Adaptive\)', 'g')};
$sql->(q{CREATE FUNCTION cdp_explain_text(q text) RETURNS text LANGUAGE plpgsql AS $f$
	DECLARE l text; t text := ''; BEGIN
	FOR l IN EXECUTE 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) ' || q LOOP t := t || l || E'\n'; END LOOP;
	RETURN t; END $f$});
my $explain_one = sprintf($pulled, $sql->(q{SELECT quote_literal($q$} . $one_person . q{$q$)}));
is($sql->($explain_one), 't', 'by hand: a person\'s events pull rows through the coordinator');
is($sql->('SELECT cdp.distribute()'), 'f', 'cdp.distribute() after distributing by hand: already done');
is($sql->(q{SELECT pg_get_viewdef('cdp.events_resolved') LIKE '%UNION%'}), 'f',
	'but cdp.events_resolved became one join');
is($sql->($explain_one), 'f', 'which Citus pushes down whole');
is($sql->($one_person), $before, 'with the same answer');
is(on_shards($c, 'cdp.events'), 61, 'it is on a shard');
# erasure and export find it among the events without a profile, by its raw ids
my $subject = q{cdp.subject_events('cdp.events', '{}',
	ARRAY[cdp.identifier('anonymous_id', 'anon-blocked')], %s)};
is($sql->(sprintf(q{SELECT string_agg(DISTINCT x->>'message_id', ',')
	FROM jsonb_array_elements(%s->'events') x}, sprintf($subject, 'false'))), 'unresolved-1',
	'an export finds the event stored with profile 0');
is($sql->(sprintf(q{SELECT (%s - 'count')::text}, sprintf($subject, 'true'))), '{"others": []}',
	'an erasure deletes it as the person\'s own, not as another profile\'s');
is(on_shards($c, 'cdp.events'), 60, 'from its shard');

# an event in a range no partition covers yet: the partition made for it
# is distributed like the others
my $parts_before = $sql->(q{SELECT count(*) FROM pg_partition_tree('cdp.events') WHERE isleaf});
$sql->(q{SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'Old Visit',
	'userId', 'u1', 'messageId', 'old-1', 'timestamp', now() - interval '20 days'))});
is($sql->(q{SELECT cdp.process_inbox()}), '1', 'an old event is taken');
is($sql->(q{SELECT count(*) FROM pg_partition_tree('cdp.events') WHERE isleaf}),
	$parts_before + 1, 'a partition was made for it');
is($sql->(q{SELECT count(*) FROM pg_partition_tree('cdp.events') t
	WHERE t.isleaf AND t.relid NOT IN (SELECT logicalrelid FROM pg_dist_partition)}), '0',
	'every partition, the new one included, is distributed');
is($sql->(q{SELECT count(*) FROM cdp.events WHERE message_id = 'old-1'}), '1',
	'the old event is stored through Citus');
is($coord->safe_psql('cdp', $local_bytes), '0', 'and not in the coordinator\'s new partition');

# a constraint on pg_cdp's columns: its violations are dead letters before
# anything is stored, as on a single node
$sql->(q{ALTER TABLE cdp.events ADD CONSTRAINT no_bad CHECK (event IS DISTINCT FROM 'Bad')});
# one on a column users added, which only the shards can check: the event
# it refuses becomes a dead letter, the others are stored
$sql->(q{ALTER TABLE cdp.events ADD COLUMN plan text DEFAULT 'free'});
$sql->(q{ALTER TABLE cdp.events ADD CONSTRAINT premium CHECK (plan <> 'free' OR event IS DISTINCT FROM 'Premium')});
$sql->(q{SELECT cdp.ingest(jsonb_build_object('batch', jsonb_build_array(
	jsonb_build_object('type', 'track', 'userId', 'u1', 'event', 'Good', 'messageId', 'c-1'),
	jsonb_build_object('type', 'track', 'userId', 'u2', 'event', 'Bad', 'messageId', 'c-2'),
	jsonb_build_object('type', 'track', 'userId', 'u3', 'event', 'Premium', 'messageId', 'c-3'),
	jsonb_build_object('type', 'track', 'userId', 'u4', 'event', 'Good', 'messageId', 'c-4'))))});
is($sql->(q{SELECT cdp.process_inbox()}), '4', 'the four messages are taken');
is($sql->(q{SELECT string_agg(message_id, ',' ORDER BY message_id) FROM cdp.events
	WHERE message_id LIKE 'c-%'}), 'c-1,c-4', 'the good ones are stored');
is($sql->(q{SELECT string_agg(error_code || ':' || (payload::jsonb->>'messageId'), ',' ORDER BY id)
	FROM cdp.dead_letters}), 'constraint_violation:c-2,processing_error:c-3',
	'each refused one is a dead letter with its payload');
like($sql->(q{SELECT error_message FROM cdp.dead_letters WHERE error_code = 'processing_error'}),
	qr/premium/, 'the shard\'s refusal is the reason');
is($coord->safe_psql('cdp', $local_bytes), '0', 'the coordinator\'s partitions stay empty');

# a worker that is down is no message's fault: the call fails and leaves the
# messages in the inbox, to be stored once the worker is back
my $w2 = $c->{workers}[1];
$w2->stop('fast');
$sql->(q{SELECT cdp.ingest(jsonb_build_object('batch', (
	SELECT jsonb_agg(jsonb_build_object('type', 'track', 'event', 'While Down',
	         'userId', 'd' || i, 'messageId', 'down-' || i))
	  FROM generate_series(1, 20) i)))});
my ($rc, $out, $err) = $coord->psql('cdp', 'SELECT cdp.process_inbox()');
isnt($rc, 0, 'process_inbox fails while a worker is down');
like($err, qr/ERROR/, 'with an error');
is($sql->(q{SELECT count(*) FROM cdp.inbox}), '1', 'the messages stay in the inbox');
is($sql->(q{SELECT count(*) FROM cdp.dead_letters WHERE payload LIKE '%While Down%'}), '0',
	'none is dead-lettered');
$w2->start;
is($sql->(q{SELECT cdp.process_inbox()}), '20', 'once the worker is back they are taken');
is($sql->(q{SELECT count(*) FROM cdp.events WHERE event = 'While Down'}), '20', 'and stored');
is($coord->safe_psql('cdp', $local_bytes), '0', 'on the shards');

# draining in committed chunks stores through Citus too
$sql->(q{SELECT count(cdp.ingest(jsonb_build_object('type', 'track', 'event', 'Drained',
	'userId', 'dr' || i, 'messageId', 'drained-' || i))) FROM generate_series(1, 30) i});
$sql->(q{CALL cdp.drain_inbox(chunk => 10)});
is($sql->(q{SELECT count(*) FROM cdp.events WHERE event = 'Drained'}), '30',
	'CALL cdp.drain_inbox() stores every message through Citus');
is($coord->safe_psql('cdp', $local_bytes), '0', 'on the shards');

stop_citus_cluster($c);
done_testing();
