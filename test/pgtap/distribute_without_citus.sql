-- cdp.distribute() on a server without Citus refuses with 55000 and a hint,
-- and changes nothing: unresolved events keep profile_id NULL.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(3);

TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
SELECT cdp.block_identifier('anonymous_id', 'dwc-blocked');
SELECT cdp.ingest('{"type": "track", "event": "Visit", "anonymousId": "dwc-blocked", "messageId": "dwc-1"}');
SELECT cdp.process_inbox();

SELECT throws_ok($$SELECT cdp.distribute()$$, '55000', 'cdp.distribute() needs Citus',
                 'without Citus, cdp.distribute() is refused with 55000');
SELECT is((SELECT profile_id FROM cdp.events WHERE message_id = 'dwc-1'), NULL,
          'an unresolved event keeps profile_id NULL on a single node');
SELECT is((SELECT profile_id FROM cdp.events_resolved WHERE message_id = 'dwc-1'), NULL,
          'and reads as one without a profile');

SELECT * FROM finish();
ROLLBACK;
