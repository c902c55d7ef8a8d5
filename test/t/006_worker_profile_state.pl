# Traits and consent that background ingest workers take from messages are
# in the per-identifier stores and the profiles once the batch commits: a
# worker gathers them in memory like cdp.process_inbox does, so it must
# write them before each commit, or they are lost.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('worker_state');
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

sql('CREATE EXTENSION pg_cdp');
# 200 messages over 20 visitors, each stating a plan and marketing, in
# time order: the last message of each visitor says plan-9, marketing true
sql(q{SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'E',
        'anonymousId', 'w' || (g % 20), 'messageId', 'm' || g,
        'timestamp', '2026-06-01T10:00:00Z'::timestamptz + g * interval '1 second',
        'context', jsonb_build_object(
            'traits', jsonb_build_object('plan', 'plan-' || (g / 20)),
            'consent', jsonb_build_object('categoryPreferences',
                jsonb_build_object('Marketing', (g / 20) % 2 = 1)))))
      FROM generate_series(0, 199) g});
ok($node->poll_query_until('cdp', q{SELECT count(*) FROM cdp.events}, '200'),
	'the workers store the 200 messages');
is(sql('SELECT count(*) FROM cdp.inbox'), '0', 'the inbox is empty');
is(sql(q{SELECT count(*) FROM cdp.identifier_traits WHERE traits = '{"plan": "plan-9"}'}), '20',
	'every visitor\'s store holds its latest trait');
is(sql(q{SELECT count(*) FROM cdp.identifier_consent
          WHERE consent -> 'marketing' ->> 'granted' = 'true'}), '20',
	'... and its latest decision');
is(sql(q{SELECT count(*) FROM cdp.profile_records
          WHERE traits = '{"plan": "plan-9"}' AND consent -> 'marketing' ->> 'granted' = 'true'}),
	'20', 'every profile shows them');
is(sql(q{SELECT count(*) FROM cdp.consent_log}), '200',
	'the history holds each change: ten per visitor');

$node->stop;
done_testing();
