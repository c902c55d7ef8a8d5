--
-- 30_dead_letters: cdp.replay_dead_letters(ids) re-enqueues dead letters
-- with their original source and receipt time and deletes them; a replayed
-- message that is still bad comes back as a new dead letter, a fixed one is
-- stored (and deduplicated like any other).
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids RESTART IDENTITY;
TRUNCATE cdp.events;

-- the sources the rows below come from
SELECT count(cdp.create_source(name)) >= 0 AS registered
  FROM unnest(ARRAY['ios', 'android', 'web', 'node']) name
 WHERE name NOT IN (SELECT s.name FROM cdp.sources s);

SET cdp.max_event_bytes = '1kB';
-- queued directly with a known source and receipt time
INSERT INTO cdp.inbox (payload, source, received_at) VALUES
 -- 1: too large while max_event_bytes is 1kB; sentAt is 10 s after timestamp
 ('{"type":"track","userId":"u","event":"Big","messageId":"r-big",'
  '"timestamp":"2026-01-01T08:00:00Z","sentAt":"2026-01-01T08:00:10Z",'
  '"properties":{"pad":"' || repeat('x', 2000) || '"}}',
  'ios', '2025-12-31 12:00:00+00'),
 -- 2: never valid
 ('{"type":"track","userId":"u","messageId":"r-noevent"}', 'android', '2025-12-31 12:00:01+00'),
 -- 3: never valid
 ('{"type":"track",', 'web', '2025-12-31 12:00:02+00'),
 -- 4: an envelope whose second item is too large
 ('{"batch":[{"type":"track","userId":"u","event":"Small","messageId":"r-small",'
  '"timestamp":"2025-12-31T11:00:00Z"},'
  '{"type":"track","userId":"u","event":"Big Item","messageId":"r-big-item",'
  '"timestamp":"2025-12-31T11:00:01Z","properties":{"pad":"' || repeat('y', 2000) || '"}}],'
  '"context":{"app":"envelope"}}',
  'node', '2025-12-31 12:00:03+00'),
 -- 5: too large now; by the time it is replayed its messageId is stored
 ('{"type":"track","userId":"u","event":"Late Retry","messageId":"r-dup",'
  '"timestamp":"2025-12-31T11:00:02Z","properties":{"pad":"' || repeat('z', 2000) || '"}}',
  'node', '2025-12-31 12:00:04+00');
SELECT cdp.process_inbox() AS taken;
SELECT id, source, error_code, received_at, failed_at IS NOT NULL AS has_failed_at
  FROM cdp.dead_letters ORDER BY id;
SELECT message_id, source, received_at FROM cdp.events ORDER BY message_id;

-- replay_by_ids_re_enqueues_with_original_source_and_received_at
SELECT cdp.replay_dead_letters(ARRAY[2]::bigint[]) AS replayed;
SELECT payload, source, received_at FROM cdp.inbox ORDER BY id;
-- replay_deletes_the_dead_letter
SELECT id FROM cdp.dead_letters ORDER BY id;
-- replayed_message_that_is_still_bad_comes_back_as_a_dead_letter
SELECT cdp.process_inbox() AS taken;
SELECT id, source, error_code, received_at, payload FROM cdp.dead_letters WHERE id > 5 ORDER BY id;

-- replay_of_unknown_or_no_ids_does_nothing
SELECT cdp.replay_dead_letters(ARRAY[]::bigint[]) AS replayed_none;
SELECT cdp.replay_dead_letters(ARRAY[123456]::bigint[]) AS replayed_unknown;
SELECT count(*) AS inbox_rows FROM cdp.inbox;

-- fixed_message_is_stored_after_replay (the limit is raised, then replayed)
RESET cdp.max_event_bytes;
-- meanwhile the client retried r-dup with a small payload, which was stored
INSERT INTO cdp.inbox (payload, source, received_at) VALUES
 ('{"type":"track","userId":"u","event":"Retry","messageId":"r-dup","timestamp":"2025-12-31T11:00:02Z"}',
  'node', '2025-12-31 12:30:00+00');
SELECT cdp.process_inbox() AS taken;
SELECT cdp.replay_dead_letters(ARRAY[1, 4, 5, 999]::bigint[]) AS replayed;
SELECT source, received_at, left(payload, 60) AS payload FROM cdp.inbox ORDER BY id;
SELECT cdp.process_inbox() AS taken;
-- the stored event keeps its first receipt time, so the clock-skew
-- correction is the one it would have had: 2025-12-31 12:00:00 - 10 s
SELECT message_id, event, source, ts, received_at FROM cdp.events ORDER BY message_id;
-- an envelope item replays as a single message with the envelope's context
SELECT message_id, context FROM cdp.events WHERE message_id = 'r-big-item';
-- replayed_message_already_stored_is_a_duplicate_not_a_second_row
SELECT message_id, count(*) FROM cdp.events WHERE message_id = 'r-dup' GROUP BY 1;
SELECT event FROM cdp.events WHERE message_id = 'r-dup';
SELECT id, error_code FROM cdp.dead_letters ORDER BY id;

-- replay_without_ids_replays_every_dead_letter, in id order
SELECT cdp.replay_dead_letters() AS replayed_all;
SELECT count(*) AS dead_left FROM cdp.dead_letters;
SELECT source, received_at, payload FROM cdp.inbox ORDER BY id;
SELECT cdp.process_inbox() AS taken;
SELECT id, source, error_code, received_at FROM cdp.dead_letters ORDER BY id;

TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids RESTART IDENTITY;
TRUNCATE cdp.events;
