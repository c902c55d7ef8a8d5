-- A database as a BI tool finds it: profiles with traits and consent,
-- declared traits of several types, profile and event views in schema bi,
-- and a login role made an analyst.
SET client_min_messages = warning;
CREATE EXTENSION pg_cdp;
SELECT cdp.ingest(m) FROM (VALUES
    ('{"type": "identify", "userId": "ann", "messageId": "b1", "timestamp": "2026-04-01T00:00:00Z"}'::jsonb),
    ('{"type": "identify", "userId": "bob", "messageId": "b2", "timestamp": "2026-04-01T00:00:00Z"}'),
    ('{"type": "track", "userId": "ann", "event": "Order Completed", "messageId": "b3", "timestamp": "2026-04-02T00:00:00Z"}')) v (m);
SELECT cdp.process_inbox();
UPDATE cdp.profile_records
   SET traits = '{"email": "ann@x.io", "age": 41, "score": 9.5, "vip": true, "signup": "2026-01-02T03:04:05Z"}',
       consent = '{"marketing": {"granted": true}}'
 WHERE profile_id = cdp.resolve('user_id:ann');
UPDATE cdp.profile_records
   SET traits = '{"email": "bob@x.io", "age": "unknown", "score": "n/a", "vip": "maybe", "signup": "soon"}'
 WHERE profile_id = cdp.resolve('user_id:bob');
SELECT cdp.define_trait('email', 'text', 'marketing');
SELECT cdp.define_trait('age', 'integer');
SELECT cdp.define_trait('score', 'numeric');
SELECT cdp.define_trait('vip', 'boolean');
SELECT cdp.define_trait('signup', 'timestamptz');
CREATE SCHEMA bi;
SELECT cdp.create_profile_view('bi.people', 'analytics');
SELECT cdp.create_event_view('bi.events', 'analytics');
CREATE ROLE bi_reader LOGIN PASSWORD 'bi-reader-pw';
SELECT cdp.grant_analyst('bi_reader');
