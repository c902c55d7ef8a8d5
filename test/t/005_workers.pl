# The background ingest workers: they start with CREATE EXTENSION, drain
# the inbox that concurrent producers fill, wake on enqueue, follow a
# reload of cdp.batch_size, isolate a message that keeps failing, come back
# after a worker is killed, and step aside for DROP EXTENSION, DROP DATABASE
# and ALTER DATABASE RENAME.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('workers');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'cdp'
cdp.ingest_workers = 2
max_worker_processes = 16
restart_after_crash = on
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE cdp');

sub sql { return $node->safe_psql('cdp', $_[0]); }

my $workers_sql = q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'pg_cdp ingest worker'};

sub wait_through_restart
{
	my ($query, $expected) = @_;
	for (1 .. 600)
	{
		my ($out, $err) = ('', '');
		IPC::Run::run(['psql', '-XAtq', '-d', $node->connstr('postgres'), '-c', $query],
			'>', \$out, '2>', \$err);
		chomp $out;
		return 1 if $out eq $expected;
		select(undef, undef, undef, 0.1);
	}
	return 0;
}

sub wait_for
{
	my ($sql, $expected, $what) = @_;
	ok($node->poll_query_until('cdp', $sql, $expected), $what)
	  or diag("last: " . $node->safe_psql('cdp', $sql));
}

ok($node->poll_query_until('postgres',
	q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cdp launcher'}, '1'),
	'the launcher runs');
is($node->safe_psql('postgres', $workers_sql), '0', 'no worker before CREATE EXTENSION');

sql('CREATE EXTENSION pg_cdp');
wait_for($workers_sql, '2', 'CREATE EXTENSION starts cdp.ingest_workers workers');

# one message: stored without anyone calling process_inbox
sql(q{SELECT cdp.track('u1', 'Signed Up')});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Signed Up'}, '1',
	'an enqueued message is stored by a worker');

# four producers, 100,000 messages in envelopes of 100, each committed
my @producers;
for my $p (1 .. 4)
{
	my $sql = qq{DO \$\$
BEGIN
  FOR b IN 0..249 LOOP
    PERFORM cdp.ingest(jsonb_build_object('batch', (
      SELECT jsonb_agg(jsonb_build_object('type', 'track', 'event', 'Load',
               'anonymousId', 'p$p-' || ((b * 100 + i) % 500), 'messageId', 'p$p-' || (b * 100 + i)))
        FROM generate_series(1, 100) i)));
    COMMIT;
  END LOOP;
END \$\$;};
	push @producers, IPC::Run::start(['psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
		'-d', $node->connstr('cdp'), '-c', $sql]);
}
# process_inbox beside the workers, taking what they do not hold
my $log_offset = -s $node->logfile;
my $drainer = IPC::Run::start(['psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('cdp'),
	'-c', q{DO $$ BEGIN FOR k IN 1..40 LOOP PERFORM cdp.process_inbox(500); COMMIT; END LOOP; END $$;}]);
$_->finish or die "a producer failed" for @producers;
ok($drainer->finish, 'process_inbox runs beside the workers without an error');
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Load'}, '100000',
	'the workers drain 100,000 messages from 4 concurrent producers');
is(sql(q{SELECT count(DISTINCT message_id) FROM cdp.events WHERE event = 'Load'}), '100000',
	'each stored once');
is(sql('SELECT count(*) FROM cdp.inbox'), '0', 'the inbox is empty');
is(sql('SELECT count(*) FROM cdp.dead_letters'), '0', 'nothing dead-lettered');
unlike(slurp_file($node->logfile, $log_offset), qr/deadlock detected|stopped early/,
	'the workers and process_inbox never deadlock each other');
is(sql(q{SELECT count(*) FROM cdp.profiles WHERE first_seen IS NOT NULL}), '2001',
	'every device has its profile');

# a reload changes the workers' batch size: with 1, each message is its own transaction
sql(q{CREATE TABLE stored_by (xid xid8, sync text);
	CREATE FUNCTION note_xid() RETURNS trigger LANGUAGE plpgsql AS
	  $$BEGIN
	    INSERT INTO public.stored_by VALUES (pg_current_xact_id(), current_setting('synchronous_commit'));
	    RETURN NULL;
	  END$$;
	CREATE TRIGGER note_xid AFTER INSERT ON cdp.events FOR EACH ROW EXECUTE FUNCTION note_xid();});
sql('ALTER SYSTEM SET cdp.batch_size = 1');
sql('SELECT pg_reload_conf()');
sleep(1);
sql(q{SELECT cdp.track('u-' || i, 'Small Batch') FROM generate_series(1, 20) i});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Small Batch'}, '20',
	'batch size 1: all stored');
is(sql('SELECT count(DISTINCT xid) FROM stored_by'), '20', 'batch size 1: one transaction each');
sql('TRUNCATE stored_by');
sql('ALTER SYSTEM RESET cdp.batch_size');
sql('SELECT pg_reload_conf()');
sleep(1);
sql(q{SELECT cdp.track('u-' || i, 'Big Batch') FROM generate_series(1, 20) i});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Big Batch'}, '20',
	'batch size 1000: all stored');
cmp_ok(sql('SELECT count(DISTINCT xid) FROM stored_by'), '<=', 2,
	'batch size 1000: one or two transactions');
# what a batch takes was committed durably when it was enqueued, and a crash
# that loses the batch's commit puts its rows back (the crash test below):
# the workers' batches do not wait for their WAL to reach disk, while
# process_inbox keeps its caller's setting
is(sql(q{SELECT string_agg(DISTINCT sync, ',') FROM stored_by}), 'off',
	'the workers commit their batches asynchronously');
sql('TRUNCATE stored_by');
sql(q{BEGIN; SELECT cdp.track('u-in-session', 'In Session'); SELECT cdp.process_inbox(); COMMIT;});
is(sql(q{SELECT string_agg(DISTINCT sync, ',') FROM stored_by}), 'on',
	'process_inbox commits as its session says');
sql('TRUNCATE stored_by');
sql('ALTER SYSTEM SET cdp.worker_async_commit = off');
sql('SELECT pg_reload_conf()');
sleep(1);
sql(q{SELECT cdp.track('u-sync', 'Synchronous')});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Synchronous'}, '1',
	'cdp.worker_async_commit = off: stored');
is(sql(q{SELECT string_agg(DISTINCT sync, ',') FROM stored_by}), 'on',
	'cdp.worker_async_commit = off: the batch commits as the server says');
sql('ALTER SYSTEM RESET cdp.worker_async_commit');
sql('SELECT pg_reload_conf()');
sql('DROP TRIGGER note_xid ON cdp.events');

# a trigger that raises for one event: process_inbox would fail; the workers
# dead-letter that message alone and store its siblings
sql(q{CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS
	  $$BEGIN IF NEW.event = 'Poison' THEN RAISE EXCEPTION 'poison refused'; END IF; RETURN NEW; END$$;
	CREATE TRIGGER refuse_poison BEFORE INSERT ON cdp.events FOR EACH ROW EXECUTE FUNCTION refuse_poison();});
sql(q{SELECT cdp.ingest('{"batch": [
	{"type": "track", "userId": "v1", "event": "Before Poison", "messageId": "pp-1"},
	{"type": "track", "userId": "v1", "event": "Poison", "messageId": "pp-2"},
	{"type": "track", "userId": "v1", "event": "After Poison", "messageId": "pp-3"}]}')});
sql(q{SELECT cdp.track('v2', 'Next Row')});
wait_for(q{SELECT count(*) FROM cdp.inbox}, '0', 'the inbox drains past a failing message');
is(sql(q{SELECT string_agg(event, ',' ORDER BY event) FROM cdp.events
	WHERE event IN ('Before Poison', 'After Poison', 'Next Row')}),
	'After Poison,Before Poison,Next Row', 'its siblings and the next row are stored');
is(sql(q{SELECT error_code || ' ' || error_message || ' ' || (payload::jsonb->>'messageId')
	FROM cdp.dead_letters WHERE payload::jsonb->>'event' = 'Poison'}),
	'processing_error P0001: poison refused pp-2', 'the failing message alone is a dead letter');
sql('DROP TRIGGER refuse_poison ON cdp.events');

# a worker killed: the server restarts its processes, the workers come back
my $victim = sql(q{SELECT pid FROM pg_stat_activity
	WHERE backend_type = 'pg_cdp ingest worker' LIMIT 1});
kill 'KILL', $victim;
# (the old ones count until the postmaster has noticed: wait for new pids;
# the query goes on psql's command line, since poll_query_until writes it to
# psql's stdin, which fails with EPIPE when psql exits at once because the
# server is restarting)
ok(wait_through_restart(qq{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'pg_cdp ingest worker' AND pid <> $victim}, '2'),
	'the workers come back after one is killed');
sql(q{SELECT cdp.track('u1', 'After Kill')});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'After Kill'}, '1',
	'and store what is enqueued next');

# DROP EXTENSION and CREATE EXTENSION with a busy pool
sql(q{SELECT cdp.ingest(jsonb_build_object('batch', (SELECT jsonb_agg(jsonb_build_object(
	'type', 'track', 'event', 'Busy', 'anonymousId', 'b' || i)) FROM generate_series(1, 1000) i)))
	FROM generate_series(1, 20)});
sql('DROP EXTENSION pg_cdp CASCADE');
wait_for($workers_sql, '0', 'DROP EXTENSION stops the workers');
sql('CREATE EXTENSION pg_cdp');
wait_for($workers_sql, '2', 'CREATE EXTENSION starts them again');

# DROP DATABASE and ALTER DATABASE RENAME need the database alone: the pool steps aside
sql(q{SELECT cdp.ingest(jsonb_build_object('batch', (SELECT jsonb_agg(jsonb_build_object(
	'type', 'track', 'event', 'Busy', 'anonymousId', 'b' || i)) FROM generate_series(1, 1000) i)))
	FROM generate_series(1, 20)});
$node->safe_psql('postgres', 'ALTER DATABASE cdp RENAME TO cdp_old');
is($node->safe_psql('postgres', $workers_sql), '0', 'a renamed database has no workers');
$node->safe_psql('postgres', 'ALTER DATABASE cdp_old RENAME TO cdp');
ok($node->poll_query_until('postgres', $workers_sql, '2'), 'named back, it has them again');
$node->safe_psql('postgres', 'DROP DATABASE cdp');
is($node->safe_psql('postgres', $workers_sql), '0', 'DROP DATABASE with busy workers succeeds');
$node->safe_psql('postgres', 'CREATE DATABASE cdp');
sql('CREATE EXTENSION pg_cdp');
wait_for($workers_sql, '2', 'a new database of that name gets workers with the extension');

# kill -9 of the postmaster while producers send; they then resend what they
# were not sure of (all of it, same messageIds): every acknowledged message
# is stored exactly once
my @acked;
my @senders;
for my $p (1 .. 2)
{
	my $sql = qq{DO \$\$
BEGIN
  FOR i IN 1..3000 LOOP
    PERFORM cdp.ingest(jsonb_build_object('type', 'track', 'event', 'Crash',
      'anonymousId', 'c$p', 'messageId', 'c$p-' || i));
    COMMIT;
    RAISE NOTICE 'acked c$p-%', i;
  END LOOP;
END \$\$;};
	my ($out, $err) = ('', '');
	push @senders, [IPC::Run::start(['psql', '-X', '-q', '-d', $node->connstr('cdp'), '-c', $sql],
		'>', \$out, '2>', \$err), \$err];
}
ok($node->poll_query_until('cdp', q{SELECT count(*) > 500 FROM cdp.events WHERE event = 'Crash'}),
	'producers and workers are busy');
$node->kill9;
for my $s (@senders)
{
	$s->[0]->finish;
	push @acked, (${ $s->[1] } =~ /acked (c\d-\d+)/g);
}
# the orphaned processes notice their postmaster is gone and exit
my $restarted = 0;
for (1 .. 100)
{
	last if ($restarted = $node->start(fail_ok => 1));
	$node->{_pid} = undef;
	select(undef, undef, undef, 0.3);
}
ok($restarted, 'the server starts again');
cmp_ok(scalar(@acked), '>', 0, 'some messages were acknowledged before the crash');
sql(q{SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'Crash',
	'anonymousId', 'c' || p, 'messageId', 'c' || p || '-' || i))
	FROM generate_series(1, 2) p, generate_series(1, 3000) i});
wait_for(q{SELECT count(*) FROM cdp.inbox}, '0', 'after the restart the workers drain the resent messages');
is(sql(q{SELECT count(*) FROM cdp.events WHERE event = 'Crash'}), '6000', 'every message stored');
is(sql(q{SELECT count(DISTINCT message_id) FROM cdp.events WHERE event = 'Crash'}), '6000',
	'none twice');
my $acked_list = join(',', map { "'$_'" } @acked);
is(sql(qq{SELECT count(DISTINCT message_id) FROM cdp.events WHERE message_id IN ($acked_list)}),
	scalar(@acked), 'every acknowledged message is there');

$node->stop;
done_testing();
