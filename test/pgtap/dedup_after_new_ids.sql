-- A run of new messageIds is recorded with a plain insert; a batch that
-- meets a recorded key (a retry, a key recorded long ago) still finds it:
-- the insert is rolled back whole and the batch deduplicated key by key.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(13);

TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
TRUNCATE cdp.events;

CREATE FUNCTION pg_temp.send(ids text[]) RETURNS bigint LANGUAGE sql AS $$
    SELECT cdp.ingest(jsonb_build_object('batch',
        (SELECT jsonb_agg(jsonb_build_object('type', 'track', 'anonymousId', 'a-' || id,
                                             'event', 'E ' || n, 'messageId', id) ORDER BY n)
           FROM unnest(ids) WITH ORDINALITY AS u(id, n))));
    SELECT cdp.process_inbox();
$$;
CREATE FUNCTION pg_temp.stored(id text) RETURNS int LANGUAGE sql AS $$
    SELECT count(*)::int FROM cdp.events WHERE message_id = id;
$$;

SELECT is(pg_temp.send('{n-1,n-2}'), 2::bigint, 'a batch of new messageIds is taken');
SELECT is((SELECT count(*)::int FROM cdp.events), 2, 'and stored');

-- the batch after a run of new ones meets a recorded key in its middle
SELECT is(pg_temp.send('{n-3,n-1,n-4}'), 3::bigint, 'a batch with one retry among new ids is taken');
SELECT is(pg_temp.stored('n-1'), 1, 'the retry is a duplicate');
SELECT is(pg_temp.stored('n-3') + pg_temp.stored('n-4'), 2,
          'the new ids beside it are stored (the rolled back insert left none of them behind)');
SELECT is((SELECT count(*)::int FROM cdp.message_ids), 4, 'each accepted key is recorded once');

-- new ones again, then a retry again
SELECT is(pg_temp.send('{n-5,n-6}'), 2::bigint, 'new ids after a retry are taken');
SELECT is(pg_temp.send('{n-7,n-6}'), 2::bigint, 'and a retry after them');
SELECT results_eq($$SELECT message_id, count(*)::int FROM cdp.events
                    WHERE message_id IN ('n-5', 'n-6', 'n-7') GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('n-5', 1), ('n-6', 1), ('n-7', 1)$$,
                  'every id is stored once');

-- a key recorded before the window, met after a run of new ids, is renewed
UPDATE cdp.message_ids SET seen_at = seen_at - interval '2 days'
 WHERE message_key = substr(encode(sha256(convert_to('n-1', 'UTF8')), 'hex'), 1, 32)::uuid;
SELECT is(pg_temp.send('{n-8}'), 1::bigint, 'a run of new ids again');
SELECT is(pg_temp.send('{n-9,n-1}'), 2::bigint, 'a batch with an id older than the window is taken');
SELECT is(pg_temp.stored('n-1'), 2, 'the old id is accepted again');
SELECT is((SELECT count(*)::int FROM cdp.message_ids WHERE seen_at < now() - interval '1 day'), 0,
          'and its key renewed');

SELECT * FROM finish();
ROLLBACK;
