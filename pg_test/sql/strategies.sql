-- Recharge strategies as a DBA sees them: conditions, a dry run, scans at fixed times, history.
\set VERBOSITY terse
BEGIN;
SET LOCAL quota.relay = off;
SET LOCAL quota.timezone = 'UTC';
SELECT quota.parse_condition('is-vip(1) and github-star(zgsm)') AS canonical;
SELECT quota.parse_condition('or(is-vip(1)');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SET LOCAL quota.relay = off;
SET LOCAL TimeZone = 'UTC';
SELECT count(*) AS users FROM (
    SELECT quota.create_user(format('dba_%s', i),
        jsonb_build_object('vip', i % 3, 'github_star', CASE WHEN i % 2 = 0 THEN 'zgsm' ELSE '' END,
                           'register_time', '2022-12-31 23:59:59'))
    FROM generate_series(1, 6) i) x;
SELECT * FROM quota.match_users('and(is-vip(1), github-star("zgsm"))');
SELECT quota.eval_condition('register-before("2022-12-31 23:59:59")', 'dba_1') AS inclusive,
       quota.eval_condition('register-before("2022-12-31 23:59:58")', 'dba_1') AS before;
SELECT quota.create_strategy('{"name":"dba-single","type":"single","amount":10,"condition":"and(is-vip(1), github-star(\"zgsm\"))"}')
       - 'id' - 'create_time' - 'update_time' AS strategy;
SELECT quota.create_strategy('{"name":"dba-daily","type":"periodic","amount":3,"periodic_expr":"0 0 8 * * *","condition":"match-user(dba_1)"}') ->> 'name' AS periodic;
SAVEPOINT s;
SELECT quota.create_strategy('{"name":"bad","type":"periodic","amount":1,"periodic_expr":"0 25 * * *","condition":"true()"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT quota.next_fire('0 0 8 * * *', '2030-01-01 09:00:00+00', 'UTC') AS next_utc,
       quota.next_fire('@daily', '2030-01-01 00:00:00+00', 'Asia/Shanghai') AS next_shanghai;
SELECT strategy_name, recharged FROM quota.scan('2030-01-01 09:00:00+00') ORDER BY strategy_name;
SELECT strategy_name, recharged FROM quota.scan('2030-01-01 10:00:00+00') ORDER BY strategy_name;
SELECT strategy_name, recharged FROM quota.scan('2030-01-04 09:00:00+00') ORDER BY strategy_name;
SELECT strategy_name, user_id, batch_number, status, amount FROM quota.executions
 WHERE strategy_name LIKE 'dba-%' ORDER BY strategy_name, user_id, batch_number;
SELECT user_id, balance FROM quota.wallets WHERE user_id LIKE 'dba\_%' ORDER BY user_id;
SELECT * FROM quota.verify();
ROLLBACK;
