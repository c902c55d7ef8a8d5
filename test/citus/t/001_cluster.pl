# The Citus suite's cluster: a coordinator and two workers with Citus and
# pg_cdp, pg_cdp installed through the coordinator and propagated to the
# workers, and cdp.events distributed by hand as Citus documents it.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/..";
use CdpCitus;
use Test::More;

my $c = start_citus_cluster('cluster');
my $sql = $c->{sql};

is($sql->(q{SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND isactive}),
	'3', 'the coordinator and two workers are in the metadata');
for my $w (@{ $c->{workers} })
{
	is($w->safe_psql('cdp', q{SELECT extversion FROM pg_extension WHERE extname = 'pg_cdp'}),
		'0.1.0', 'pg_cdp propagated to worker ' . $w->name);
}

stop_citus_cluster($c);
done_testing();
