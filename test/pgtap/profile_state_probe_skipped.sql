-- Identifiers that join a profile bring the traits and consent they already
-- hold: a probe of cdp.identifier_traits and cdp.identifier_consent per
-- chunk.  While neither table has ever held a row there is nothing to find,
-- and the probe is not run; once one has, it is.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

SET LOCAL timezone = 'UTC';
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids;
-- a new, empty file for each: tables that never held a row
TRUNCATE cdp.identifier_traits, cdp.identifier_consent, cdp.consent_log;
CREATE FUNCTION pg_temp.scans() RETURNS bigint LANGUAGE sql AS $$
    SELECT sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0))::bigint FROM pg_stat_xact_user_tables
     WHERE relid IN ('cdp.identifier_traits'::regclass, 'cdp.identifier_consent'::regclass)
$$;

SELECT pg_temp.scans() AS before \gset
SELECT count(cdp.ingest(jsonb_build_object('type', 'track', 'event', 'e',
                                           'anonymousId', 'probe-visitor-' || i))) AS queued
  FROM generate_series(1, 5) AS i \gset
SELECT is(cdp.process_inbox(), 5::bigint, 'five new visitors');
SELECT is(pg_temp.scans() - :before, 0::bigint,
          'no identifier has ever held state: the stores are not probed');

-- consent recorded for an identifier before its first message
DO $$ BEGIN PERFORM cdp.set_consent('anonymous_id:probe-consented', 'marketing', true); END $$;
SELECT pg_temp.scans() AS before \gset
SELECT cdp.ingest('{"type":"track","event":"e","anonymousId":"probe-consented"}') AS queued \gset
SELECT cdp.process_inbox() AS taken \gset
SELECT cmp_ok(pg_temp.scans() - :before, '>', 0::bigint, 'once one has, they are');
SELECT is(cdp.consent_of(cdp.resolve('anonymous_id:probe-consented')) -> 'marketing' ->> 'granted',
          'true', 'and the new profile gets the consent');

SELECT * FROM finish();
ROLLBACK;
