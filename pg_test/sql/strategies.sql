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
-- A scan at another time never moves last_fire_time past the real clock, so the periodic
-- strategy still fires after the test's far-future scans.
SELECT name, last_fire_time <= now() AS not_in_the_future FROM quota.strategies WHERE name = 'dba-daily';
SELECT * FROM quota.verify();
ROLLBACK;

-- One strategy that fails does not stop the others, and a user whose balance would pass its
-- limit is skipped and reported (an execution with status skipped) while the rest are credited.
BEGIN;
SELECT quota.create_user('lim_full') ->> 'id' AS created, quota.create_user('lim_room') ->> 'id' AS created2;
SELECT count(*) AS bonuses FROM (SELECT quota.bonus('lim_full', 1000000000000000, 'fill-' || g) FROM generate_series(1, 1000) g) b;
SELECT balance FROM quota.wallets WHERE user_id = 'lim_full';
SELECT quota.create_strategy('{"name":"lim-a","type":"single","amount":5,"condition":"match-user(lim_full, lim_room)"}') ->> 'name' AS a;
SELECT quota.create_strategy('{"name":"lim-b","type":"single","amount":7,"condition":"match-user(lim_room)"}') ->> 'name' AS b;
SELECT quota.create_strategy('{"name":"lim-c","type":"single","amount":9,"condition":"match-user(lim_room)"}') ->> 'name' AS c;
-- a DBA breaks lim-b's condition behind the API's back
UPDATE quota.strategies SET condition = 'and(' WHERE name = 'lim-b';
SET client_min_messages = error; -- the WARNINGs name strategy ids, which depend on the run
SELECT strategy_name, recharged, skipped, more, error IS NOT NULL AS failed
  FROM quota.scan() WHERE strategy_name LIKE 'lim-%' ORDER BY strategy_name;
RESET client_min_messages;
SELECT strategy_name, user_id, status, last_error FROM quota.executions
 WHERE strategy_name LIKE 'lim-%' ORDER BY strategy_name, user_id;
SELECT name, last_error IS NOT NULL AS has_error FROM quota.strategies WHERE name LIKE 'lim-%' ORDER BY name;
SELECT user_id, balance FROM quota.wallets WHERE user_id LIKE 'lim\_%' ORDER BY user_id;
-- fixed, it runs; the skipped user stays skipped for this strategy (a single one: once, ever)
UPDATE quota.strategies SET condition = 'match-user(lim_room)' WHERE name = 'lim-b';
SELECT strategy_name, recharged, skipped, error FROM quota.scan() WHERE strategy_name LIKE 'lim-%' ORDER BY strategy_name;
SELECT name, last_error FROM quota.strategies WHERE name LIKE 'lim-%' ORDER BY name;
SELECT * FROM quota.verify();
ROLLBACK;

-- Bounded batches: the worker passes batch_users; a fire with more users left says so (more)
-- and the next call goes on with the same fire, never crediting anyone twice.
BEGIN;
SELECT count(*) AS users FROM (SELECT quota.create_user('batch_' || g) FROM generate_series(1, 5) g) u;
SELECT quota.create_strategy('{"name":"batched","type":"single","amount":1,"condition":"match-user(batch_1, batch_2, batch_3, batch_4, batch_5)"}') ->> 'name' AS s;
SELECT recharged, more FROM quota.scan(batch_users => 2) WHERE strategy_name = 'batched';
SELECT recharged, more FROM quota.scan(batch_users => 2) WHERE strategy_name = 'batched';
SELECT recharged, more FROM quota.scan(batch_users => 2) WHERE strategy_name = 'batched';
SELECT recharged, more FROM quota.scan(batch_users => 2) WHERE strategy_name = 'batched';
SELECT count(*) AS executions, count(DISTINCT user_id) AS users FROM quota.executions WHERE strategy_name = 'batched';
SAVEPOINT b;
SELECT * FROM quota.scan(batch_users => 0);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO b;
SELECT * FROM quota.verify();
ROLLBACK;
