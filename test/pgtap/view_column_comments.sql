-- Generated views describe their columns (what BI tools show next to a
-- column): the trait, its type, and the purpose it needs; made again with
-- the view.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(4);

CREATE SCHEMA bi;
CREATE FUNCTION pg_temp.column_comment(v regclass, col name) RETURNS text LANGUAGE sql AS $$
    SELECT col_description(v, a.attnum) FROM pg_attribute a WHERE a.attrelid = v AND a.attname = col
$$;
SELECT cdp.define_trait('email', 'text', 'marketing');
SELECT cdp.define_trait('age', 'int');
SELECT cdp.create_profile_view('bi.people', 'analytics');

SELECT is(pg_temp.column_comment('bi.people', 'profile_id'),
          'the canonical profile''s id (cdp.resolve gives it for an identifier)', 'profile_id is described');
SELECT is(pg_temp.column_comment('bi.people', 'email'),
          'trait "email" as text; NULL where the person has not granted marketing, or the value is absent or does not convert',
          'a trait of another purpose: its type and the purpose it needs');
SELECT is(pg_temp.column_comment('bi.people', 'age'),
          'trait "age" as integer; NULL where the value is absent or does not convert', 'a trait of the view''s purpose');
SELECT cdp.define_trait('age', 'numeric');
SELECT is(pg_temp.column_comment('bi.people', 'age'),
          'trait "age" as numeric; NULL where the value is absent or does not convert', 'made again with the view');

SELECT * FROM finish();
ROLLBACK;
