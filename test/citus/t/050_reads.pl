# Reads, upkeep and erasure on a distributed cdp.events give the answers a
# single node gives: the same workload runs on a Citus cluster (cdp.events
# distributed by profile_id) and on a plain PostgreSQL with pg_cdp, and
# every answer is compared.  Covered: cdp.resolve in queries over
# cdp.events and cdp.events_resolved (also with parameters, past the plan
# cache's custom plans), profile and event views, cdp.export_subject,
# computed traits backfilled from the shards and recomputed after a split
# and a rebuild, audiences, forget,
# retention (drop and detach), cdp.partitions' sizes, the rebuild's recount
# reading only the profiles it touches, and a cdp function applied per row
# on the workers failing instead of answering from empty tables.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/..";
use CdpCitus;
use PostgreSQL::Test::Cluster;
use Test::More;

my $c = start_citus_cluster('reads');
my $coord = $c->{coordinator};

my $single = PostgreSQL::Test::Cluster->new('reads_single');
$single->init(allows_streaming => 0);
$single->append_conf('postgresql.conf', q{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'cdp'
cdp.ingest_workers = 0
cdp.maintenance_interval = 0
});
$single->start;
$single->safe_psql('postgres', 'CREATE DATABASE cdp');
$single->safe_psql('cdp', 'CREATE EXTENSION pg_cdp');

# run the same SQL on both; each answer as psql prints it unaligned
sub on_both
{
	my ($query) = @_;
	return map { scalar $_->safe_psql('cdp', $query) } ($coord, $single);
}

# the answer on Citus is the single node's
sub same
{
	my ($query, $name) = @_;
	my ($citus, $one) = on_both($query);
	is($citus, $one, $name);
	return $one;
}

# 30 anonymous visitors (a0..a29); 12 people identify with two of them each
# (so each is two merged profiles and their events sit under two ids); a
# device shared by two people, split later; orders and views to count
my $workload = q{
SET client_min_messages = warning;
SELECT cdp.ingest(format('{"type":"track","anonymousId":"a%s","event":"%s","properties":{"total":%s},"timestamp":"2026-11-%sT%s:00:00Z","messageId":"t%s"}',
       i % 30, CASE WHEN i % 3 = 0 THEN 'Order Completed' ELSE 'Viewed' END, (i * 7) % 100,
       10 + i % 15, 10 + i % 12, i)::jsonb)
  FROM generate_series(1, 600) i;
SELECT cdp.ingest(format('{"type":"identify","userId":"u%s","anonymousId":"a%s","traits":{"email":"p%s@x.io","plan":"%s"},"context":{"consent":{"categoryPreferences":{"Marketing":%s}}},"timestamp":"2026-11-26T09:00:00Z","messageId":"i%s"}',
       i % 12, i, i % 12, CASE WHEN i % 2 = 0 THEN 'pro' ELSE 'free' END,
       CASE WHEN i % 4 = 0 THEN 'true' ELSE 'false' END, i)::jsonb)
  FROM generate_series(0, 23) i;
SELECT cdp.ingest('{"type":"track","userId":"u1","event":"Viewed","context":{"device":{"id":"dev-9"}},"timestamp":"2026-11-27T09:00:00Z","messageId":"d1"}');
SELECT cdp.ingest('{"type":"track","userId":"u2","event":"Viewed","context":{"device":{"id":"dev-9"}},"timestamp":"2026-11-27T10:00:00Z","messageId":"d2"}');
SELECT cdp.process_inbox();
SELECT cdp.define_trait('email', 'text', 'marketing');
SELECT cdp.define_trait('plan', 'text');
SELECT cdp.define_computed_trait('orders', 'count', 'Order Completed');
DO $$ BEGIN WHILE cdp.backfill_step() IS NOT NULL LOOP END LOOP; END $$;
SELECT cdp.define_audience('big', 'orders >= 9');
CREATE SCHEMA bi;
SELECT cdp.create_profile_view('bi.people', 'analytics');
SELECT cdp.create_event_view('bi.events', 'analytics');
SELECT cdp.create_event_view('bi.mkt_events', 'marketing');
-- a profile named by its identifiers: profile ids need not be the same on both
CREATE FUNCTION public.who(p bigint) RETURNS text LANGUAGE sql STABLE
AS $f$ SELECT coalesce(string_agg(x::text, ',' ORDER BY x::text), 'none')
         FROM cdp.profile_identifiers(p) x $f$;
};
on_both($workload);
is($coord->safe_psql('cdp', 'SELECT count(*) FROM cdp.events'), '626', 'events stored');

# distributed by profile_id: cdp.distribute() where there is one, else by hand
if ($coord->safe_psql('cdp', q{SELECT to_regprocedure('cdp.distribute()') IS NOT NULL}) eq 't')
{
	$coord->safe_psql('cdp', 'SELECT cdp.distribute()');
}
else
{
	# the extension's own partitions on the workers are in Citus's way
	for my $w (@{ $c->{workers} })
	{
		my $drop = $w->safe_psql('cdp', q{
			SELECT string_agg(format('DROP TABLE %s;', inhrelid::regclass), ' ')
			  FROM pg_inherits WHERE inhparent = 'cdp.events'::regclass});
		$w->safe_psql('cdp', $drop) if $drop ne '';
	}
	$coord->safe_psql('cdp', q{
		SET client_min_messages = warning;
		SELECT create_distributed_table('cdp.events', 'profile_id')});
}
is($coord->safe_psql('cdp', q{SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'cdp.events'::regclass}),
	'1', 'cdp.events is distributed');
is(on_shards($c, 'cdp.events'), 626, 'the events are on the shards');

# after distribution: new visitors whose identify merges them into people
# already known, a message for a refused second user id (a violation: the
# event goes to another profile), and one with a blocked identifier only
# (stored without a profile)
on_both(q{
SELECT cdp.ingest(format('{"type":"track","anonymousId":"n%s","event":"%s","timestamp":"2026-11-28T%s:00:00Z","messageId":"n%s"}',
       i % 6, CASE WHEN i % 2 = 0 THEN 'Order Completed' ELSE 'Viewed' END, 10 + i % 10, i)::jsonb)
  FROM generate_series(1, 60) i;
SELECT cdp.ingest(format('{"type":"identify","userId":"u%s","anonymousId":"n%s","timestamp":"2026-11-29T09:00:00Z","messageId":"ni%s"}',
       i + 3, i, i)::jsonb)
  FROM generate_series(0, 5) i;
SELECT cdp.ingest('{"type":"identify","userId":"u5","anonymousId":"n0","timestamp":"2026-11-29T10:00:00Z","messageId":"clash"}');
SELECT cdp.ingest('{"type":"track","anonymousId":"guest","event":"Viewed","timestamp":"2026-11-29T11:00:00Z","messageId":"g1"}');
SELECT cdp.process_inbox();
DO $$ BEGIN WHILE cdp.backfill_step() IS NOT NULL LOOP END LOOP; END $$;
});
is(on_shards($c, 'cdp.events'), $single->safe_psql('cdp', 'SELECT count(*) FROM cdp.events'),
	'the new events are on the shards, as many as a single node stores');
same(q{SELECT count(*) FROM cdp.merges}, 'merges after distribution');

# cdp.resolve is evaluated on the coordinator, never against a worker's
# empty identities (which gave 0 rows)
my $n = same(q{SELECT count(*) FROM cdp.events WHERE profile_id = cdp.resolve('user_id:u1')},
	'cdp.resolve in a query over cdp.events');
ok($n > 0, "the canonical profile of u1 has events ($n)");
$n = same(q{SELECT count(*) FROM cdp.events_resolved WHERE profile_id = cdp.resolve('user_id:u1')},
	'cdp.resolve in a query over cdp.events_resolved');
ok($n > 40, "u1's events under both merged profiles ($n)");
same(q{SELECT message_id, ts FROM cdp.events_resolved
        WHERE profile_id = cdp.resolve(cdp.identifier('user_id', 'u3'))
        ORDER BY ts DESC, message_id LIMIT 100},
	"a person's latest events through cdp.events_resolved");
# prepared statements and PL/pgSQL pass parameters; past five executions
# the plan cache tries a generic plan
same(q{PREPARE timeline(text) AS
         SELECT string_agg(message_id, ',') FROM (
           SELECT message_id FROM cdp.events_resolved
            WHERE profile_id = cdp.resolve(cdp.identifier('user_id', $1))
            ORDER BY ts DESC, message_id LIMIT 10) s;
       SELECT 1 FROM generate_series(1, 0);
       EXECUTE timeline('u4'); EXECUTE timeline('u5'); EXECUTE timeline('u6'); EXECUTE timeline('u7');
       EXECUTE timeline('u8'); EXECUTE timeline('u9'); EXECUTE timeline('u10'); EXECUTE timeline('u11');},
	'cdp.resolve of a parameter, eight executions of a prepared statement');
same(q{CREATE FUNCTION public.events_of(u text) RETURNS bigint LANGUAGE plpgsql STABLE AS $f$
       BEGIN
           RETURN (SELECT count(*) FROM cdp.events WHERE profile_id = cdp.resolve(cdp.identifier('user_id', u)));
       END $f$;
       SELECT public.events_of('u' || i) FROM generate_series(0, 11) i},
	'cdp.resolve of a PL/pgSQL variable, twelve calls');
same(q{SELECT count(*) FROM cdp.events e WHERE e.profile_id IN (SELECT cdp.resolve('user_id:u2'))},
	'cdp.resolve in a subquery');

# events_resolved, views
same(q{WITH s AS MATERIALIZED (SELECT profile_id, count(*) AS n, min(ts), max(ts)
                                 FROM cdp.events_resolved GROUP BY 1)
       SELECT who(profile_id), n, min, max FROM s ORDER BY 1},
	'cdp.events_resolved: every event under its current profile');
same(q{SELECT who(profile_id), email, plan, orders FROM bi.people ORDER BY 1}, 'profile view');
same(q{WITH s AS MATERIALIZED (SELECT profile_id, count(*) AS n FROM bi.events GROUP BY 1)
       SELECT who(profile_id), n FROM s ORDER BY 1}, 'event view');
same(q{WITH s AS MATERIALIZED (SELECT profile_id, count(*) AS n, max(context::text) FROM bi.mkt_events GROUP BY 1)
       SELECT who(profile_id), n, max FROM s ORDER BY 1}, 'event view of a purpose few granted');
same(q{SELECT count(*) FROM bi.events WHERE profile_id = cdp.resolve('user_id:u4')},
	'cdp.resolve over an event view');

# a computed trait defined now is backfilled from the shards
same(q{SELECT cdp.define_computed_trait('views', 'count', 'Viewed');
       DO $$ BEGIN WHILE cdp.backfill_step() IS NOT NULL LOOP END LOOP; END $$;
       SELECT who(profile_id), cdp.computed_traits_of(profile_id) FROM cdp.profiles ORDER BY 1},
	'computed traits backfilled over distributed events');
same(q{SELECT audience, who(profile_id) FROM cdp.audience_members ORDER BY 1, 2}, 'audience members');
same(q{SELECT string_agg(x->>'message_id', ',' ORDER BY x->>'message_id')
         FROM jsonb_array_elements(cdp.export_subject('user_id:u7')->'events') x},
	'export_subject: the person\'s events');

# a split, then a rule change and a rebuild: records and computed traits
# are counted again from the events of the profiles they touch only.  The
# rebuild's recount used to pull every event's profile id and time to the
# coordinator; a bound on what Citus may pull shows it no longer does.
same(q{SELECT count(*) FROM cdp.split_profile(cdp.resolve('user_id:u1'), 'device_id:dev-9');
       SELECT who(profile_id), event_count, first_seen, last_seen, cdp.computed_traits_of(profile_id)
         FROM cdp.profiles ORDER BY 1},
	'split: counts and computed traits');
my $rebuild = q{SELECT cdp.set_identity_rule('anonymous_id', 5, 1);
                 SELECT cdp.rebuild_identities()->'changed'};
my $rebuilt = $coord->safe_psql('cdp', "SET citus.max_intermediate_result_size = '8kB'; $rebuild");
$single->safe_psql('cdp', $rebuild);
$rebuilt = (split /\n/, $rebuilt)[-1];
ok($rebuilt > 10, "the rebuild changed identifiers ($rebuilt) without pulling the events");
same(q{SELECT who(profile_id), event_count, first_seen, last_seen, cdp.computed_traits_of(profile_id)
         FROM cdp.profiles ORDER BY 1},
	'rebuild: counts, seen times and computed traits');

# forget erases on the shards, also events other profiles stored
same(q{SELECT cdp.forget('user_id:u5', 'ticket 1') - 'forget_id'}, 'forget: what it erased');
same(q{SELECT count(*) FROM cdp.events WHERE user_id = 'u5' OR anonymous_id IN ('a5', 'a17')},
	'forget: no event of the person is left');
is(on_shards($c, 'cdp.events'), $coord->safe_psql('cdp', 'SELECT count(*) FROM cdp.events'),
	'forget: the shards hold what the coordinator counts');
same(q{SELECT who(profile_id), event_count, first_seen, last_seen FROM cdp.profiles ORDER BY 1},
	'forget: the other profiles\' counts');

# retention drops, then detaches, partitions of the distributed table
same(q{SELECT cdp.configure_partitions(retention => '20 days', retention_mode => 'drop');
       SELECT cdp.run_maintenance()->'partitions_dropped';
       SELECT count(*), min(ts) FROM cdp.events},
	'retention drops partitions of the distributed table');
same(q{SELECT cdp.configure_partitions(retention => '18 days', retention_mode => 'detach');
       SELECT cdp.run_maintenance()->'partitions_detached';
       SELECT count(*), min(ts) FROM cdp.events;
       SELECT cdp.detached_event_tables()},
	'retention detaches partitions of the distributed table');
same(q{SELECT cdp.forget('user_id:u6', 'ticket 2') - 'forget_id'},
	'forget reaches detached partitions');

# cdp.partitions: the shards' rows and bytes, not the empty shells'
$coord->safe_psql('cdp', 'ANALYZE cdp.events');
$single->safe_psql('cdp', 'ANALYZE cdp.events');
same(q{SELECT partition, row_estimate FROM cdp.partitions ORDER BY 1},
	'cdp.partitions: row estimates of the shards');
is($coord->safe_psql('cdp', q{
	SELECT count(*) FROM cdp.partitions p
	 WHERE p.total_bytes IS DISTINCT FROM citus_total_relation_size(p.partition)
	    OR p.total_bytes <= pg_total_relation_size(p.partition)}),
	'0', 'cdp.partitions: the bytes of the shards');

# a cdp function applied per row runs on the workers, where the identity
# tables are empty copies: an error, never a silent 0
my ($rc, $out, $err) = $coord->psql('cdp', q{
	SELECT count(*) FROM cdp.events e
	 WHERE e.profile_id = cdp.resolve(cdp.identifier('user_id', e.user_id))});
isnt($rc, 0, 'cdp.resolve of a column fails on the workers');
like($err, qr/cdp\.resolve\(\) cannot run on a Citus worker node/, '... saying why');
($rc, $out, $err) = $coord->psql('cdp', q{
	SELECT count(*) FROM cdp.events e WHERE public.who(e.profile_id) LIKE '%user_id:u1%'});
isnt($rc, 0, 'a function reading profiles per row fails on the workers');
like($err, qr/a query reading cdp\.\w+ cannot run on a Citus worker node/, '... saying why');
ok($single->safe_psql('cdp', q{SELECT count(*) FROM cdp.events e
	WHERE e.profile_id = cdp.resolve(cdp.identifier('user_id', e.user_id))}) > 0,
	'(the same query answers on a single node)');

$single->stop;
stop_citus_cluster($c);
done_testing();
