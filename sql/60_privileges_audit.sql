--
-- 60_privileges_audit: every SECURITY DEFINER function in cdp pins its
-- search_path; nothing in cdp, also what is made there later, is usable by
-- PUBLIC; an operator role (cdp.grant_operator) runs maintenance, drains the
-- inbox with CALL and reads cdp.partitions.
--
\set VERBOSITY terse
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids RESTART IDENTITY;

-- security_definer_functions_pin_search_path: none listed
SELECT p.oid::regprocedure AS definer_without_pinned_search_path
  FROM pg_proc p
 WHERE p.pronamespace = 'cdp'::regnamespace AND p.prosecdef
   AND NOT coalesce('search_path=pg_catalog, cdp' = ANY (p.proconfig), false)
 ORDER BY 1;

-- objects_made_later_are_not_public: what the extension makes when used
-- (views, traits, partitions) and what its owner adds to cdp afterwards
SELECT cdp.define_trait('plan', 'text');
SELECT cdp.create_profile_view('cdp.regress_people', 'analytics');
SELECT cdp.configure_partitions();
CREATE FUNCTION cdp.regress_later() RETURNS int LANGUAGE sql AS 'SELECT 1';
CREATE PROCEDURE cdp.regress_later_proc() LANGUAGE sql AS 'SELECT 1';
CREATE TABLE cdp.regress_later_table (x int);
CREATE SEQUENCE cdp.regress_later_seq;
SELECT p.oid::regprocedure AS executable_by_public
  FROM pg_proc p
 WHERE p.pronamespace = 'cdp'::regnamespace
   AND has_function_privilege('public', p.oid, 'EXECUTE')
   AND p.proname !~ '^(identifier|id_type|id_value)'
 ORDER BY p.oid;
SELECT c.oid::regclass AS usable_by_public
  FROM pg_class c
 WHERE c.relnamespace = 'cdp'::regnamespace
   AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
   AND (CASE WHEN c.relkind = 'S'
             THEN has_sequence_privilege('public', c.oid, 'USAGE, SELECT, UPDATE')
             ELSE has_table_privilege('public', c.oid,
                      'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
        END);
DROP FUNCTION cdp.regress_later();
DROP PROCEDURE cdp.regress_later_proc();
DROP TABLE cdp.regress_later_table;
DROP SEQUENCE cdp.regress_later_seq;
DROP VIEW cdp.regress_people;
DELETE FROM cdp.generated_views;
DELETE FROM cdp.trait_definitions;

-- an_operator_runs_maintenance_and_drains_the_inbox
CREATE ROLE regress_operator;
INSERT INTO cdp.inbox (payload)
SELECT jsonb_build_object('type', 'track', 'userId', 'u', 'messageId', 'op-' || g, 'event', 'e')::text
  FROM generate_series(1, 3) g;
-- before the grant: refused
SET ROLE regress_operator;
SELECT cdp.run_maintenance();
CALL cdp.drain_inbox();
SELECT count(*) FROM cdp.partitions;
RESET ROLE;
SELECT cdp.grant_operator('regress_operator');
SET ROLE regress_operator;
SELECT cdp.run_maintenance() ? 'partitions_created' AS maintenance_ran;
CALL cdp.drain_inbox();
SELECT count(*) > 0 AS sees_partitions FROM cdp.partitions;
SELECT count(*) FROM cdp.events;
SELECT count(*) FROM cdp.dead_letters;
RESET ROLE;
SELECT count(*) AS stored FROM cdp.events WHERE message_id LIKE 'op-%';
SELECT cdp.grant_operator('regress_nobody');

DROP OWNED BY regress_operator;
DROP ROLE regress_operator;
TRUNCATE cdp.inbox, cdp.dead_letters, cdp.message_ids RESTART IDENTITY;
TRUNCATE cdp.events;
