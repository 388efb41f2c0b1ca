-- The role model (SPEC 1.6) as a DBA checks it: nothing for PUBLIC, every function SECURITY
-- DEFINER with a pinned search_path, the three roles, and an application that may only charge.
\set VERBOSITY terse
BEGIN;
-- No quota.* function is executable by PUBLIC.
SELECT p.oid::regprocedure AS executable_by_public
  FROM pg_proc p
 WHERE p.pronamespace = 'quota'::regnamespace AND has_function_privilege('public', p.oid, 'EXECUTE');
-- Every function that reads or writes tables runs as the extension's owner with a pinned
-- search_path; the pure ones (no table access) are listed and are not SECURITY DEFINER.
SELECT p.proname AS not_definer_or_no_search_path
  FROM pg_proc p
 WHERE p.pronamespace = 'quota'::regnamespace
   AND p.proname NOT IN ('now', 'price_credits', 'parse_condition', 'next_fire', 'worker_status', 'library_version', 'token_verifications')
   AND p.prorettype <> 'trigger'::regtype
   AND p.proname NOT LIKE '\_%'
   AND (NOT p.prosecdef OR (p.proname <> 'verify_token'
        AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c = 'search_path=pg_catalog, quota, pg_temp')))
 ORDER BY 1;
-- The one exception: verify_token (the gateway's per-request call) is SECURITY DEFINER without a
-- SET clause and pins search_path itself around the SQL it runs; a cached time token runs none.
SELECT p.proname, p.prosecdef AS definer, p.proconfig
  FROM pg_proc p WHERE p.pronamespace = 'quota'::regnamespace AND p.proname = 'verify_token';
-- A caller's search_path cannot hijack it: an uncached token is read with the pinned path, not
-- through a schema the caller put before pg_catalog.
CREATE SCHEMA evil;
CREATE FUNCTION evil.sha256(bytea) RETURNS bytea LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
CREATE FUNCTION evil.convert_to(text, name) RETURNS bytea LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'hijacked'; END $$;
SELECT quota.create_token('{"ws_id":"ws-roles","email":"r@example.com","operation":"unlimited","quota_type":"count","total_quota":5}') ->> 'access_token' AS rt \gset
SET LOCAL search_path = evil, pg_catalog, public;
SELECT valid, code, remaining FROM quota.verify_token(:'rt', 2, 'roles-1');
RESET search_path;
DROP SCHEMA evil CASCADE;
SELECT p.proname AS pure_function, p.provolatile AS volatility, p.prosecdef AS definer
  FROM pg_proc p
 WHERE p.pronamespace = 'quota'::regnamespace
   AND p.proname IN ('now', 'price_credits', 'parse_condition', 'next_fire', 'worker_status', 'library_version', 'token_verifications')
 ORDER BY 1;
-- Every public function is documented.
SELECT p.oid::regprocedure AS undocumented
  FROM pg_proc p
 WHERE p.pronamespace = 'quota'::regnamespace AND p.proname NOT LIKE '\_%'
   AND obj_description(p.oid, 'pg_proc') IS NULL;
-- Who may execute what (quota_admin includes quota_service, which includes quota_reader).
SELECT p.proname,
       has_function_privilege('quota_reader', p.oid, 'EXECUTE') AS reader,
       has_function_privilege('quota_service', p.oid, 'EXECUTE') AS service,
       has_function_privilege('quota_admin', p.oid, 'EXECUTE') AS admin
  FROM pg_proc p
 WHERE p.pronamespace = 'quota'::regnamespace AND p.proname NOT LIKE '\_%'
 ORDER BY p.proname;
-- Internal helpers are executable by none of them.
SELECT p.proname AS internal_but_granted
  FROM pg_proc p
 WHERE p.pronamespace = 'quota'::regnamespace AND p.proname LIKE '\_%'
   AND (has_function_privilege('quota_admin', p.oid, 'EXECUTE') OR has_function_privilege('public', p.oid, 'EXECUTE'));
-- No role but the owner writes a table.
SELECT r.rolname, c.relname AS writable
  FROM pg_class c, (VALUES ('quota_reader'), ('quota_service'), ('quota_admin')) AS r (rolname)
 WHERE c.relnamespace = 'quota'::regnamespace AND c.relkind IN ('r', 'v', 'p')
   AND has_table_privilege(r.rolname, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE');

-- An application that may only charge (the README's recipe).
CREATE ROLE app_charge_only LOGIN;
GRANT USAGE ON SCHEMA quota TO app_charge_only;
GRANT EXECUTE ON FUNCTION quota.charge(text, double precision, text, text, jsonb) TO app_charge_only;
SELECT quota.create_user('app_user') ->> 'id' AS created;
SELECT credits_added FROM quota.bonus('app_user', 100, 'app-seed');
SET ROLE app_charge_only;
-- it charges
SELECT credits_charged, balance_after FROM quota.charge('app_user', 0.001, 'app-1');
SAVEPOINT p;
-- it cannot change a rate
SELECT quota.set_exchange_rate(1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
-- nor grant itself credits
SELECT * FROM quota.bonus('app_user', 1000, 'app-2');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
-- nor write a table
UPDATE quota.wallets SET balance = 1000000 WHERE user_id = 'app_user';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
INSERT INTO quota.ledger (user_id, operation_id, transaction_type, credits, balance_before, balance_after, request)
VALUES ('app_user', 'forged', 'bonus', 1000000, 90, 1000090, '{}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
-- nor read one
SELECT count(*) FROM quota.ledger;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
-- nor move the clock, or turn the relay off
SET quota.now_override = '2100-01-01 00:00:00+00';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SET quota.relay = off;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
-- nor scan
SELECT * FROM quota.scan();
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
RESET ROLE;

-- Even quota_admin cannot scan at another time than now (a superuser's test hook).
SAVEPOINT q;
SET ROLE quota_admin;
SELECT * FROM quota.scan('2100-01-01 00:00:00+00');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO q;
SET ROLE quota_admin;
SELECT count(*) >= 0 AS scan_now_works FROM quota.scan();
-- The audit log names the calling role, not the functions' owner.
SELECT quota.set_exchange_rate(10000) ->> 'new_base_rate' AS base_rate;
RESET ROLE;
SELECT actor, action FROM quota.audit_log ORDER BY id DESC LIMIT 1;
-- Pool credentials: a reader sees an account's columns but never its credentials (not even the
-- ciphertext), and only quota_service and up may acquire (the one call that returns them).
SET ROLE quota_reader;
SELECT count(*) >= 0 AS reader_sees_accounts FROM quota.pool_accounts;
SAVEPOINT r;
SELECT credentials FROM quota.pool_accounts;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO r;
SELECT quota.pool_acquire(gen_random_uuid(), 1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO r;
RESET ROLE;
-- The balance the application's charge left, and the ledger agrees.
SELECT balance FROM quota.wallets WHERE user_id = 'app_user';
SELECT * FROM quota.verify();
ROLLBACK;
