-- Reads are reads: every read function runs in a READ ONLY transaction without taking a
-- transaction id (so it works on a hot standby and burns no xid), and under
-- force_parallel_mode (parallel-safe functions then run in a parallel worker).
\set VERBOSITY terse
BEGIN;
-- (committed, so it matches nothing the later scripts' strategies look for)
SELECT quota.create_user('reader_1') ->> 'id' AS created;
SELECT credits_added FROM quota.bonus('reader_1', 500, 'reader-seed');
SELECT credits_charged FROM quota.charge('reader_1', 0.001, 'reader-charge');
SELECT quota.create_strategy('{"name":"reads-s","type":"single","amount":1,"condition":"match-user(reader_1)","status":false}') ->> 'name' AS strategy;
SELECT quota.create_organization('reads-org', '{"quota":10}') ->> 'id' AS org;
SELECT quota.create_token('{"ws_id":"reads-ws","email":"r@example.com","operation":"unlimited","quota_type":"count","total_quota":5}') ->> 'access_token' AS reads_token \gset
SELECT status FROM quota.reserve('reader-reserve', 'reader_1', 1);
SELECT status FROM quota.release((SELECT reservation_id FROM quota.reservations WHERE operation_id = 'reader-reserve'), 'reader-release');
COMMIT;

BEGIN TRANSACTION READ ONLY;
SELECT balance, sufficient FROM quota.check_credits('reader_1', 100);
SELECT credits_to_charge, balance_after FROM quota.calculate_credits(0.01, 'reader_1');
SELECT balance, total_earned, total_spent FROM quota.balance('reader_1');
SELECT quota.transactions('reader_1') -> 'total' AS transactions;
SELECT quota.subscription('reader_1') -> 'credits' -> 'balance' AS balance;
SELECT count(*) AS problems FROM quota.verify();
SELECT quota.list_plans(false) -> 'total' IS NOT NULL AS plans;
SELECT quota.statistics() -> 'total_users' IS NOT NULL AS statistics;
SELECT quota.get_user('reader_1') ->> 'id' AS user_id;
SELECT quota.list_users(10) -> 'total' IS NOT NULL AS users;
SELECT quota.list_strategies() -> 'total' IS NOT NULL AS strategies;
SELECT quota.get_strategy((SELECT id FROM quota.strategies WHERE name = 'reads-s')) ->> 'name' AS strategy;
SELECT quota.strategy_executions((SELECT id FROM quota.strategies WHERE name = 'reads-s')) -> 'total' AS executions;
SELECT quota.eval_condition('match-user(reader_1)', 'reader_1') AS matches;
SELECT count(*) AS matching FROM quota.match_users('match-user(reader_1)') u WHERE u = 'reader_1';
SELECT quota.resolve_api_token('pq_nothing') AS user_id;
SELECT quota.parse_condition('is-vip( 1 )') AS canonical;
SELECT quota.next_fire('0 0 8 * * *', '2030-01-01 00:00:00+00', 'UTC') AS next_fire;
SELECT quota.price_credits(0.0123, 1.5, 10000) AS credits;
SELECT backlog >= 0 AS relay FROM quota.relay_status();
SELECT quota.library_version() IS NOT NULL AS library;
SELECT state IS NOT NULL AS worker FROM quota.worker_status();
SELECT quota.now() IS NOT NULL AS clock;
SELECT quota.get_organization('reads-org') ->> 'quota' AS org_quota;
SELECT quota.list_organizations() -> 'total' IS NOT NULL AS organizations;
SELECT quota.organization_users('reads-org') -> 'total' AS org_users;
SELECT quota.get_reservation((SELECT reservation_id FROM quota.reservations WHERE operation_id = 'reader-reserve')) ->> 'status' AS reservation;
SELECT quota.token_quota(:'reads_token') ->> 'remaining_quota' AS token_remaining;
SELECT quota.token_quota_logs(:'reads_token') -> 'total' AS token_logs;
SELECT quota.list_tokens('reads-ws') -> 'total' AS tokens;
-- none of them took a transaction id
SELECT pg_current_xact_id_if_assigned() AS xid;
COMMIT;

-- The same reads under force_parallel_mode: the parallel-safe ones run in a parallel worker,
-- where taking a transaction id or a latest snapshot would be an ERROR.
SET force_parallel_mode = on;
EXPLAIN (COSTS OFF) SELECT * FROM quota.check_credits('reader_1', 100);
SELECT balance, sufficient FROM quota.check_credits('reader_1', 100);
SELECT credits_to_charge, balance_after FROM quota.calculate_credits(0.01, 'reader_1');
SELECT balance, total_earned, total_spent FROM quota.balance('reader_1');
SELECT quota.transactions('reader_1') -> 'total' AS transactions;
SELECT quota.subscription('reader_1') -> 'credits' -> 'balance' AS balance;
SELECT count(*) AS problems FROM quota.verify();
SELECT quota.list_plans(false) -> 'total' IS NOT NULL AS plans;
SELECT quota.statistics() -> 'total_users' IS NOT NULL AS statistics;
SELECT quota.get_user('reader_1') ->> 'id' AS user_id;
SELECT quota.list_users(10) -> 'total' IS NOT NULL AS users;
SELECT quota.list_strategies() -> 'total' IS NOT NULL AS strategies;
SELECT quota.eval_condition('match-user(reader_1)', 'reader_1') AS matches;
SELECT quota.resolve_api_token('pq_nothing') AS user_id;
SELECT backlog >= 0 AS relay FROM quota.relay_status();
SELECT quota.library_version() IS NOT NULL AS library;
SELECT quota.get_organization('reads-org') ->> 'quota' AS org_quota;
SELECT quota.organization_users('reads-org') -> 'total' AS org_users;
SELECT quota.get_reservation((SELECT reservation_id FROM quota.reservations WHERE operation_id = 'reader-reserve')) ->> 'status' AS reservation;
SELECT quota.token_quota(:'reads_token') ->> 'remaining_quota' AS token_remaining;
SELECT quota.list_tokens('reads-ws') -> 'total' AS tokens;
-- the pricing function reads the base rate in a worker too (not kept there)
SELECT credits_to_charge FROM quota.calculate_credits(0.0123, tier => NULL);
RESET force_parallel_mode;

-- Volatility is honest: nothing that renders timestamptz (TimeZone-dependent) is IMMUTABLE.
SELECT p.proname AS immutable_rendering_time
  FROM pg_proc p
 WHERE p.pronamespace = 'quota'::regnamespace AND p.provolatile = 'i'
   AND p.proname IN ('_transaction_json', '_plan_json', '_user_json', '_payment_json', '_strategy_json', '_execution_json',
                     '_organization_json', '_reservation_json', '_token_json', '_token_log_json');

BEGIN;
DELETE FROM quota.executions WHERE strategy_id = (SELECT id FROM quota.strategies WHERE name = 'reads-s');
SELECT quota.delete_strategy((SELECT id FROM quota.strategies WHERE name = 'reads-s')) ->> 'message' AS deleted;
COMMIT;
