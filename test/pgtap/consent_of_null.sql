-- cdp.consent_of(cdp.resolve(id)) for an identifier no message carried:
-- resolve gives NULL, and consent_of says it needs a profile id (22004)
-- instead of claiming that "profile <NULL>" does not exist.
BEGIN;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS pg_cdp;
SELECT plan(2);

SELECT throws_ok($$SELECT cdp.consent_of(cdp.resolve('user_id:never-seen-here'::cdp.identifier))$$,
                 '22004', 'consent_of needs a profile id',
                 'a NULL profile id is refused as such');
SELECT throws_ok($$SELECT cdp.consent_of(-1)$$, '42704', 'profile -1 does not exist',
                 'an unknown profile id is still undefined_object');

SELECT * FROM finish();
ROLLBACK;
