# The audience change feed: every entry and exit in the outbox is also a
# logical decoding message (prefix 'cdp'), in commit order, exactly once,
# only for people who granted the audience's purpose; nothing of a
# transaction that rolled back.  Decoded with contrib's test_decoding, with
# the ingest worker storing the events.  First with a user's triggers on the
# outbox and the stays (the rows go in by INSERT statements, and the feed
# tells what the triggers let in, as they changed it), then without (the
# rows go in directly).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('feed');
$node->init(allows_streaming => 'logical');
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'cdp'
cdp.ingest_workers = 1
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE cdp');

sub sql { return $node->safe_psql('cdp', $_[0]); }

sql('CREATE EXTENSION pg_cdp');
sql(q{SELECT cdp.define_trait('plan', 'text')});
sql(q{SELECT cdp.define_computed_trait('orders', 'count', 'Order')});
sql(q{SELECT cdp.define_audience('pro', 'plan = ''pro''')});
sql(q{SELECT cdp.define_audience('pro_buyers', 'in_audience(''pro'') AND orders >= 1', 'marketing')});
sql(q{SELECT pg_create_logical_replication_slot('feed', 'test_decoding')});
# the worker commits its batches without waiting for their WAL, but not one
# that writes to the change feed (a consumer acts on what it reads): a
# deferred trigger, fired after the feed's own, records what its commit runs
# with
sql(q{CREATE TABLE feed_commits (sync text);
	CREATE FUNCTION note_feed_commit() RETURNS trigger LANGUAGE plpgsql AS
	  $$BEGIN INSERT INTO public.feed_commits VALUES (current_setting('synchronous_commit')); RETURN NULL; END$$;
	CREATE CONSTRAINT TRIGGER note_feed_commit AFTER INSERT ON cdp.audience_changes
	  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION note_feed_commit();});
# a user's triggers: one moves the time of pro's changes, one keeps vip's stays out
sql(q{SELECT cdp.define_audience('vip', 'plan = ''vip''')});
sql(q{CREATE FUNCTION shift_pro_at() RETURNS trigger LANGUAGE plpgsql AS
	  $$BEGIN IF NEW.audience = 'pro' THEN NEW.at := NEW.at + interval '1 second'; END IF; RETURN NEW; END$$;
	CREATE TRIGGER shift_pro_at BEFORE INSERT ON cdp.audience_changes
	  FOR EACH ROW EXECUTE FUNCTION shift_pro_at();
	CREATE FUNCTION keep_out_vip() RETURNS trigger LANGUAGE plpgsql AS
	  $$BEGIN IF NEW.audience_id = (SELECT id FROM cdp.audiences WHERE name = 'vip') THEN RETURN NULL; END IF;
	    RETURN NEW; END$$;
	CREATE TRIGGER keep_out_vip BEFORE INSERT ON cdp.audience_spans
	  FOR EACH ROW EXECUTE FUNCTION keep_out_vip();});

# ten people become pro; half of them buy; the even ones granted marketing
for my $i (1 .. 10)
{
	sql(qq{SELECT cdp.identify('u$i', '{"plan": "pro"}')});
	sql(qq{SELECT cdp.set_consent('user_id:u$i', 'marketing', true)}) if $i % 2 == 0;
	sql(qq{SELECT cdp.track('u$i', 'Order')}) if $i <= 5;
}
sql(q{SELECT cdp.identify('u11', '{"plan": "vip"}')});
ok($node->poll_query_until('cdp', q{SELECT count(*) FROM cdp.inbox}, '0'), 'the worker drained the inbox');
is(sql(q{SELECT count(*) FROM cdp.audience_history WHERE audience = 'vip'})
	. sql(q{SELECT count(*) FROM cdp.audience_changes WHERE audience = 'vip'}), '00',
	"a stay a user's trigger kept out has no entry in the feed");
is(sql(q{SELECT count(*) FROM cdp.audience_changes c JOIN cdp.audience_spans s ON s.profile_id = c.profile_id
	JOIN cdp.audiences a ON a.id = s.audience_id AND a.name = c.audience
	WHERE c.audience = 'pro' AND c.at = s.entered_at + interval '1 second'}), '10',
	"the entries a user's trigger moved are stored as moved");
cmp_ok(sql('SELECT count(*) FROM feed_commits'), '>', 0, 'the worker wrote to the change feed');
is(sql(q{SELECT string_agg(DISTINCT sync, ',') FROM feed_commits}), 'on',
	'a batch that writes to the change feed waits for its commit to be durable');
# without the triggers (the rows go in directly), three leave pro (and so pro_buyers)
sql(q{DROP TRIGGER shift_pro_at ON cdp.audience_changes; DROP TRIGGER keep_out_vip ON cdp.audience_spans;
	DROP TRIGGER note_feed_commit ON cdp.audience_changes});
sql(qq{SELECT cdp.identify('u$_', '{"plan": "free"}')}) for (1, 2, 6);
ok($node->poll_query_until('cdp', q{SELECT count(*) FROM cdp.inbox}, '0'), 'and again');
# a transaction that rolls back: its evaluation leaves no trace
$node->safe_psql('cdp', q{BEGIN;
	SELECT cdp.identify('u9', '{"plan": "free"}');
	SELECT cdp.process_inbox();
	ROLLBACK;});

my @outbox = split /\n/, sql(q{SELECT id || ' ' || audience || ' ' || profile_id || ' ' || change
	FROM cdp.audience_changes ORDER BY id});
my @decoded;
my @content;
foreach my $line (split /\n/, sql(q{SELECT data FROM pg_logical_slot_get_changes('feed', NULL, NULL)
	WHERE data LIKE 'message:%'}))
{
	if ($line =~ /prefix: cdp, sz: \d+ content:(.*)$/)
	{
		push @content, $1;
		push @decoded, sql(qq{SELECT (j->>'id') || ' ' || (j->>'audience') || ' ' || (j->>'profile_id') || ' ' || (j->>'change')
			FROM (SELECT '$1'::jsonb AS j) x});
	}
}
is(scalar(@outbox), 10 + 3 + 2 + 1, 'the outbox: 10 entered pro, 3 left; 2 pro buyers who granted marketing entered, 1 left');
is_deeply(\@decoded, \@outbox, 'the logical messages are the outbox rows, in order, each once');
is_deeply(\@content, [ split /\n/, sql(q{SELECT jsonb_build_object('id', id, 'audience', audience, 'profile_id', profile_id,
	'change', change, 'at', at)::text FROM cdp.audience_changes ORDER BY id}) ],
	"each message's text is its row as a JSON object, byte for byte");

# only people who granted marketing appear for pro_buyers
is(sql(q{SELECT count(*) FROM cdp.audience_changes c
	JOIN cdp.profile_records r ON r.profile_id = c.profile_id
	WHERE c.audience = 'pro_buyers' AND NOT cdp.consent_granted(r.consent, 'marketing')}), '0',
	"no change of a person who did not grant the audience's purpose");
is(sql(q{SELECT count(*) FROM cdp.audience_members WHERE audience = 'pro_buyers'}), '3',
	'yet every buyer who is pro is a member (u3, u4, u5)');
is(sql(q{SELECT string_agg(change, ',' ORDER BY id) FROM cdp.audience_changes
	WHERE audience = 'pro_buyers'}), 'entered,entered,exited',
	'the feed: u2 and u4 entered, u2 exited');

done_testing();
