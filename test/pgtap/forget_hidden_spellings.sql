-- cdp.forget finds queued and dead-lettered messages whose text does not
-- hold the identifier's value literally: a value spelled with \u escapes
-- (ingest decodes them, so the message is the person's) and a payload over
-- cdp.max_request_bytes kept as its first 4 kB, cut in the middle of the
-- value.  Neither may survive the erasure.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(9);

\set send_ts '2026-05-01 10:00:00+00'
\ir include/privacy_setup.psql
SET LOCAL cdp.max_request_bytes = 5000;

DO $$ BEGIN
    PERFORM pg_temp.send('h1', '{"userId": "hidden@example.com"}');
    -- over the limit: kept as its first 4 kB, which end inside the user id
    INSERT INTO cdp.inbox (payload)
    VALUES ('{"type":"track","event":"x","properties":{"pad":"' || repeat('p', 4026)
            || '"},"userId":"hidden@example.com","messageId":"h2"}' || repeat(' ', 2000));
    -- a dead letter of someone else whose text ends with two letters of it
    INSERT INTO cdp.inbox (payload) VALUES ('not json at all hi');
    PERFORM pg_temp.run();
END $$;
SELECT is((SELECT right(payload, 12) FROM cdp.dead_letters WHERE error_code = 'too_large'),
          'd":"hidden@e', 'setup: the truncated dead letter ends inside the user id');

-- queued, the value spelled with escapes only
INSERT INTO cdp.inbox (payload)
VALUES ('{"type":"track","event":"x","userId":"\u0068idden@example.com","messageId":"h3"}'),
       ('{"type":"track","event":"x","userId":"hidd\u0065n\u0040example.com","messageId":"h4"}');

SELECT is((cdp.forget('user_id:hidden@example.com') ->> 'inbox')::int, 2,
          'the queued messages spelled with escapes are erased');
SELECT is((SELECT count(*) FROM cdp.inbox), 0::bigint, 'nothing of theirs stays queued');
SELECT is((SELECT count(*) FROM cdp.dead_letters WHERE error_code = 'too_large'), 0::bigint,
          'the dead letter cut inside the user id is erased');
SELECT is((SELECT count(*) FROM cdp.dead_letters WHERE payload = 'not json at all hi'), 1::bigint,
          'a text ending with fewer than three bytes of the value is not theirs');
SELECT is_empty($$SELECT * FROM pg_temp.find_values(ARRAY['hidden@example.com', '"hidden@e'])$$,
                'no trace of the value, whole or cut, anywhere in cdp');

-- export_subject reads the same way
INSERT INTO cdp.inbox (payload)
VALUES ('{"type":"track","event":"x","userId":"\u0078port@example.com","messageId":"h5"}');
SELECT is(jsonb_array_length(cdp.export_subject('user_id:xport@example.com') -> 'inbox'), 1,
          'export_subject lists a queued message spelled with escapes');

-- a person with many identifiers: each queued message is tested against all
RESET cdp.max_request_bytes;
DO $$ BEGIN
    PERFORM cdp.ingest(jsonb_build_object('batch', (
        SELECT jsonb_agg(jsonb_build_object('type', 'identify', 'userId', 'many-user',
                                            'anonymousId', 'many-anon-' || g, 'messageId', 'ma' || g))
          FROM generate_series(1, 300) g)));
    PERFORM pg_temp.run();
    INSERT INTO cdp.inbox (payload) VALUES
        ('{"type":"track","event":"x","anonymousId":"many-anon-277","messageId":"mq1"}'),
        ('{"type":"track","event":"x","anonymousId":"MANY-anon-2770","messageId":"mq2"}');
END $$;
SELECT is((cdp.forget('user_id:many-user') ->> 'identifiers')::int, 301, 'setup: a person with 301 identifiers');
SELECT is((SELECT array_agg(payload::jsonb ->> 'messageId') FROM cdp.inbox), '{mq2}',
          'their queued message is erased; another whose text holds one of their values is not');

SELECT * FROM finish();
ROLLBACK;
