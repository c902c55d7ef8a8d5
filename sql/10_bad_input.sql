--
-- 10_bad_input: the bad-input catalogue.  Every message that cannot be stored
-- becomes one dead letter with a stable error_code, a readable
-- error_message and its payload, while the good messages loaded beside it
-- (same COPY, same process_inbox batch, same envelope) are stored.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

-- every section starts from nothing; receipt time is pinned so output is fixed
CREATE FUNCTION pg_temp.reset() RETURNS void LANGUAGE sql AS $$
    TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids RESTART IDENTITY;
    TRUNCATE cdp.events;
$$;
CREATE FUNCTION pg_temp.process() RETURNS bigint LANGUAGE sql AS $$
    UPDATE cdp.inbox SET received_at = '2026-01-02 00:00:00+00';
    SELECT cdp.process_inbox();
$$;
CREATE VIEW pg_temp.dead AS
SELECT id, error_code, error_message,
       CASE WHEN length(payload) > 200
            THEN left(payload, 70) || ' ... (' || length(payload) || ' characters)'
            ELSE payload END AS payload
  FROM cdp.dead_letters;
CREATE VIEW pg_temp.stored AS
SELECT message_id, type, event, user_id, anonymous_id, ts
  FROM cdp.events;

--
-- bulk COPY: malformed lines are kept verbatim and dead-lettered; the load
-- never aborts and the good lines around them are stored
--
SELECT pg_temp.reset();
COPY cdp.inbox (payload) FROM stdin WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02');
{"type":"track","userId":"u1","event":"Copy Good 1","messageId":"copy-1","timestamp":"2026-01-01T10:00:00Z"}
{"type":"track","userId":"u1","event":"Truncated line"
this is not json at all
{"type":"track","userId":"u1","event":"bad \q escape"}
{'type':'track','userId':'u1','event':'single quotes'}
{"type":"track","userId":"u1","event":"trailing comma",}
{"type":"track","userId":"u1","event":"nul \u0000 inside"}
{"type":"track","userId":"u1","event":"lone surrogate \ud800"}
{"type":"track","userId":"u1","event":"Huge Number","properties":{"n":1e1000000}}
{"type":"alias","userId":"u1","event":"Duplicate Keys","type":"track","messageId":"copy-dup","timestamp":"2026-01-01T10:00:02Z"}
{"type":"track","userId":"u1","event":"Copy Good 2 \"quoted\" \\ back\/slash \u00e9","messageId":"copy-2","timestamp":"2026-01-01T10:00:01Z"}
\.
-- copy_rows_are_kept_verbatim_with_source_copy
SELECT id, source, payload FROM cdp.inbox ORDER BY id;

-- blank_line_in_copy_is_a_dead_letter_with_force_not_null (CSV reads an
-- empty line as NULL, which the inbox refuses; FORCE_NOT_NULL keeps it as '')
COPY cdp.inbox (payload) FROM stdin WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02', FORCE_NOT_NULL (payload));

{"type":"track","userId":"u1","event":"After Blank Line","messageId":"copy-4","timestamp":"2026-01-01T10:00:04Z"}
\.

-- deeply_nested_json_in_a_property (100000 '[') sits in the same batch
INSERT INTO cdp.inbox (payload)
SELECT '{"type":"track","userId":"u1","event":"Deep","properties":{"x":'
       || repeat('[', 100000) || '}}';
INSERT INTO cdp.inbox (payload) VALUES
('{"type":"track","userId":"u1","event":"Copy Good 3","messageId":"copy-3","timestamp":"2026-01-01T10:00:03Z"}');

-- process_inbox_counts_every_message_taken
SELECT pg_temp.process() AS taken;
SELECT count(*) AS inbox_left FROM cdp.inbox;
-- bad_lines_are_dead_letters_with_codes_and_verbatim_payloads
SELECT * FROM pg_temp.dead ORDER BY id;
SELECT source, received_at FROM cdp.dead_letters GROUP BY 1, 2;
-- good_lines_in_the_same_load_are_stored (duplicate keys: the last one wins)
SELECT * FROM pg_temp.stored ORDER BY ts;
SELECT event FROM cdp.events WHERE message_id = 'copy-2';

--
-- JSON that is valid but not a Segment message
--
SELECT pg_temp.reset();
SELECT cdp.ingest(m::jsonb) AS enqueued FROM (VALUES
 ('[{"type": "track", "userId": "u", "event": "in an array"}]'),
 ('"just a string"'),
 ('42'),
 ('true'),
 ('null'),
 ('{}'),
 ('{"userId": "u", "event": "no type"}'),
 ('{"type": null, "userId": "u", "event": "null type"}'),
 ('{"type": 7, "userId": "u", "event": "numeric type"}'),
 ('{"type": "purchase", "userId": "u", "event": "unknown type"}'),
 ('{"type": "", "userId": "u", "event": "empty type"}'),
 ('{"type": "track", "event": "no identity"}'),
 ('{"type": "track", "userId": "", "anonymousId": null, "event": "empty identity"}'),
 ('{"type": "alias", "userId": "u"}'),
 ('{"type": "alias", "previousId": "p"}'),
 ('{"type": "alias", "previousId": "p", "anonymousId": "a"}'),
 ('{"type": "track", "userId": "u"}'),
 ('{"type": "track", "userId": "u", "event": ""}'),
 ('{"type": "track", "userId": "u", "event": null}'),
 ('{"type": "group", "userId": "u", "traits": {"name": "no group id"}}'),
 ('{"type": "track", "userId": "u", "event": 5}'),
 ('{"type": "track", "userId": "u", "event": "props array", "properties": [1, 2]}'),
 ('{"type": "identify", "userId": "u", "traits": "vip"}'),
 ('{"type": "track", "userId": "u", "event": "context number", "context": 5}'),
 ('{"type": "track", "userId": {"id": 1}, "event": "userId object"}'),
 ('{"type": "track", "anonymousId": true, "event": "anonymousId boolean"}'),
 ('{"type": "group", "userId": "u", "groupId": ["g"]}'),
 ('{"type": "page", "userId": "u", "name": 5}'),
 ('{"type": "track", "userId": "u", "event": "messageId number", "messageId": 5}'),
 ('{"type": "track", "userId": "u", "event": "bad timestamp", "timestamp": "yesterday"}'),
 ('{"type": "track", "userId": "u", "event": "no such day", "timestamp": "2026-02-30T00:00:00Z"}'),
 ('{"type": "track", "userId": "u", "event": "hour 24", "timestamp": "2026-01-01T24:00:00Z"}'),
 ('{"type": "track", "userId": "u", "event": "epoch number", "timestamp": 1767225600}'),
 ('{"type": "track", "userId": "u", "event": "bad sentAt", "timestamp": "2026-01-01T00:00:00Z", "sentAt": "garbage"}'),
 ('{"type": "track", "userId": "u", "event": "bad originalTimestamp", "originalTimestamp": "soon"}'),
 ('{"type": "track", "userId": "u", "event": "timestamp object", "timestamp": {"at": 1}}')
) AS t(m);
-- ...and beside them, messages that are unusual but valid
SELECT cdp.ingest(m::jsonb) AS enqueued FROM (VALUES
 ('{"type": "track", "userId": 42, "event": "numeric userId", "messageId": "ok-1", "timestamp": "2026-01-01T12:00:00Z"}'),
 ('{"type": "TRACK", "anonymousId": "a1", "event": "upper-case type", "messageId": "ok-2", "timestamp": "2026-01-01T12:00:01Z"}'),
 ('{"type": "alias", "previousId": "a1", "userId": "u9", "messageId": "ok-3", "timestamp": "2026-01-01T12:00:02Z"}'),
 ('{"type": "track", "userId": "u", "event": "null properties", "properties": null, "messageId": "ok-4", "timestamp": "2026-01-01T12:00:03Z"}')
) AS t(m);
SELECT pg_temp.process() AS taken;
-- each_invalid_message_is_one_dead_letter_with_a_stable_code
SELECT * FROM pg_temp.dead ORDER BY id;
-- valid_neighbours_are_stored
SELECT * FROM pg_temp.stored ORDER BY ts;

--
-- messageId: at most 100 characters, counted as characters, not bytes
--
SELECT pg_temp.reset();
SELECT cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'u', 'event', label,
                                     'messageId', id, 'timestamp', '2026-01-01T13:00:00Z'))
  FROM (VALUES ('100 ascii', repeat('a', 100)),
               ('101 ascii', repeat('b', 101)),
               ('100 two-byte', repeat('ü', 100)),
               ('100 four-byte', repeat('😀', 100)),
               ('101 two-byte', repeat('ü', 101))) AS t(label, id);
SELECT pg_temp.process() AS taken;
-- message_id_over_100_characters_is_dead
SELECT error_code, error_message, payload::jsonb ->> 'event' AS event FROM cdp.dead_letters ORDER BY id;
-- message_id_of_100_characters_is_stored_whatever_its_bytes
SELECT event, length(message_id) AS chars, octet_length(message_id) AS bytes
  FROM cdp.events ORDER BY event;

--
-- size limits: cdp.max_event_bytes per message, cdp.max_request_bytes per
-- payload; an oversized envelope item is dead while its siblings are stored
--
SELECT pg_temp.reset();
SET cdp.max_event_bytes = '1kB';
SET cdp.max_request_bytes = '4kB';
SHOW cdp.max_event_bytes;
-- message_over_max_event_bytes_is_too_large
SELECT cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'u', 'event', 'Two kB',
                                     'properties', jsonb_build_object('pad', repeat('x', 2048))));
-- message_of_exactly_max_event_bytes_is_stored, one byte more is not
WITH base AS (
    SELECT e, jsonb_build_object('type', 'track', 'userId', 'u', 'event', e,
                                 'messageId', 'size-' || n, 'timestamp', '2026-01-01T14:00:00Z',
                                 'properties', jsonb_build_object('pad', '')) AS j
      FROM (VALUES (1, 'Exactly 1024'), (2, 'Exactly 1025')) AS v(n, e)
)
SELECT cdp.ingest(jsonb_set(j, '{properties,pad}',
                            to_jsonb(repeat('x', (CASE WHEN e = 'Exactly 1024' THEN 1024 ELSE 1025 END)
                                                 - octet_length(j::text)))))
  FROM base ORDER BY e;
SELECT octet_length(payload) AS bytes FROM cdp.inbox ORDER BY id;
-- envelope_item_over_max_event_bytes_is_dead_its_siblings_are_stored
SELECT cdp.ingest(jsonb_build_object('batch', jsonb_build_array(
    jsonb_build_object('type', 'track', 'userId', 'u', 'event', 'Small Sibling 1',
                       'messageId', 'sib-1', 'timestamp', '2026-01-01T14:00:01Z'),
    jsonb_build_object('type', 'track', 'userId', 'u', 'event', 'Big Item',
                       'messageId', 'sib-big', 'timestamp', '2026-01-01T14:00:02Z',
                       'properties', jsonb_build_object('pad', repeat('y', 1500))),
    jsonb_build_object('type', 'track', 'userId', 'u', 'event', 'Small Sibling 2',
                       'messageId', 'sib-2', 'timestamp', '2026-01-01T14:00:03Z'))));
-- envelope_over_max_request_bytes_is_refused_at_enqueue (every item is small)
SELECT cdp.ingest(jsonb_build_object('batch', (
    SELECT jsonb_agg(jsonb_build_object('type', 'track', 'userId', 'u', 'event', 'Item ' || i,
                                        'properties', jsonb_build_object('pad', repeat('z', 400))))
      FROM generate_series(1, 12) i)));
-- loaded straight into the inbox (as COPY does) it is one too_large dead
-- letter that keeps the payload's first 4 kB
INSERT INTO cdp.inbox (payload)
SELECT jsonb_build_object('batch', (
    SELECT jsonb_agg(jsonb_build_object('type', 'track', 'userId', 'u', 'event', 'Item ' || i,
                                        'properties', jsonb_build_object('pad', repeat('z', 400))))
      FROM generate_series(1, 12) i))::text;
SELECT pg_temp.process() AS taken;
SELECT * FROM pg_temp.dead ORDER BY id;
SELECT * FROM pg_temp.stored ORDER BY ts;
RESET cdp.max_event_bytes;
RESET cdp.max_request_bytes;

--
-- envelopes that are malformed as a whole, or in an item
--
SELECT pg_temp.reset();
-- batch_not_an_array
SELECT cdp.ingest('{"batch": {"type": "track", "userId": "u", "event": "in an object"}}');
SELECT cdp.ingest('{"batch": "nope"}');
-- batch_item_not_an_object, siblings stored
SELECT cdp.ingest('{"batch": [
    {"type": "track", "userId": "u", "event": "Good Item", "messageId": "item-1", "timestamp": "2026-01-01T15:00:00Z"},
    42, "a string", [1, 2], null,
    {"type": "track", "userId": "u", "messageId": "item-no-event"}]}');
SELECT pg_temp.process() AS taken;
SELECT * FROM pg_temp.dead ORDER BY id;
SELECT * FROM pg_temp.stored ORDER BY ts;

--
-- error messages quote the offending value cut to a length; the cut must
-- not split a character, or the message is not valid UTF-8
--
SELECT pg_temp.reset();
SELECT cdp.ingest(jsonb_build_object('type', 'a' || repeat('é', 40), 'userId', 'u'));
SELECT cdp.ingest(jsonb_build_object('type', 'track', 'userId', 'u', 'event', 'long bad timestamp',
                                     'timestamp', 'x' || repeat('é', 40)));
SELECT pg_temp.process() AS taken;
-- error_message_is_valid_utf8_when_the_quoted_value_is_cut
SELECT error_code,
       convert_from(convert_to(error_message, 'UTF8'), 'UTF8') = error_message AS valid_utf8
  FROM cdp.dead_letters ORDER BY id;

SELECT pg_temp.reset();

--
-- a NULL payload (a blank line in a CSV COPY without FORCE_NOT_NULL) does not
-- abort the load: it becomes an invalid_json dead letter with an empty payload
--
COPY cdp.inbox (payload) FROM stdin WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02');
{"type":"track","userId":"u1","event":"Before Blank","messageId":"null-1","timestamp":"2026-01-01T10:00:05Z"}

{"type":"track","userId":"u1","event":"After Blank","messageId":"null-2","timestamp":"2026-01-01T10:00:06Z"}
\.
SELECT count(*) FILTER (WHERE payload IS NULL) AS null_payloads FROM cdp.inbox;
SELECT pg_temp.process() AS taken;
SELECT error_code, error_message, payload = '' AS empty_payload FROM cdp.dead_letters ORDER BY id;
SELECT * FROM pg_temp.stored ORDER BY ts;

SELECT pg_temp.reset();
