# How ingest workers take inbox rows.  A worker steps over the rows another
# worker's batch holds: while one worker is busy with a batch, the other
# takes what comes after it and leaves a row inside that batch's range (one
# its worker did not take: it was committed after that worker looked) for
# later; once the busy worker's transaction ends, that row is stored.  A
# worker's next batch starts after the rows its previous one took, yet a row
# committed behind that point is stored too.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('held_rows');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.database_name = 'cdp'
cdp.ingest_workers = 2
max_worker_processes = 16
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE cdp');

sub sql { return $node->safe_psql('cdp', $_[0]); }

sub wait_for
{
	my ($sql, $expected, $what) = @_;
	ok($node->poll_query_until('cdp', $sql, $expected), $what)
	  or diag("last: " . $node->safe_psql('cdp', $sql));
}

sub msg
{
	my ($user, $event, $id) = @_;
	return qq{'{"type":"track","userId":"$user","event":"$event","messageId":"$id"}'};
}

sql('CREATE EXTENSION pg_cdp');
sql('CREATE EXTENSION dblink');
wait_for(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_cdp ingest worker'},
	'2', 'two workers run');

# profiles known beforehand: the messages below change no identities (so
# take no identity lock) and each worker's messages have profiles of their own
sql(q{SELECT cdp.track(u, 'Known') FROM unnest(ARRAY['held', 'other', 'late']) u});
wait_for(q{SELECT count(*) FROM cdp.events WHERE event = 'Known'}, '3', 'the profiles exist');

# a worker storing the event "Hold" waits until the gate opens
sql(q{CREATE TABLE public.gate (closed boolean);
	INSERT INTO public.gate VALUES (true);
	CREATE FUNCTION public.wait_at_gate() RETURNS trigger LANGUAGE plpgsql AS
	  $$BEGIN
	      IF NEW.event = 'Hold' THEN
	          WHILE (SELECT closed FROM public.gate) LOOP PERFORM pg_sleep(0.05); END LOOP;
	      END IF;
	      RETURN NEW;
	    END$$;
	CREATE TRIGGER wait_at_gate BEFORE INSERT ON cdp.events
	    FOR EACH ROW EXECUTE FUNCTION public.wait_at_gate();
	CREATE FUNCTION public.wait_until(q text) RETURNS boolean LANGUAGE plpgsql AS
	  $$DECLARE ok boolean;
	    BEGIN
	      FOR i IN 1 .. 1200 LOOP
	          EXECUTE q INTO ok;
	          IF ok THEN RETURN true; END IF;
	          PERFORM pg_sleep(0.05);
	      END LOOP;
	      RETURN false;
	    END$$;});

# three consecutive ids from two transactions: "Hold" and "Beside" commit
# first, so a worker takes those two and waits at the gate holding ids
# n..n+2; "Inside" (n+1) commits while it waits; "After" comes later
my $connstr = $node->connstr('cdp') =~ s/'/''/gr;
my $hold = msg('held', 'Hold', 'm-hold');
my $inside = msg('late', 'Inside', 'm-inside');
my $beside = msg('held', 'Beside', 'm-beside');
my $after = msg('other', 'After', 'm-after');
my $out = sql(qq{
SELECT dblink_connect('t1', '$connstr');
SELECT dblink_connect('t2', '$connstr');
SELECT dblink_exec('t1', 'BEGIN');
SELECT dblink_exec('t2', 'BEGIN');
SELECT dblink_exec('t2', \$q\$INSERT INTO cdp.inbox (payload) VALUES ($hold)\$q\$);
SELECT dblink_exec('t1', \$q\$INSERT INTO cdp.inbox (payload) VALUES ($inside)\$q\$);
SELECT dblink_exec('t2', \$q\$INSERT INTO cdp.inbox (payload) VALUES ($beside)\$q\$);
SELECT dblink_exec('t2', 'COMMIT');
SELECT 'held: ' || public.wait_until(\$q\$SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'pg_cdp ingest worker' AND wait_event = 'PgSleep'\$q\$);
SELECT dblink_exec('t1', 'COMMIT');
INSERT INTO cdp.inbox (payload) VALUES ($after);
SELECT 'after stored: ' || public.wait_until(\$q\$SELECT count(*) = 1 FROM cdp.events
	WHERE message_id = 'm-after'\$q\$);
SELECT 'inside queued: ' || count(*) FROM cdp.inbox WHERE payload::jsonb->>'messageId' = 'm-inside';
SELECT 'inside stored: ' || count(*) FROM cdp.events WHERE message_id = 'm-inside';
SELECT dblink_disconnect('t1');
SELECT dblink_disconnect('t2');
});
like($out, qr/^held: true$/m, 'a worker holds the batch of "Hold" and "Beside"');
like($out, qr/^after stored: true$/m, 'the other worker stores what comes after that batch');
like($out, qr/^inside queued: 1$/m,
	'and steps over the row inside the held range, which stays queued');
like($out, qr/^inside stored: 0$/m, 'unstored while the range is held');

sql('UPDATE public.gate SET closed = false');
wait_for(q{SELECT count(*) FROM cdp.events WHERE message_id IN ('m-hold', 'm-beside', 'm-inside')},
	'3', 'once the busy worker commits, the row inside its range is stored too');

# a row queued before five others and committed after the workers took them
my @later = map { msg('other', 'Later', "m-later-$_") } 1 .. 5;
my $straggler = msg('late', 'Straggler', 'm-straggler');
my $values = join(', ', map { "($_)" } @later);
$out = sql(qq{
SELECT dblink_connect('t1', '$connstr');
SELECT dblink_exec('t1', 'BEGIN');
SELECT dblink_exec('t1', \$q\$INSERT INTO cdp.inbox (payload) VALUES ($straggler)\$q\$);
INSERT INTO cdp.inbox (payload) VALUES $values;
SELECT 'later stored: ' || public.wait_until(\$q\$SELECT count(*) = 5 FROM cdp.events
	WHERE event = 'Later'\$q\$);
SELECT dblink_exec('t1', 'COMMIT');
SELECT dblink_disconnect('t1');
});
like($out, qr/^later stored: true$/m, 'the rows queued after an uncommitted one are stored');
wait_for(q{SELECT count(*) FROM cdp.events WHERE message_id = 'm-straggler'}, '1',
	'the row committed behind them is stored too');

is(sql('SELECT count(*) FROM cdp.inbox'), '0', 'the inbox is empty');
is(sql('SELECT count(*) FROM cdp.dead_letters'), '0', 'nothing dead-lettered');

$node->stop;
done_testing();
