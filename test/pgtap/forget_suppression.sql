-- After cdp.forget, a message carrying one of the person's identifiers is
-- dropped before identity resolution: counted in cdp.suppressions.dropped,
-- never stored nor dead-lettered, and no profile, identifier or evidence is
-- made from it.  cdp.link refuses a suppressed identifier.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(19);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql

DO $$ BEGIN
    PERFORM pg_temp.send('s1', '{"type": "identify", "userId": "sup-user", "anonymousId": "sup-anon",
        "traits": {"email": "sup@example.com"}}');
    PERFORM pg_temp.send('k1', '{"userId": "sup-keep"}');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT count(*) FROM cdp.events), 2::bigint, 'setup: two events stored');
SELECT ok((cdp.forget('user_id:sup-user') ->> 'suppressed')::int = 3, 'forget suppresses the three identifiers');

CREATE TEMP TABLE before AS
SELECT (SELECT count(*) FROM cdp.profile_records) AS profiles,
       (SELECT count(*) FROM cdp.identity_evidence) AS evidence,
       (SELECT count(*) FROM cdp.identity_pairs) AS pairs,
       (SELECT count(*) FROM cdp.identity_violations) AS violations;

DO $$ BEGIN
    -- the user id again, the email in other letters, the anonymous id with a
    -- new device, an alias from the old user id, and one failing validation
    PERFORM pg_temp.send('a1', '{"userId": "sup-user"}', '2026-05-02 10:00+00');
    PERFORM pg_temp.send('a2', '{"type": "identify", "anonymousId": "fresh-anon", "traits": {"email": " SUP@Example.COM "}}');
    PERFORM pg_temp.send('a3', '{"anonymousId": "sup-anon", "context": {"device": {"id": "fresh-device"}}}');
    PERFORM pg_temp.send('a4', '{"type": "alias", "userId": "fresh-user", "previousId": "sup-user"}');
    PERFORM cdp.ingest('{"type": "track", "event": "e", "userId": "sup-user", "timestamp": "not a time"}');
    -- an envelope: its suppressed item goes, the other one is stored
    PERFORM cdp.ingest('{"batch": [{"type": "track", "event": "e", "userId": "sup-user", "messageId": "b1"},
                                   {"type": "track", "event": "e", "userId": "sup-keep", "messageId": "b2"}]}');
END $$;
SELECT is(pg_temp.run(), 7::bigint, 'process_inbox takes all seven messages');

SELECT is((SELECT count(*) FROM cdp.events), 2::bigint, 'only someone else''s message is stored');
SELECT is((SELECT count(*) FROM cdp.events WHERE user_id = 'sup-keep'), 2::bigint, 'the other envelope item is stored');
SELECT is((SELECT count(*) FROM cdp.dead_letters), 0::bigint, 'nothing is dead-lettered, not even the invalid one');
SELECT is((SELECT sum(dropped) FROM cdp.suppressions), 6::numeric, 'the six dropped messages are counted');
SELECT is((SELECT array_agg(dropped ORDER BY dropped) FROM cdp.suppressions), '{1,1,4}'::bigint[],
          'each on the first suppressed identifier it carried');
SELECT ok((SELECT bool_and(last_dropped_at IS NOT NULL) FROM cdp.suppressions), 'with the time of the last drop');
SELECT is((SELECT count(*) FROM cdp.profile_records), (SELECT profiles FROM before),
          'no profile is made');
SELECT is(ARRAY[cdp.resolve('user_id:sup-user'), cdp.resolve('email:sup@example.com'), cdp.resolve('anonymous_id:fresh-anon'),
                cdp.resolve('device_id:fresh-device'), cdp.resolve('user_id:fresh-user')],
          ARRAY[NULL, NULL, NULL, NULL, NULL]::bigint[],
          'no identifier is made, neither the suppressed ones nor those beside them');
SELECT is((SELECT count(*) FROM cdp.identity_evidence) + (SELECT count(*) FROM cdp.identity_pairs)
                  + (SELECT count(*) FROM cdp.identity_violations),
          (SELECT evidence + pairs + violations FROM before), 'no evidence and no violation is recorded');
SELECT throws_ok($$ SELECT cdp.link('email:sup@example.com', 'user_id:someone') $$, '55000',
                 'cannot link a suppressed identifier', 'link refuses a suppressed identifier');
SELECT is(cdp.link('user_id:sup-keep', 'email:keep@example.com'), pg_temp.pid('user_id:sup-keep'),
          'link goes on for everyone else');

-- more suppressions than a backend keeps in memory: looked up by index
INSERT INTO cdp.suppressions (hash) SELECT sha256(i::text::bytea) FROM generate_series(1, 70000) i;
DO $$ BEGIN
    PERFORM pg_temp.send('big1', '{"userId": "sup-user"}', '2026-05-04 10:00+00');
    PERFORM pg_temp.send('big2', '{"userId": "sup-keep"}', '2026-05-04 10:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT array_agg(message_id ORDER BY message_id) FROM cdp.events WHERE ts = '2026-05-04 10:00+00'),
          '{big2}', 'with 70000 suppressions the message is still dropped, the other stored');
SELECT is((SELECT sum(dropped) FROM cdp.suppressions), 7::numeric, 'and counted');

SELECT throws_ok($$ SELECT cdp.forget('anonymous_id:Guest') $$, '22023',
                 'identifier anonymous_id:Guest is blocked: it names no one person',
                 'a blocked placeholder value is refused: it would suppress everyone sending it');

SELECT throws_ok($$ SELECT cdp.forget(NULL) $$, '22004', 'id must not be NULL', 'a NULL identifier is refused');
SELECT throws_ok($$ SELECT cdp.forget('user_id:sup-keep', repeat('x', 1001)) $$, '22023',
                 'reason must be at most 1000 bytes, not 1001', 'the reason is bounded');

SELECT * FROM finish();
ROLLBACK;
