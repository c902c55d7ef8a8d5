-- Identity rules and blocked values that cannot work are refused when they
-- are written (cdp.set_identity_rule, cdp.block_identifier, or straight
-- into the tables), never discovered at ingest: a time window that would
-- overflow the time arithmetic, priorities and limits out of range, a regex
-- that does not compile, a value no identifier of its type can have.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(32);

\set send_ts '2026-05-01 00:00:00+00'
\ir include/identity_setup.psql
CREATE TEMP TABLE rules_before AS SELECT * FROM cdp.identity_rules;
CREATE TEMP TABLE blocks_before AS SELECT * FROM cdp.blocked_identifiers;

--
-- rules
--
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 2, 1, '100000000 years')$$, '22023',
                 'time_window must be at most 1000 years, or NULL for ever, not 100000000 years',
                 'set_identity_rule: a time window of 100000000 years (overflows microseconds) is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 2, 1, '1000 years 1 day')$$, '22023', NULL,
                 'set_identity_rule: a time window just over 1000 years is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 2147483647, 1)$$, '22023',
                 'priority must be at most 1000, not 2147483647',
                 'set_identity_rule: priority 2147483647 is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 1001, 1)$$, '22023', NULL,
                 'set_identity_rule: priority 1001 is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 2, 1000001)$$, '22023',
                 'max_per_profile must be at most 1000000, or NULL for no limit, not 1000001',
                 'set_identity_rule: a limit over a million is 22023');
SELECT throws_ok($$SELECT cdp.set_identity_rule('email', 2, -5)$$, '22023', NULL,
                 'set_identity_rule: a negative limit is still 22023');
-- straight into the table: the same checks
SELECT throws_ok($$INSERT INTO cdp.identity_rules VALUES ('crm', 6, 1, '100000000 years')$$, '22023', NULL,
                 'INSERT into cdp.identity_rules with a 100000000-year window is 22023');
SELECT throws_ok($$UPDATE cdp.identity_rules SET time_window = '300000 years' WHERE id_type = 'email'$$, '22023', NULL,
                 'UPDATE of cdp.identity_rules to a 300000-year window is 22023');
SELECT throws_ok($$UPDATE cdp.identity_rules SET priority = 2147483647 WHERE id_type = 'email'$$, '22023', NULL,
                 'UPDATE of cdp.identity_rules to priority 2147483647 is 22023');
SELECT throws_ok($$INSERT INTO cdp.identity_rules VALUES ('crm', 6, 0, NULL)$$, '22023', NULL,
                 'INSERT into cdp.identity_rules with a zero limit is 22023');
SELECT throws_ok($$INSERT INTO cdp.identity_rules VALUES ('Bad-Type', 6, 1, NULL)$$, '22023', NULL,
                 'INSERT into cdp.identity_rules with a bad type is 22023');
SELECT set_eq($$SELECT * FROM cdp.identity_rules$$, $$SELECT * FROM rules_before$$,
              'refused rules change nothing');
-- a role allowed to write the table (and nothing else) gets its rows checked
CREATE ROLE cdp_rule_writer;
GRANT USAGE ON SCHEMA cdp TO cdp_rule_writer;
GRANT INSERT, DELETE ON cdp.identity_rules TO cdp_rule_writer;
SET LOCAL ROLE cdp_rule_writer;
SELECT throws_ok($$INSERT INTO cdp.identity_rules VALUES ('crm', 6, 1, '100000000 years')$$, '22023', NULL,
                 'a role with only INSERT on cdp.identity_rules gets a bad row refused with 22023');
SELECT lives_ok($$INSERT INTO cdp.identity_rules VALUES ('crm', 6, 3, NULL)$$,
                'and a good row accepted');
RESET ROLE;
DELETE FROM cdp.identity_rules WHERE id_type = 'crm';

-- the largest accepted values work: a limit of 1 under the weakest priority
-- and the longest window is enforced
SELECT lives_ok($$SELECT cdp.set_identity_rule('email', 1000, 1, '1000 years')$$,
                'set_identity_rule accepts priority 1000 and a 1000-year window');
DO $$ BEGIN
    PERFORM pg_temp.send('lim-1', '{"type": "identify", "userId": "lim-u", "traits": {"email": "one@x.io"}}',
                         '2026-05-01 10:00+00');
    PERFORM pg_temp.send('lim-2', '{"type": "identify", "userId": "lim-u", "traits": {"email": "two@x.io"}}',
                         '2026-05-01 11:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('email:two@x.io'), NULL,
          'under email 1000 / 1 / 1000 years a second email is kept out of the profile');
SELECT is((SELECT rule FROM cdp.identity_violations WHERE message_id = 'lim-2'), 'email.max_per_profile',
          'and recorded as an email.max_per_profile violation');

-- a window whose parts are huge but whose sum is short (5000000 months less
-- 149998000 days: 2000 days) is counted right, not overflowed
SELECT lives_ok($$SELECT cdp.set_identity_rule('phone', 3, 1, '5000000 months -149998000 days')$$,
                'a window of huge parts and a short sum is accepted');
DO $$ BEGIN
    PERFORM pg_temp.send('win-1', '{"type": "identify", "userId": "win-u", "traits": {"phone": "+1 555 0001"}}',
                         '2020-05-02 10:00+00');
    PERFORM pg_temp.send('win-2', '{"type": "identify", "userId": "win-u", "traits": {"phone": "+1 555 0002"}}',
                         '2020-05-02 11:00+00');
    -- 6 years later: outside the 2000-day window, a new phone is welcome
    PERFORM pg_temp.send('win-3', '{"type": "identify", "userId": "win-u", "traits": {"phone": "+1 555 0003"}}',
                         '2026-05-02 11:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('phone:+15550002'), NULL,
          'within that window a second phone is kept out');
SELECT is(pg_temp.pid('phone:+15550003'), pg_temp.pid('user_id:win-u'),
          'past the window (2000 days) a new phone links again');
SELECT is((cdp.rebuild_identities(dry_run => true)->>'changed')::int, 0,
          'a rebuild under the same rules agrees: 0 changed');

--
-- blocked values
--
SELECT throws_ok($$INSERT INTO cdp.blocked_identifiers VALUES ('*', '(', true)$$, '2201B',
                 'invalid regular expression "("',
                 'INSERT of a regex that does not compile is 2201B, not an ingest failure later');
SELECT throws_ok($$UPDATE cdp.blocked_identifiers SET pattern = '[0-' WHERE is_regex$$, '2201B', NULL,
                 'UPDATE to a regex that does not compile is 2201B');
SELECT throws_ok($$SELECT cdp.block_identifier('*', 'a{1000}{1000}', true)$$, '2201B', NULL,
                 'block_identifier: a regex over the repetition limit is 2201B');
SELECT throws_ok($$SELECT cdp.block_identifier('phone', 'n/a')$$, '22023',
                 'pattern "n/a" can never be the value of a phone identifier',
                 'block_identifier: a phone value that no phone identifier can have is 22023');
SELECT throws_ok($$INSERT INTO cdp.blocked_identifiers VALUES ('*', E'bad\x01value', false)$$, '22023', NULL,
                 'INSERT of a value with a control character (no identifier has one) is 22023');
SELECT throws_ok(format('SELECT cdp.block_identifier(%L, %L)', '*', repeat('x', 1025)), '22023',
                 'pattern must be at most 1024 bytes, not 1025',
                 'block_identifier: a value longer than any identifier value is 22023');
SELECT throws_ok(format('SELECT cdp.block_identifier(%L, %L, true)', '*', repeat('x', 1025)), '22023', NULL,
                 'block_identifier: a regex longer than 1024 bytes is 22023');
SELECT set_eq($$SELECT * FROM cdp.blocked_identifiers$$, $$SELECT * FROM blocks_before$$,
              'refused blocks change nothing');

SELECT lives_ok($$SELECT cdp.block_identifier('phone', '+1 (555) 999-0000')$$,
                'block_identifier accepts a phone written with punctuation');
DO $$ BEGIN
    PERFORM pg_temp.send('blk-1', '{"type": "identify", "userId": "blk-u", "traits": {"phone": "+1.555.999.0000"}}',
                         '2026-05-03 10:00+00');
    PERFORM pg_temp.run();
END $$;
SELECT is(pg_temp.pid('phone:+15559990000'), NULL, 'and blocks that phone however it is written');
SELECT is((SELECT string_agg(error_code || ': ' || error_message, '; ') FROM cdp.dead_letters), NULL, 'nothing was dead-lettered');

SELECT * FROM finish();
ROLLBACK;
