-- A rebuild reads evidence and stored rows ahead of the one it handles (so
-- that the graph's cache misses overlap) and keeps their memory across its
-- periodic resets.  Thousands of rows, each merge right after the rows that
-- made its profiles, and a user id pattern blocked since (a regex, matched
-- case-insensitively): applied for real, the rebuild drops and moves exactly
-- the identifiers it should, rewrites exactly the evidence rows whose links
-- changed, and a dry run after it finds nothing.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(9);

\set send_ts '2026-05-01 00:00:00+00'
\ir include/identity_setup.psql

-- 3000 people, each merge right after the rows that made its profiles
\set people 3000
\ir include/people_graph.psql

SELECT is(pg_temp.dry(), '0/0', 'the replay of the generated graph agrees with the stores');

-- user ids ending in 7 (300 people, 100 of them merged) link nothing now
SELECT cdp.block_identifier('user_id', '^u[0-9]*7$', true);
CREATE TEMP TABLE before AS SELECT seq, linked FROM cdp.identity_evidence;
CREATE TEMP TABLE r AS SELECT cdp.rebuild_identities() AS r;
SELECT is((SELECT (r->>'changed')::int FROM r), 400,
          'the rebuild moves or drops 400 identifiers: the blocked user ids and the anonymous ids they merged');
SELECT is((SELECT count(*) FROM cdp.identities i JOIN ppl ON i.identifier = ppl.uid WHERE p % 10 = 7),
          0::bigint, 'no blocked user id is stored');
SELECT is((SELECT count(*) FROM cdp.identities), 7000::bigint - 300, 'every other identifier is');
SELECT is((SELECT count(*) FROM ppl WHERE merged AND p % 10 = 7 AND cdp.resolve(an) = 3000 + p),
          100::bigint, 'the anonymous ids of blocked merged people are back on their own profiles');
SELECT is((SELECT count(*) FROM ppl WHERE merged AND p % 10 <> 7 AND cdp.resolve(an) = p),
          900::bigint, 'the others stay merged');
SELECT is((SELECT count(*) FROM cdp.identity_evidence e JOIN before b USING (seq) WHERE e.linked <> b.linked),
          400::bigint, 'exactly the 400 evidence rows that linked a blocked user id are rewritten');
SELECT is((SELECT count(*) FROM cdp.identity_evidence e JOIN ppl ON e.seq IN (3 * p - 2, 3 * p)
            WHERE p % 10 = 7 AND e.linked = CASE WHEN e.seq = 3 * p THEN ARRAY[an] ELSE ARRAY[em] END),
          400::bigint, 'each to what it links without the user id');
SELECT is(pg_temp.dry(), '0/0', 'a dry run after the rebuild finds nothing to change');

SELECT * FROM finish();
ROLLBACK;
