# cdp.stats and cdp.max_inbox_depth with and without shared memory.
# Not preloaded: cdp.stats answers from the tables (counters NULL, saying
# why), and the bound measures the inbox itself.  Preloaded: counters in
# shared memory count committed work per database, start from zero at a
# server start (also after a crash), and the inbox depth is counted again
# from the table, so the bound holds at once after a restart.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('stats');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION pg_cdp');

sub query { return $node->safe_psql($_[1] // 'postgres', $_[0]); }

sub figure
{
	my ($name, $db) = @_;
	return query("SELECT coalesce(value::text, 'NULL') FROM cdp.stats WHERE name = '$name'", $db);
}

# SQLSTATE of the first error a script raises, '' if none
sub sqlstate_of
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY sqlstate\n$sql");
	return $err =~ /ERROR:\s+(\w{5})/ ? $1 : '';
}

# SQLSTATE of a COPY of two messages into the inbox under a bound
sub copy_sqlstate
{
	my ($bound) = @_;
	return sqlstate_of(qq{SET cdp.max_inbox_depth = $bound;
COPY cdp.inbox (payload) FROM stdin;
{"type":"track","userId":"c1","event":"e"}
{"type":"track","userId":"c2","event":"e"}
\\.
});
}

my $track = q{SELECT cdp.track('u' || g, 'Viewed') FROM generate_series(1, %d) g};

# --- not preloaded
query(sprintf($track, 3));
is(figure('received'), 'NULL', 'not preloaded: counters are NULL');
like(query(q{SELECT description FROM cdp.stats WHERE name = 'stored'}),
	qr/needs pg_cdp in shared_preload_libraries/, 'and say what they need');
is(figure('inbox_depth'), '3', 'not preloaded: the inbox depth is counted from the table');
ok(query(q{SELECT value >= 0 FROM cdp.stats WHERE name = 'oldest_queued_seconds'}) eq 't',
	'not preloaded: the oldest queued age is read from the table');
is(query('SELECT count(*) FROM cdp.worker_stats'), '0', 'not preloaded: no workers');
is(sqlstate_of('SELECT cdp.reset_stats()'), '55000', 'not preloaded: reset_stats refuses, 55000');

is(sqlstate_of("SET cdp.max_inbox_depth = 3;\n" . sprintf($track, 1)), '53400',
	'not preloaded: ingest past cdp.max_inbox_depth fails with 53400');
is(copy_sqlstate(4), '53400', 'not preloaded: a COPY past the bound fails with 53400');
is(query('SELECT count(*) FROM cdp.inbox'), '3', 'and queues nothing');
# ids 1..3 queued, 4.. come next: a wide id range with few rows is counted
query('DELETE FROM cdp.inbox WHERE id < 3');
query(sprintf($track, 2));
ok(query('SELECT max(id) - min(id) + 1 > 4 AND count(*) = 3 FROM cdp.inbox') eq 't',
	'the ids queued span more than 4 (refused rows used some up)');
is(sqlstate_of("SET cdp.max_inbox_depth = 4;\n" . sprintf($track, 1)), '',
	'not preloaded: rows are counted when the id range is wider than the bound');
is(sqlstate_of("SET cdp.max_inbox_depth = 4;\n" . sprintf($track, 1)), '53400',
	'not preloaded: and the bound holds');

# a session refused a moment ago may queue again as soon as another session
# has drained the inbox: a refusal is decided on a count made for it
query('TRUNCATE cdp.inbox');
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_safe('SET cdp.max_inbox_depth = 2');
$bg->query_safe(q{SELECT cdp.track('r1', 'e'); SELECT cdp.track('r2', 'e')});
$bg->query(q{SELECT cdp.track('r3', 'e')});
like($bg->{stderr}, qr/holds 2 queued payloads/, 'not preloaded: the third payload is refused');
query('SELECT cdp.process_inbox()');
like($bg->query(q{SELECT 'queued again: ' || cdp.track('r4', 'e')}), qr/queued again: 1/,
	'not preloaded: once another session drained the inbox, the refused session queues again');
$bg->quit;
query('SELECT cdp.process_inbox()');
query(sprintf($track, 4));

# --- preloaded
# no ingest workers: the figures below are what this test's calls did
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'pg_cdp'\ncdp.ingest_workers = 0\n");
$node->restart;
is(figure('received'), '0', 'preloaded: counters start at zero');
is(figure('inbox_depth'), '4', 'preloaded: the depth is counted from the table after a start');
is(sqlstate_of("SET cdp.max_inbox_depth = 4;\n" . sprintf($track, 1)), '53400',
	'preloaded: the bound holds at once after a start');

is(query('SELECT cdp.process_inbox()'), '4', 'processed');
is(figure('received'), '4', 'preloaded: process_inbox counts what it took');
is(figure('stored'), '4', 'preloaded: and what it stored');
is(figure('inbox_depth'), '0', 'preloaded: the depth follows');

query(sprintf($track, 2));
query('BEGIN; SELECT cdp.process_inbox(); ROLLBACK');
is(figure('received'), '4', 'preloaded: a rolled-back process_inbox counts nothing');
is(figure('inbox_depth'), '2', 'preloaded: and its rows are queued still');

is(copy_sqlstate(3), '53400', 'preloaded: a COPY past the bound fails with 53400');
is(figure('inbox_depth'), '2', 'and queues nothing');

# counters are per database
$node->safe_psql('postgres', 'CREATE DATABASE other');
query('CREATE EXTENSION pg_cdp', 'other');
query(sprintf($track, 5), 'other');
query('SELECT cdp.process_inbox()', 'other');
is(figure('received', 'other'), '5', 'preloaded: each database counts its own work');
is(figure('received'), '4', 'preloaded: and not the others\'');

# concurrent enqueues, processing and recounts (a reset makes the next
# reader count the inbox while others commit): the depth stays exact
$node->pgbench(
	'--no-vacuum --client=4 --transactions=150 --max-tries=10',
	0, [qr{processed: 600/600}], [qr{}],
	'concurrent enqueues, processing and recounts',
	{
		'001_enqueue@6' => q{SELECT cdp.track('p' || :client_id, 'e');},
		'002_take@3' => q{SELECT cdp.process_inbox(3);},
		'003_recount@1' => q{SELECT cdp.reset_stats();
SELECT value FROM cdp.stats WHERE name = 'inbox_depth';},
	});
is(figure('inbox_depth'), query('SELECT count(*) FROM cdp.inbox'),
	'preloaded: after concurrent work the depth equals the rows queued');
query('SELECT cdp.process_inbox()');
query(sprintf($track, 2));

# a crash: counters start again, the depth is counted again
$node->stop('immediate');
$node->start;
is(figure('received'), '0', 'after a crash counters start from zero');
is(figure('inbox_depth'), '2', 'after a crash the depth is counted again');
is(query('SELECT cdp.process_inbox()'), '2', 'processed after the crash');
is(figure('received'), '2', 'and counted');

# an ingest worker reports its batches; its figures outlive it
$node->append_conf('postgresql.conf', "cdp.ingest_workers = 1\n");
$node->reload;
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'pg_cdp ingest worker'})
  or die 'no ingest worker started';
query(q{SELECT cdp.reset_stats()});
query(sprintf($track, 30));
$node->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM cdp.inbox}) or die 'the worker did not drain the inbox';
$node->poll_query_until('postgres',
	q{SELECT coalesce(sum(messages), 0) = 30 FROM cdp.worker_stats})
  or die 'the worker did not report its batches';
is(query(q{SELECT count(*) FROM cdp.worker_stats w JOIN pg_stat_activity a USING (pid)
	WHERE a.backend_type = 'pg_cdp ingest worker' AND w.batches >= 1
	  AND w.last_batch_messages BETWEEN 1 AND 30 AND w.last_batch_at IS NOT NULL
	  AND w.last_batch_ms >= 0 AND w.started_at IS NOT NULL}), '1',
	'cdp.worker_stats: the running worker, its pid, last batch and totals');
is(figure('ingest_workers_running'), '1', 'ingest_workers_running counts it');
is(figure('received'), '30', 'what a worker processes is counted in cdp.stats');
my $old_pid = query(q{SELECT pid FROM cdp.worker_stats});
query("SELECT pg_terminate_backend($old_pid)");
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM cdp.worker_stats WHERE pid IS NOT NULL AND pid <> $old_pid")
  or die 'the worker was not restarted';
is(query(q{SELECT messages FROM cdp.worker_stats}), '30',
	'a restarted worker carries on its slot\'s totals');
is(figure('received'), '30', 'cdp.stats survives a worker restart');

$node->stop;
done_testing();
