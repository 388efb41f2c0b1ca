-- Every documented SQLSTATE, with its message.
\set VERBOSITY terse
BEGIN;
SELECT quota.create_user('carol') ->> 'id' AS created;
SELECT credits_added FROM quota.bonus('carol', 40, 'carol-seed');
SAVEPOINT p;
SELECT * FROM quota.charge('carol', 'NaN'::float8, 'e1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.charge('carol', -1, 'e2');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.charge('carol', 1e12, 'e3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.charge('carol', 0.001, repeat('x', 256));
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.charge('nobody', 0.001, 'e4');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.charge('carol', 0.0055, 'e5');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.charge(NULL, 0.001, 'e6');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.add('carol', NULL, 'e7');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT quota.transactions('carol', 101);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT quota.transactions('carol', 10, 0, 'gift');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT quota.create_user('carol');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT quota.update_user('carol', '{"vip":"gold"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT quota.set_exchange_rate(0);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT quota.statistics('2025-01-02', '2025-01-01');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
-- purchases are bounded ($1M) and need a confirmed payment of that user and amount (23514)
SELECT * FROM quota.purchase('carol', 1e9, 'pm_card', 'e8');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.purchase('carol', 10, '', 'e8');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.purchase('carol', 10, 'pm_card', 'e9');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT quota.confirm_payment('pay-x', 'carol', 10) ->> 'status' AS payment;
SELECT * FROM quota.purchase('carol', 9.99, 'pm_card', 'e10', 'pay-x');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
-- rates are bounded: a multiplier of 1e-320 would make every charge free
SELECT quota.create_plan('{"tier":"free","name":"Free","multiplier":1e-320}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT quota.create_plan('{"tier":"e-plan","name":"E plan"}') -> 'plan' ->> 'tier' AS tier;
UPDATE quota.plans SET multiplier = '1e-320'::float8 WHERE tier = 'e-plan';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
-- with no settings row, pricing refuses everywhere (P0002), the calculation as the charge
DELETE FROM quota.settings;
SELECT * FROM quota.calculate_credits(0.01);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
DELETE FROM quota.settings;
SELECT * FROM quota.charge('carol', 0.001, 'e11');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT credits_to_charge FROM quota.calculate_credits(0.01);
-- metadata is bounded (64 KiB), for the charge as for the rest
SELECT * FROM quota.charge('carol', 0.001, 'e12', NULL, jsonb_build_object('k', repeat('x', 70000)));
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT * FROM quota.bonus('carol', 1, 'e13', NULL, jsonb_build_object('k', repeat('x', 70000)));
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO p;
SELECT count(*) AS ledger_rows FROM quota.ledger WHERE user_id = 'carol';
ROLLBACK;
