# bench/citus_ingest's measurement (see bench/citus_ingest): the same rows
# into distributed cdp.events by process_inbox, INSERT and COPY.
use strict;
use warnings;
use CdpCitus;
use Test::More;
use Time::HiRes qw(time);

# PostgreSQL::Test::Utils sends STDOUT to its log; print where tests print
Test::More->builder->no_ending(1);
my $out = Test::More->builder->output;
sub say_ { print $out @_; }

my ($n, $repeat) = ($ENV{N}, $ENV{REPEAT});
my $c = start_citus_cluster('bench');
my $sql = $c->{sql};
my $coord = $c->{coordinator};
$sql->('SELECT cdp.distribute()');
# the same pipeline on a single node: a database of the coordinator without Citus
$coord->safe_psql('postgres', 'CREATE DATABASE cdp_local');
$coord->safe_psql('cdp_local', 'CREATE EXTENSION pg_cdp');

# queue n messages like an SDK's: 500 users, batches of 100
sub queue
{
	my ($tag, $db) = @_;
	$coord->safe_psql($db // 'cdp', qq{SELECT count(cdp.ingest(jsonb_build_object('batch', (
		SELECT jsonb_agg(jsonb_build_object('type', 'track', 'event', 'Viewed',
		         'userId', 'u' || ((b * 100 + i) % 500), 'messageId', '$tag-' || (b * 100 + i),
		         'properties', jsonb_build_object('page', '/p/' || i, 'n', i),
		         'context', jsonb_build_object('library', jsonb_build_object('name', 'bench'))))
		  FROM generate_series(1, 100) i))))
		FROM generate_series(0, ($n - 1) / 100) b});
}

sub timed
{
	my ($what) = @_;
	my $t0 = time;
	$what->();
	return time - $t0;
}

# warm-up: the pipeline stores the rows the other two store again
queue('warm');
$sql->('SELECT cdp.process_inbox()');
$sql->(q{CREATE TABLE public.bench_rows AS SELECT * FROM cdp.events});
my $rows = $sql->('SELECT count(*) FROM public.bench_rows');
my $file = "$ENV{TESTDIR}/rows.copy";
$sql->(qq{COPY public.bench_rows TO '$file'});
say_("rows per round: $rows\n");

my %rate;
my @order = ('P', 'I', 'C', 'L');
for my $round (1 .. $repeat)
{
	for my $how (@order)
	{
		my $dt;
		if ($how eq 'P')
		{
			queue("r$round");
			$dt = timed(sub { $sql->('SELECT cdp.process_inbox()') });
		}
		elsif ($how eq 'L')
		{
			queue("r$round", 'cdp_local');
			$dt = timed(sub { $coord->safe_psql('cdp_local', 'SELECT cdp.process_inbox()') });
		}
		elsif ($how eq 'I')
		{
			$dt = timed(sub { $sql->('INSERT INTO cdp.events SELECT * FROM public.bench_rows') });
		}
		else
		{
			$dt = timed(sub { $sql->(qq{COPY cdp.events FROM '$file'}) });
		}
		push @{ $rate{$how} }, $rows / $dt;
		say_(sprintf("round %d %s %8.0f events/s\n", $round, $how, $rows / $dt));
	}
	push @order, shift @order;    # rotate who goes first
}

my %name = (P => 'process_inbox', I => 'INSERT', C => 'COPY', L => 'single node');
my (%best, %median);
for my $how ('P', 'I', 'C', 'L')
{
	my @r = sort { $a <=> $b } @{ $rate{$how} };
	$best{$how} = $r[-1];
	$median{$how} = @r % 2 ? $r[$#r / 2] : ($r[@r / 2 - 1] + $r[@r / 2]) / 2;
	say_(sprintf("%-14s best %8.0f  median %8.0f events/s\n", $name{$how}, $best{$how}, $median{$how}));
}
say_(sprintf("process_inbox / INSERT: %.2f (median)\n", $median{P} / $median{I}));
say_(sprintf("process_inbox / COPY:   %.2f (median)\n", $median{P} / $median{C}));
say_(sprintf("process_inbox / the same on a single node: %.2f (median)\n", $median{P} / $median{L}));
stop_citus_cluster($c);
