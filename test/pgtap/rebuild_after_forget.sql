-- A rebuild after cdp.forget erased a profile that evidence shared with
-- other people still names: the replay knows the erased profile's id (an
-- evidence row kept for the others created it) and would redirect its
-- record to where its other identifiers went, but the record is gone.  That
-- redirect is never written, so it must not be reported either: a rebuild
-- and then a dry run report 0, as after any rebuild.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

-- u1, d6 and a8 make profile P; d3 joins it, and a18 through d3
DO $$ BEGIN
PERFORM cdp.ingest('{"type": "alias", "userId": "u1", "previousId": "a8", "context": {"device": {"id": "d6"}},
                    "messageId": "raf-1", "timestamp": "2026-06-01T00:00:01Z"}');
PERFORM cdp.ingest('{"type": "track", "event": "e", "anonymousId": "a8", "context": {"device": {"id": "d3"}},
                    "messageId": "raf-2", "timestamp": "2026-06-01T00:00:09Z"}');
PERFORM cdp.ingest('{"type": "track", "event": "e", "anonymousId": "a18", "context": {"device": {"id": "d3"}},
                    "messageId": "raf-3", "timestamp": "2026-06-01T00:00:00Z"}');
PERFORM cdp.process_inbox();
-- taking a8 out leaves d3 and a18 with P's id and gives u1 and d6 a new one
PERFORM cdp.split_profile(cdp.resolve('anonymous_id:a8'), 'anonymous_id:a8');
PERFORM cdp.ingest('{"type": "track", "event": "e", "anonymousId": "a8", "context": {"device": {"id": "d4"}},
                    "messageId": "raf-4", "timestamp": "2026-06-01T00:00:00Z"}');
PERFORM cdp.process_inbox();
END $$;
CREATE TEMP TABLE p AS SELECT cdp.resolve('anonymous_id:a18') AS erased, cdp.resolve('user_id:u1') AS kept;
SELECT isnt((SELECT erased FROM p), (SELECT kept FROM p), 'setup: u1 and a18 are apart after the split');

-- forgetting a18 erases P's record; raf-1's evidence row, which made P, stays for u1
DO $$ BEGIN PERFORM cdp.forget('anonymous_id:a18', 'ticket 1'); END $$;
SELECT ok(NOT EXISTS (SELECT FROM cdp.profile_records WHERE profile_id = (SELECT erased FROM p))
          AND EXISTS (SELECT FROM cdp.identity_evidence WHERE created_profile = (SELECT erased FROM p)),
          'setup: the erased profile has no record, evidence still names it');

DO $$ BEGIN PERFORM cdp.rebuild_identities(); END $$;
SELECT is((SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities(true) r), '0/0',
          'a dry run after the rebuild reports 0');
SELECT is((SELECT (r->>'changed') || '/' || (r->>'profiles_changed') FROM cdp.rebuild_identities() r), '0/0',
          'and so does the next rebuild');

SELECT * FROM finish();
ROLLBACK;
