-- A definition's backfill of a trait without a filter reads only the value
-- at its property (a value, not each event's document, goes through the
-- sort): it must count exactly what ingest counts from the whole
-- properties, for every kind and every shape of value: missing, null, a
-- string where a number is wanted, a container, a path through an array
-- (object keys only), a nested path.  The same definitions are counted by
-- ingest (a_*, defined first) and by a backfill (b_*, defined after).
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

\set send_ts '2026-04-01 00:00:00+00'
\ir include/identity_setup.psql
TRUNCATE cdp.trait_states;
DELETE FROM cdp.computed_traits;

CREATE TEMP TABLE defs (kind text, property text, filter jsonb);
INSERT INTO defs VALUES
    ('count', NULL, NULL), ('count', 'p.q', NULL), ('sum', 'p.q', NULL), ('avg', 'p.q', NULL),
    ('min', 'p.q', NULL), ('max', 'p', NULL), ('first', 'p.q', NULL), ('last', 'p.q', NULL),
    ('unique_list', 'p.q', NULL), ('unique_count', 'p.q', NULL), ('most_frequent', 'p.q', NULL),
    ('first', 'p.0', NULL), ('sum', 'p.q', '{"kind": "x"}');
ALTER TABLE defs ADD COLUMN n serial;

SELECT count(cdp.define_computed_trait('a_' || d.n, d.kind, 'T', d.property, filter => d.filter))
  FROM defs d;

-- every shape of value, for three people, at distinct times
SELECT pg_temp.send('m' || i, jsonb_build_object('event', 'T', 'userId', 'u' || i % 3, 'properties', p),
                    timestamptz '2026-03-30 00:00:00+00' + i * interval '1 minute')
  FROM unnest(ARRAY[
           '{"p": {"q": 5}, "kind": "x"}', '{"p": {"q": 2.5}}', '{"p": {"q": null}, "kind": "x"}',
           '{"p": {"q": "7"}}', '{"p": [1, 2]}', '{"p": 3, "kind": "x"}', '{}', '{"p": null}',
           '{"p": {"q": {"r": 1}}}', '{"p": {"q": [1, "a"]}, "kind": "x"}', '{"p": ["x", "y"]}',
           '{"p": {"0": "zero"}}', '{"p": {"q": -4}}', '{"p": {"q": 5}, "kind": "x"}',
           '{"p": {"q": "a"}}', '{"p": {"q": true}}', '{"p": {"q": 1e3}, "kind": "y"}'
       ]::jsonb[]) WITH ORDINALITY AS m(p, i);
SELECT pg_temp.run();

SELECT count(cdp.define_computed_trait('b_' || d.n, d.kind, 'T', d.property, filter => d.filter))
  FROM defs d;

CREATE TEMP TABLE compared AS
SELECT u.id, d.n, cdp.computed_traits_of(pg_temp.pid(u.id)) -> ('a_' || d.n) AS ingested,
       cdp.computed_traits_of(pg_temp.pid(u.id)) -> ('b_' || d.n) AS backfilled
  FROM (VALUES ('user_id:u0'), ('user_id:u1'), ('user_id:u2')) AS u(id), defs d;

SELECT is((SELECT count(*) FROM compared), 39::bigint, 'every person and definition is compared');
-- without a value: sum, avg and min of u0 (no number at p.q), the filtered
-- sum of u0, max of p for u1 and u2 (objects, arrays), first of p.0 for u1
-- and u2
SELECT is((SELECT count(*) FROM compared WHERE ingested IS NOT NULL AND ingested <> 'null'), 31::bigint,
          'all but 8 of them have a value');
SELECT is((SELECT array_agg(format('%s %s: %s / %s', id, n, ingested, backfilled) ORDER BY id, n)
             FROM compared WHERE ingested IS DISTINCT FROM backfilled),
          NULL, 'the backfill counts what ingest counted, value by value');
SELECT is((SELECT array_agg(c.backfilled ORDER BY c.id) FROM compared c JOIN defs d USING (n)
            WHERE d.property = 'p.0'),
          ARRAY['"zero"', 'null', 'null']::jsonb[], 'a path goes through object keys only, never an array''s index');

SELECT * FROM finish();
ROLLBACK;
