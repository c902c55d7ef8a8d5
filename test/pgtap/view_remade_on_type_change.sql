-- A generated view made again (drop and create) when a trait's type
-- changes keeps the grants it had, also those made by hand to roles that
-- are no analysts; objects built on it make the change fail with an error
-- that says what to do, and nothing changes.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(6);

CREATE SCHEMA bi;
CREATE ROLE regress_reader;
CREATE ROLE regress_editor;
SELECT cdp.define_trait('age', 'int');
SELECT cdp.create_profile_view('bi.people', 'analytics');
GRANT SELECT ON bi.people TO regress_reader;
GRANT SELECT ON bi.people TO regress_editor WITH GRANT OPTION;

SELECT lives_ok($$SELECT cdp.define_trait('age', 'numeric')$$, 'a trait''s type changes');
SELECT is((SELECT format_type(a.atttypid, NULL) FROM pg_attribute a WHERE a.attrelid = 'bi.people'::regclass AND a.attname = 'age'),
          'numeric', 'the view was made again with the new type');
SELECT ok(has_table_privilege('regress_reader', 'bi.people', 'SELECT'), 'a grant made by hand is kept');
SELECT ok(has_table_privilege('regress_editor', 'bi.people', 'SELECT WITH GRANT OPTION'), '... with its grant option');

CREATE VIEW bi.adults AS SELECT profile_id FROM bi.people WHERE age >= 18;
SELECT throws_ok($$SELECT cdp.define_trait('age', 'int')$$, '2BP01',
                 'cannot make view bi.people again: other objects depend on it',
                 'objects built on the view make a type change fail, with a clear error');
SELECT is((SELECT type::text FROM cdp.trait_definitions WHERE name = 'age'), 'numeric', 'and nothing changed');

SELECT * FROM finish();
ROLLBACK;
