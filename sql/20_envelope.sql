--
-- 20_envelope: batch envelopes {"batch": [...], "context", "integrations",
-- "sentAt", "writeKey"}: what items inherit, what is never stored, where
-- unknown fields go, and what cdp.ingest returns.
--
SET timezone = 'UTC';
SET datestyle = 'ISO, YMD';

CREATE FUNCTION pg_temp.reset() RETURNS void LANGUAGE sql AS $$
    TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids RESTART IDENTITY;
    TRUNCATE cdp.events;
$$;
-- receipt time pinned to 2026-01-02 00:00:00 UTC so corrected times are fixed
CREATE FUNCTION pg_temp.process() RETURNS bigint LANGUAGE sql AS $$
    UPDATE cdp.inbox SET received_at = '2026-01-02 00:00:00+00';
    SELECT cdp.process_inbox();
$$;

--
-- cdp.ingest returns how many messages the payload holds
--
SELECT pg_temp.reset();
-- ingest_returns_batch_length
SELECT cdp.ingest('{"batch": [{"type": "track", "userId": "u", "event": "a"},
                              {"type": "track", "userId": "u", "event": "b"},
                              {"type": "identify", "userId": "u"}]}') AS three;
-- ingest_returns_1_for_a_single_message
SELECT cdp.ingest('{"type": "track", "userId": "u", "event": "single"}') AS one;
-- ingest_returns_0_for_an_empty_batch_and_enqueues_nothing
SELECT cdp.ingest('{"batch": []}') AS zero;
SELECT count(*) AS inbox_rows FROM cdp.inbox;
-- an envelope is one inbox row, whatever it holds
SELECT id, source FROM cdp.inbox ORDER BY id;
SELECT pg_temp.process() AS taken;
SELECT type, event, source, received_at FROM cdp.events ORDER BY event NULLS LAST;

--
-- context and integrations: the envelope's apply to every item; an item's
-- own keys win, key by key (a nested object is replaced whole, not merged)
--
SELECT pg_temp.reset();
SELECT count(cdp.create_source('node')) AS sources WHERE NOT EXISTS (SELECT FROM cdp.sources WHERE name = 'node');
SELECT cdp.ingest('{
  "batch": [
    {"type": "track", "userId": "u1", "event": "Own Context", "messageId": "env-1",
     "timestamp": "2026-01-01T10:00:00Z",
     "context": {"ip": "10.0.0.1", "library": {"name": "item-lib"}},
     "integrations": {"All": false, "Amplitude": true}},
    {"type": "track", "userId": "u1", "event": "No Context", "messageId": "env-2",
     "timestamp": "2026-01-01T10:00:00Z"},
    {"type": "track", "userId": "u1", "event": "Null Context", "messageId": "env-3",
     "timestamp": "2026-01-01T10:00:00Z", "context": null, "integrations": null},
    {"type": "identify", "userId": "u1", "messageId": "env-4",
     "timestamp": "2026-01-01T10:00:00Z", "context": {"locale": "de-DE"},
     "traits": {"plan": "pro"}}
  ],
  "context": {"library": {"name": "analytics-node", "version": "1.0"}, "locale": "en-US"},
  "integrations": {"All": true, "Mixpanel": false},
  "writeKey": "cdp_regress_envelope_key"
}', 'node');
SELECT pg_temp.process() AS taken;
-- envelope_context_is_merged_key_by_key_item_keys_win
SELECT message_id, event, context FROM cdp.events ORDER BY message_id;
-- envelope_integrations_are_merged_key_by_key_item_keys_win
SELECT message_id, extra -> 'integrations' AS integrations FROM cdp.events ORDER BY message_id;
-- every_item_keeps_the_envelope_source
SELECT DISTINCT source FROM cdp.events;
-- write_key_is_never_stored
SELECT count(*) AS rows_with_write_key
  FROM cdp.events e WHERE to_jsonb(e)::text LIKE '%cdp_regress_envelope_key%';

--
-- sentAt: the envelope's applies to items that have none; an item's own wins
-- ts = receivedAt - (sentAt - timestamp); receivedAt is 2026-01-02 00:00:00
--
SELECT pg_temp.reset();
SELECT cdp.ingest('{
  "batch": [
    {"type": "track", "userId": "u", "event": "Envelope sentAt", "messageId": "s-1",
     "timestamp": "2026-03-01T11:59:00Z"},
    {"type": "track", "userId": "u", "event": "Own sentAt", "messageId": "s-2",
     "timestamp": "2026-03-01T11:59:00Z", "sentAt": "2026-03-01T11:59:30Z"},
    {"type": "track", "userId": "u", "event": "Null sentAt", "messageId": "s-3",
     "timestamp": "2026-03-01T11:59:00Z", "sentAt": null},
    {"type": "track", "userId": "u", "event": "RudderStack originalTimestamp", "messageId": "s-4",
     "originalTimestamp": "2026-03-01T11:58:00Z"}
  ],
  "sentAt": "2026-03-01T12:00:00Z"
}');
-- an envelope without sentAt corrects nothing
SELECT cdp.ingest('{"batch": [{"type": "track", "userId": "u", "event": "No sentAt anywhere",
                               "messageId": "s-5", "timestamp": "2025-12-31T10:00:00Z"}],
                    "sentAt": null}');
SELECT pg_temp.process() AS taken;
-- envelope_sent_at_corrects_items_without_their_own
SELECT message_id, event, ts, original_timestamp, sent_at
  FROM cdp.events ORDER BY message_id;

--
-- unknown top-level fields land in cdp.events.extra; mapped fields and
-- writeKey do not
--
SELECT pg_temp.reset();
SELECT cdp.ingest('{"type": "track", "userId": "u", "anonymousId": "a", "event": "Extra Fields",
                    "messageId": "x-1", "timestamp": "2026-01-01T09:00:00Z",
                    "sentAt": "2026-01-01T09:00:00Z",
                    "properties": {"p": 1}, "context": {"c": 1},
                    "channel": "server", "version": 2, "custom": {"nested": [1, 2]},
                    "receivedAt": "1999-01-01T00:00:00Z",
                    "writeKey": "cdp_regress_single_key"}');
SELECT cdp.ingest('{"batch": [{"type": "page", "userId": "u", "name": "Home", "messageId": "x-2",
                               "timestamp": "2026-01-01T09:00:01Z", "category": "Docs"}],
                    "writeKey": "cdp_regress_batch_key", "metadata": {"nodeVersion": "20"}}');
SELECT pg_temp.process() AS taken;
-- unknown_top_level_fields_land_in_extra
SELECT message_id, type, name, extra FROM cdp.events ORDER BY message_id;
-- a client's receivedAt is not believed: receipt time is the server's
SELECT message_id, received_at FROM cdp.events ORDER BY message_id;
-- write_key_of_a_single_message_is_never_stored
SELECT count(*) AS rows_with_write_key
  FROM cdp.events e WHERE to_jsonb(e)::text LIKE '%cdp_regress_%_key%';

--
-- a write key is a secret: it is not kept in a dead letter either
--
SELECT pg_temp.reset();
SELECT cdp.ingest('{"batch": [{"type": "track", "userId": "u", "messageId": "no-event"}],
                    "writeKey": "cdp_regress_dead_batch_key"}');
SELECT cdp.ingest('{"type": "track", "userId": "u", "writeKey": "cdp_regress_dead_single_key"}');
SELECT cdp.ingest('{"batch": "not an array", "writeKey": "cdp_regress_dead_envelope_key"}');
SELECT pg_temp.process() AS taken;
SELECT error_code FROM cdp.dead_letters ORDER BY id;
-- write_key_is_never_stored_in_dead_letters
SELECT id, error_code, payload LIKE '%cdp_regress_dead_%' AS keeps_write_key
  FROM cdp.dead_letters ORDER BY id;

SELECT pg_temp.reset();
