# Identity operations run concurrently give the same graph, computed traits,
# audience memberships, traits and consent as the same operations run one
# after the other.  Several pgbench clients send random messages (with
# traits, consent, aliases and external ids), links, splits, rule changes,
# rebuilds, consent decisions and erasures; each operation that took effect
# logs its place in the serial order while it still holds the identity lock
# (or the rows it wrote under).  The log is then replayed, one operation at
# a time, in a fresh database, and both end states must agree: which
# identifiers share a profile, the profile every event resolves to, event
# counts and merge counts, each identifier's traits, consent and consent
# history, and each profile's — and a dry run must report 0 after a final
# rebuild.  Each round starts from fresh databases with the next seed: the
# interleavings differ.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $first_seed = $ENV{CDP_SERIAL_SEED} // 20261203;
# rounds with consecutive seeds: the clients' interleaving differs in each
my $rounds = $ENV{CDP_SERIAL_ROUNDS} // 3;
my $node = PostgreSQL::Test::Cluster->new('serial');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'pg_cdp'
cdp.max_merges_per_profile = 4
deadlock_timeout = 100ms
# the workers serve the third round's database: its messages are taken by
# them, one per transaction (with identities kept between them), and by
# process_inbox beside them
cdp.database_name = 'concurrent2'
cdp.ingest_workers = 2
cdp.batch_size = 1
});
$node->start;

# half the messages take the identity lock themselves only if they change
# the graph: the others go on beside writers, locking profile rows.  Track,
# identify (traits with an email), alias (previousId) and external ids, with
# context.traits (a phone), Segment consent categories and the consent
# event, at times out of order and often equal (ties decide by value)
my $message = q{
\set n_lock random(0, 1)
\set n_u random(1, 5)
\set n_a random(1, 16)
\set n_d random(1, 8)
\set n_kind random(1, 3)
\set n_mid random(1, 1000000000)
\set n_type random(1, 6)
\set n_t random(0, 9)
\set n_e random(1, 8)
\set n_x random(1, 6)
\set n_v random(1, 4)
\set n_c random(0, 5)
SELECT send_message(:n_lock = 1, 'm' || :client_id || '-' || :n_mid, jsonb_strip_nulls(jsonb_build_object(
    'type', CASE :n_type WHEN 2 THEN 'identify' WHEN 3 THEN 'alias' ELSE 'track' END,
    'event', CASE WHEN :n_type = 5 THEN 'Segment Consent Preference Updated' ELSE 'e' END,
    'messageId', 'm' || :client_id || '-' || :n_mid,
    'timestamp', '2026-06-01T00:00:0' || :n_t || 'Z',
    'userId', CASE WHEN :n_kind = 1 OR :n_type = 3 THEN 'u' || :n_u END,
    'previousId', CASE WHEN :n_type = 3 THEN CASE WHEN :n_kind = 2 THEN 'u' || (:n_u % 5 + 1) ELSE 'a' || :n_a END END,
    'anonymousId', CASE WHEN :n_type <> 3 THEN 'a' || :n_a END,
    'properties', jsonb_build_object('v', :n_mid % 7 * 20),
    'traits', CASE WHEN :n_type = 2 THEN jsonb_build_object('email', CASE WHEN :n_e <= 6 THEN 'E' || :n_e || '@x.io' END,
                                                            'plan', 'p' || :n_v, 'age', :n_v * 10 + :n_t) END,
    'context', jsonb_build_object(
        'device', jsonb_build_object('id', CASE WHEN :n_d <= 6 THEN 'd' || :n_d END),
        'traits', CASE WHEN :n_c = 1 THEN jsonb_build_object('plan', 'c' || :n_v, 'phone', '+1 555 000' || :n_x)
                       WHEN :n_c = 2 THEN jsonb_build_object('plan', 'c' || :n_v, 'color', 'k' || :n_e) END,
        'externalIds', CASE WHEN :n_type = 4 THEN jsonb_build_array(jsonb_build_object(
                         'id', 'x' || :n_x, 'type', 'crm_id', 'collection', 'users', 'encoding', 'none')) END,
        'consent', CASE WHEN :n_type = 5 OR :n_c >= 3 THEN jsonb_build_object('categoryPreferences',
                         jsonb_build_object('Marketing', :n_v % 2 = 0, 'Advertising', :n_c = 4,
                                            'personalization', CASE WHEN :n_c = 5 THEN :n_v > 2 END)) END))));
};
# a consent decision from outside: without the identity lock it holds the
# row of its identifier's profile, as a message that changes nothing does
my $consent = q{
\set n_lock random(0, 1)
\set n_a random(1, 16)
\set n_u random(1, 5)
\set n_which random(1, 3)
\set n_p random(1, 3)
\set n_g random(0, 1)
\set n_t random(0, 9)
SELECT run_op(:n_lock = 1, format('SELECT cdp.set_consent(%L, %L, %L, %L)',
  CASE :n_which WHEN 1 THEN 'user_id:u' || :n_u WHEN 2 THEN 'anonymous_id:a' || :n_a ELSE 'email:e' || :n_u || '@x.io' END,
  (ARRAY['marketing', 'Advertising', 'personalization'])[:n_p], :n_g = 1, '2026-06-01T00:00:0' || :n_t || 'Z'));
};
# an erasure racing the messages of the same people: it waits for ingest in
# progress and takes the identity lock itself
my $forget = q{
\set n_a random(1, 20)
SELECT run_op(false, format('SELECT cdp.forget(%L, %L) IS NOT NULL', 'anonymous_id:a' || :n_a, 'ticket'));
};
my $link = q{
\set n_a random(1, 16)
\set n_u random(1, 5)
SELECT run_op(true, format('SELECT cdp.link(%L, %L)', 'anonymous_id:a' || :n_a, 'user_id:u' || :n_u));
};
# a split, then a message carrying what was split out with another identifier
my $split = q{
\set n_d random(1, 6)
\set n_a random(1, 20)
\set n_which random(1, 2)
\set n_mid random(1, 1000000000)
SELECT split_then_send(format('SELECT count(*) FROM cdp.split_profile(cdp.resolve(%L), %L)', x, x),
  's' || :client_id || '-' || :n_mid, jsonb_build_object(
    'type', 'track', 'event', 'e', 'messageId', 's' || :client_id || '-' || :n_mid,
    'timestamp', '2026-06-01T00:00:00Z', 'anonymousId', 'a' || :n_a,
    'context', jsonb_build_object('device', jsonb_build_object('id', 'd' || :n_d))))
  FROM (SELECT CASE WHEN :n_which = 1 THEN 'device_id:d' || :n_d ELSE 'anonymous_id:a' || :n_a END AS x) v;
};
my $rule = q{
\set n_lim random(1, 3)
SELECT run_op(true, format('UPDATE cdp.identity_rules SET max_per_profile = %s WHERE id_type = %L',
  CASE :n_lim WHEN 1 THEN '2' WHEN 2 THEN '3' ELSE '100' END, 'device_id'));
};
my $rebuild = q{
SELECT run_op(false, 'SELECT cdp.rebuild_identities()');
};


# the graph without profile ids: the identifiers of each profile with its
# counts, and for each event the first identifier of the profile it resolves to
my $state_sql = q{
	SELECT (SELECT string_agg(p, E'\n' ORDER BY p) FROM (
	          SELECT string_agg(i.identifier::text, ' ' ORDER BY i.identifier::text)
	                 || ' events=' || r.event_count || ' absorbed=' || r.merges_absorbed
	                 || ' computed=' || cdp.computed_traits_of(r.profile_id)::text
	                 || ' traits=' || r.traits::text || ' times=' || r.trait_times::text
	                 || ' consent=' || cdp.consent_of(r.profile_id)::text
	                 || ' audiences=' || coalesce((SELECT string_agg(m.audience, ',') FROM cdp.audience_members m
	                                                WHERE m.profile_id = r.profile_id), '') AS p
	            FROM cdp.identities i JOIN cdp.profile_records r USING (profile_id)
	           GROUP BY r.profile_id) x)
	    || E'\n' ||
	       (SELECT string_agg(e.message_id || '>' || coalesce((SELECT min(i.identifier::text) FROM cdp.identities i
	                                                           WHERE i.profile_id = e.profile_id), '-'),
	                          ' ' ORDER BY e.message_id)
	          FROM cdp.events_resolved e)
};
# what is kept per identifier: traits, consent and its history
my $identifier_state_sql = q{
	SELECT coalesce((SELECT string_agg(t.identifier::text || ' ' || t.traits::text || ' ' || t.trait_times::text,
	                                             E'\n' ORDER BY t.identifier::text)
	                             FROM cdp.identifier_traits t), '')
	    || E'\n' || coalesce((SELECT string_agg(c.identifier::text || ' ' || c.consent::text, E'\n' ORDER BY c.identifier::text)
	                             FROM cdp.identifier_consent c), '')
	    || E'\n' || coalesce((SELECT string_agg(concat_ws(' ', l.identifier, l.purpose, l.granted, l.at, l.message_id, l.source),
	                                             E'\n' ORDER BY concat_ws(' ', l.identifier, l.purpose, l.granted, l.at,
	                                                                       l.message_id, l.source))
	                             FROM cdp.consent_log l), '')
};
my $invariants_sql = q{
	SELECT (SELECT count(*) FROM cdp.identities i JOIN cdp.profile_records r USING (profile_id)
	         WHERE r.merged_into IS NOT NULL)
	    || ' ' || (SELECT count(*) FROM cdp.profile_records r JOIN cdp.profile_records t
	                ON t.profile_id = r.merged_into WHERE t.merged_into IS NOT NULL)
	    || ' ' || (SELECT count(*) FROM cdp.profiles p WHERE p.event_count <>
	                (SELECT count(*) FROM cdp.events_resolved e WHERE e.profile_id = p.profile_id))
	    || ' ' || (SELECT count(*) FROM cdp.profiles p WHERE
	                (cdp.computed_traits_of(p.profile_id)->>'events')::bigint <>
	                (SELECT count(*) FROM cdp.events_resolved e WHERE e.profile_id = p.profile_id AND e.type = 'track'))
	    || ' ' || (SELECT count(*) FROM cdp.profile_records r
	                 CROSS JOIN LATERAL cdp.merge_traits(
	                     ARRAY(SELECT t.traits FROM cdp.identities i JOIN cdp.identifier_traits t
	                             ON t.identifier::text = i.identifier::text
	                            WHERE i.profile_id = r.profile_id ORDER BY t.identifier::text COLLATE "C"),
	                     ARRAY(SELECT t.trait_times FROM cdp.identities i JOIN cdp.identifier_traits t
	                             ON t.identifier::text = i.identifier::text
	                            WHERE i.profile_id = r.profile_id ORDER BY t.identifier::text COLLATE "C"),
	                     1000, false) m
	                WHERE r.merged_into IS NULL
	                  AND (r.traits, r.trait_times) IS DISTINCT FROM (m.traits, m.trait_times))
	    || ' ' || (SELECT count(*) FROM cdp.profile_records r
	                WHERE r.merged_into IS NULL
	                  AND r.consent IS DISTINCT FROM cdp.merge_consent(ARRAY(
	                      SELECT c.consent FROM cdp.identities i JOIN cdp.identifier_consent c
	                          ON c.identifier::text = i.identifier::text
	                       WHERE i.profile_id = r.profile_id)))
};

# audience members over all rounds
my $audience_members = 0;

# The identifiers' own traits and consent: which of a message's identifiers
# keeps them (the strongest it linked) must not depend on how its batch was
# resolved either.
sub identifier_states_agree
{
	my ($cdb, $sdb, $name) = @_;
	return is($node->safe_psql($cdb, $identifier_state_sql), $node->safe_psql($sdb, $identifier_state_sql), $name);
}

# one round: fresh databases, the clients run, the serial replay, the checks
sub round
{
	my ($seed, $cdb, $sdb) = @_;

	for my $db ($cdb, $sdb)
	{
		$node->safe_psql('postgres', "CREATE DATABASE $db");
		$node->safe_psql($db, 'CREATE EXTENSION pg_cdp');
		# the events' partition exists before the clients start
		$node->safe_psql($db, q{
			SELECT cdp.ingest('{"type": "track", "event": "e", "messageId": "setup", "anonymousId": "setup",
			                    "timestamp": "2026-06-01T00:00:00Z"}');
			SELECT cdp.process_inbox();
			SELECT cdp.define_computed_trait('events', 'count');
			SELECT cdp.define_computed_trait('total', 'sum', 'e', 'v');
			SELECT cdp.define_computed_trait('top', 'most_frequent', NULL, 'v');
			SELECT cdp.define_audience('busy', 'events >= 4 AND total > 100');
		});
		# (where the workers took the message instead)
		$node->poll_query_until($db, 'SELECT NOT EXISTS (SELECT FROM cdp.inbox)') or die 'the inbox did not drain';
	}

	# run_op runs statements as one operation and logs it when it took effect,
	# before it commits.  Whatever changed the graph still holds the identity
	# lock then, so the log order is the order they took effect in; a message
	# that changed nothing holds the rows of the profile it was stored under,
	# which whatever changes that profile must wait for.  lock_first takes the
	# identity lock before the statements, so what they decide (which profile
	# to split) is decided in that order; rebuilds take it themselves, inside
	# the statement, after its snapshot was taken.  An operation that lost a
	# race did not happen: it is kept apart in op_lost, not logged.  A
	# set_consent without lock_first holds its identifier's profile row (or the
	# identity lock for an identifier no profile holds yet); a forget waits for
	# ingest in progress and takes the identity lock itself, as rebuilds do.
	$node->safe_psql($cdb, q{
		CREATE SEQUENCE op_seq;
		CREATE TABLE op_log (n bigint PRIMARY KEY, stmts text[] NOT NULL);
		CREATE TABLE op_lost (stmts text[] NOT NULL, error text NOT NULL);
		CREATE FUNCTION run_op(lock_first bool, VARIADIC stmts text[]) RETURNS void
		LANGUAGE plpgsql AS $$
		DECLARE
			s text;
		BEGIN
			IF lock_first THEN
				PERFORM pg_advisory_xact_lock(1128550401, 3);
			END IF;
			BEGIN
				FOREACH s IN ARRAY stmts LOOP
					EXECUTE s;
				END LOOP;
				-- a batch process_inbox rolled back (a deadlock) stays queued for
				-- whoever comes next: then this operation did not happen either
				IF stmts[cardinality(stmts)] = 'SELECT cdp.process_inbox()' AND EXISTS (SELECT 1 FROM cdp.inbox) THEN
					RAISE EXCEPTION 'a message stayed queued' USING ERRCODE = 'deadlock_detected';
				END IF;
			EXCEPTION WHEN invalid_parameter_value OR object_not_in_prerequisite_state
			            OR undefined_object OR deadlock_detected OR serialization_failure THEN
				INSERT INTO op_lost VALUES (stmts, SQLSTATE || ' ' || SQLERRM);
				RETURN;
			END;
			INSERT INTO op_log VALUES (nextval('op_seq'), stmts);
			-- hold the lock a moment: a rebuild that comes meanwhile waits for it
			PERFORM pg_sleep(0.002);
		END
		$$;
	});

	# a message is sent, and processed in the same operation; a split is
	# followed by a message carrying what it took out with another identifier
	my $workers = $cdb eq 'concurrent2';
	$node->safe_psql($cdb, q{
		CREATE FUNCTION send_message(lock_first bool, mid text, msg jsonb) RETURNS void
		LANGUAGE sql BEGIN ATOMIC
			SELECT run_op(lock_first, format('SELECT cdp.ingest(%L::jsonb)', msg), 'SELECT cdp.process_inbox()');
		END;
		CREATE FUNCTION split_then_send(split text, mid text, msg jsonb) RETURNS void
		LANGUAGE sql BEGIN ATOMIC
			SELECT run_op(true, split, format('SELECT cdp.ingest(%L::jsonb)', msg), 'SELECT cdp.process_inbox()');
		END;
	}) unless $workers;
	# Beside the workers a message is only queued, or taken with one other
	# queued message by process_inbox(1), and logged when its event is stored:
	# a trigger on cdp.events takes the identity lock then and logs the message
	# while holding it to the commit, so the log order is the order of effect
	# (a batch that took it first resolved under it; one that resolved before
	# held the profile rows or checks again under the lock).  A split is then
	# an operation of its own before its message.
	$node->safe_psql($cdb, q{
		CREATE TABLE msg (mid text PRIMARY KEY, stmt text NOT NULL);
		CREATE FUNCTION send_message(process bool, mid text, msg jsonb) RETURNS void
		LANGUAGE plpgsql AS $$
		BEGIN
			INSERT INTO msg VALUES (mid, format('SELECT cdp.ingest(%L::jsonb)', msg));
			PERFORM cdp.ingest(msg);
			IF process THEN
				PERFORM cdp.process_inbox(1);
			END IF;
		END
		$$;
		CREATE FUNCTION split_then_send(split text, mid text, msg jsonb) RETURNS void
		LANGUAGE sql BEGIN ATOMIC
			SELECT run_op(true, split);
			SELECT send_message(false, mid, msg);
		END;
		CREATE FUNCTION log_message() RETURNS trigger
		LANGUAGE plpgsql AS $$
		BEGIN
			PERFORM pg_advisory_xact_lock(1128550401, 3);
			INSERT INTO public.op_log
			SELECT nextval('public.op_seq'), ARRAY[m.stmt, 'SELECT cdp.process_inbox()']
			  FROM public.msg m WHERE m.mid = NEW.message_id;
			RETURN NULL;
		END
		$$;
		CREATE TRIGGER log_message AFTER INSERT ON cdp.events FOR EACH ROW EXECUTE FUNCTION log_message();
	}) if $workers;

	$node->pgbench(
		"--no-vacuum --client=4 --transactions=40 --random-seed=$seed --max-tries=20",
		0, [qr{processed: 160/160}],
		# process_inbox(1) beside the workers may stop early (a NOTICE)
		[$workers ? qr{^(?:pgbench: setting random seed[^\n]*\n)?(?:(?:NOTICE|DETAIL):[^\n]*\n)*$}
		          : qr{^(?:pgbench: setting random seed[^\n]*\n)?$}],
		"seed $seed: random identity operations from four clients",
		# script files are named once per round
		{
			"001_message_$seed\@10" => $message,
			"002_link_$seed\@2" => $link,
			"003_split_$seed\@2" => $split,
			"004_rule_$seed\@2" => $rule,
			"005_rebuild_$seed\@3" => $rebuild,
			"006_consent_$seed\@2" => $consent,
			"007_forget_$seed\@1" => $forget,
		},
		$cdb);

	if ($workers)
	{
		$node->poll_query_until($cdb, 'SELECT NOT EXISTS (SELECT FROM cdp.inbox)')
		  or die 'the workers did not drain the inbox';
		$node->safe_psql($cdb, 'DROP TRIGGER log_message ON cdp.events');
		cmp_ok($node->safe_psql($cdb, 'SELECT coalesce(sum(messages), 0) FROM cdp.worker_stats'), '>', 0,
			"seed $seed: the workers took messages");
		diag("seed $seed: identifiers the workers served from what they kept, and looked up: "
			  . $node->safe_psql($cdb, 'SELECT sum(identities_recalled) || \' \' || sum(identities_read) FROM cdp.worker_stats'));
	}
	my $nops = $node->safe_psql($cdb, 'SELECT count(*) FROM op_log');
	# beside the workers, whose batches take the identity lock in the trigger,
	# more operations lose a deadlock
	cmp_ok($nops, '>=', $workers ? 50 : 100, "seed $seed: most operations took effect ($nops of 160)");

	# the same operations one after the other
	my $script = $node->safe_psql($cdb,
		q{SELECT string_agg('BEGIN; ' || array_to_string(stmts, '; ') || '; COMMIT;', E'\n' ORDER BY n) FROM op_log});
	$node->safe_psql($sdb, $script);

	for my $db ($cdb, $sdb)
	{
		is($node->safe_psql($db, $invariants_sql), '0 0 0 0 0 0',
			"seed $seed, $db: identifiers on canonical profiles, redirects end at one, exact event counts and computed counts, "
			. "traits and consent derived from the identifiers'");
	}
	# an erasure can empty the audience of one round, not of every one
	$audience_members += $node->safe_psql($cdb, q{SELECT count(*) FROM cdp.audience_members});
	my $concurrent = $node->safe_psql($cdb, $state_sql);
	my $serial = $node->safe_psql($sdb, $state_sql);
	is($concurrent, $serial, "seed $seed: the concurrent run ends where the serial replay does")
	  or diag($node->safe_psql($cdb, 'SELECT * FROM op_lost'), "\n", $script);
	identifier_states_agree($cdb, $sdb, "seed $seed: each identifier keeps the traits and consent it keeps in the serial replay")
	  or diag($script);

	# a final rebuild, after which a dry run agrees, and both still agree
	for my $db ($cdb, $sdb)
	{
		$node->safe_psql($db, 'SELECT cdp.rebuild_identities()');
		is($node->safe_psql($db,
				q{SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities(true) r}),
			'0/0', "seed $seed, $db: a dry run after the final rebuild reports 0");
		is($node->safe_psql($db, $invariants_sql), '0 0 0 0 0 0', "seed $seed, $db: invariants hold after it");
	}
	is($node->safe_psql($cdb, $state_sql), $node->safe_psql($sdb, $state_sql),
		"seed $seed: and both agree after it");
	identifier_states_agree($cdb, $sdb, "seed $seed: and so do the identifiers' traits and consent");

	# online resolution after the rebuild goes on as a rebuild would
	for my $db ($cdb, $sdb)
	{
		$node->safe_psql($db, q{
			SELECT cdp.ingest(jsonb_build_object('type', 'track', 'event', 'e', 'messageId', 'after-' || i,
				'timestamp', '2026-06-02T00:00:00Z', 'anonymousId', 'a' || (i * 7 % 23),
				'userId', CASE WHEN i % 3 = 0 THEN 'u' || (i % 6) END,
				'context', jsonb_build_object('device', jsonb_build_object('id', 'd' || (i * 5 % 9)))))
			  FROM generate_series(1, 40) i;
			SELECT cdp.process_inbox();
		});
		$node->poll_query_until($db, 'SELECT NOT EXISTS (SELECT FROM cdp.inbox)') or die 'the inbox did not drain';
		is($node->safe_psql($db,
				q{SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities(true) r}),
			'0/0', "seed $seed, $db: a dry run after more messages reports 0");
	}
}

round($first_seed + $_, "concurrent$_", "serial$_") for 0 .. $rounds - 1;
cmp_ok($audience_members, '>', 0, 'the audience had members to compare');


$node->stop;
done_testing();