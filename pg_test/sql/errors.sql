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
SELECT count(*) AS ledger_rows FROM quota.ledger WHERE user_id = 'carol';
ROLLBACK;
