-- Access tokens (seed 001) as a DBA sees them: the seed's three scenarios, the conversion matrix,
-- verification with count quotas and rate limits, logs, and bad input.
\set VERBOSITY terse
BEGIN;
SET LOCAL quota.now_override = '2025-01-01 00:00:00+00';
-- scenario 1: a count token (1000, 500 left) becomes a time token until 2025-12-31 23:59:59
SELECT quota.create_token('{"ws_id":"ws-pg","email":"a@example.com","operation":"unlimited","quota_type":"count","total_quota":1000}') ->> 'access_token' AS t1 \gset
SELECT valid, code, remaining FROM quota.verify_token(:'t1', 500);
SELECT quota.update_token(:'t1', '{"operation":"set","quota_type":"time","specific_date":"2025-12-31 23:59:59"}')
       - 'access_token_hint' - 'created_at' - 'updated_at' AS scenario_1;
-- a time token checks expiry only: valid, no count taken
SELECT valid, code, remaining FROM quota.verify_token(:'t1');
-- scenario 2: a time token (0 / 0, expiring) becomes a count token of 1000 without expiry
SELECT quota.create_token('{"ws_id":"ws-pg","email":"b@example.com","operation":"set","specific_date":"2025-12-31 23:59:59","total_quota":0}') ->> 'access_token' AS t2 \gset
SELECT quota.update_token(:'t2', '{"operation":"unlimited","quota_type":"count","quota_operation":"set","quota_amount":1000}')
       - 'access_token_hint' - 'created_at' - 'updated_at' AS scenario_2;
-- scenario 3: a count token (5000, 3000 left) becomes hybrid, keeping its quota, with a date
SELECT quota.create_token('{"ws_id":"ws-pg","email":"c@example.com","operation":"unlimited","quota_type":"count","total_quota":5000}') ->> 'access_token' AS t3 \gset
SELECT valid, remaining FROM quota.verify_token(:'t3', 2000);
SELECT quota.update_token(:'t3', '{"operation":"set","quota_type":"hybrid","specific_date":"2025-06-30 23:59:59"}')
       - 'access_token_hint' - 'created_at' - 'updated_at' AS scenario_3;
-- to count or hybrid with no quota at all: 22023
SELECT quota.create_token('{"ws_id":"ws-pg","email":"d@example.com","operation":"unlimited"}') ->> 'access_token' AS t4 \gset
SAVEPOINT s;
SELECT quota.update_token(:'t4', '{"operation":"unlimited","quota_type":"count"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- count: exactly what is left, then QuotaExceeded; a request_id is applied once
SELECT quota.create_token('{"ws_id":"ws-pg","email":"e@example.com","operation":"unlimited","quota_type":"count","total_quota":3}') ->> 'access_token' AS t5 \gset
SELECT valid, code, remaining, replayed FROM quota.verify_token(:'t5', 1, 'req-1');
SELECT valid, code, remaining, replayed FROM quota.verify_token(:'t5', 1, 'req-1');
SELECT valid, code, remaining FROM quota.verify_token(:'t5', 2);
SELECT valid, code, remaining FROM quota.verify_token(:'t5', 1);
SELECT quota.token_quota(:'t5') AS quota;
SELECT jsonb_path_query_array(quota.token_quota_logs(:'t5'), '$.logs[*].kind') AS log_kinds;
-- rate limits: 3 per window, burst 2: the third in the same second is a burst refusal
SELECT quota.create_token('{"ws_id":"ws-pg","email":"f@example.com","operation":"unlimited","rate_limit_per_minute":3,"rate_limit_burst":2}') ->> 'access_token' AS t6 \gset
SELECT valid, code, rate_limit_limit, rate_limit_remaining FROM quota.verify_token(:'t6');
SELECT valid, code, rate_limit_limit, rate_limit_remaining FROM quota.verify_token(:'t6');
SELECT valid, code, retry_after_s BETWEEN 1 AND 1 AS retry_in_a_second FROM quota.verify_token(:'t6');
-- expired and inactive tokens, unknown tokens
SELECT quota.create_token('{"ws_id":"ws-pg","email":"g@example.com","operation":"set","specific_date":"2025-01-02 00:00:00"}') ->> 'access_token' AS t7 \gset
SET LOCAL quota.now_override = '2025-01-03 00:00:00+00';
SELECT valid, code FROM quota.verify_token(:'t7');
SELECT quota.delete_token(:'t5') -> 'active' AS t5_active;
SELECT valid, code FROM quota.verify_token(:'t5');
SELECT valid, code FROM quota.verify_token('flow_' || repeat('0', 64));
SELECT valid, code FROM quota.verify_token('not-a-token');
-- bad input: 22023 (or 22007 for a date), nothing created
SAVEPOINT s;
SELECT quota.create_token('{"ws_id":"ws-pg","email":"not-an-address","operation":"unlimited"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT quota.create_token('{"ws_id":"ws-pg","email":"h@example.com","operation":"unlimited","quota_type":"count"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT quota.create_token('{"ws_id":"ws-pg","email":"h@example.com","operation":"forever"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT quota.create_token('{"ws_id":"ws-pg","email":"h@example.com","operation":"add","days":0}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT quota.update_token(:'t3', '{"operation":"unlimited","quota_operation":"double","quota_amount":1}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM quota.verify_token(:'t3', 0);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT quota.token_quota_logs(:'t3', 1, 20, 'yesterday');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT quota.token_quota('flow_' || repeat('1', 64));
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT count(*) AS tokens_of_ws_pg FROM quota.tokens WHERE ws_id = 'ws-pg';
SELECT (quota.list_tokens('ws-pg', 'c@example.com') -> 'total') AS listed;
-- seed 003's token lines: a token of an unlimited user is unlimited by default; an unlimited
-- user's limited token is held and debited by reservations (the user's wallet is not)
SELECT quota.create_organization('tok-org', '{"quota":1000}') ->> 'id' AS org;
SELECT quota.create_user('tok-user', '{"org":"tok-org"}') -> 'unlimited' AS user_unlimited;
SELECT quota.create_token('{"ws_id":"ws-pg","email":"u@example.com","operation":"unlimited","user_id":"tok-user"}') -> 'unlimited' AS token_unlimited_by_default;
SELECT quota.create_token('{"ws_id":"ws-pg","email":"u@example.com","operation":"unlimited","user_id":"tok-user","unlimited":false,"quota_type":"count","total_quota":100}') ->> 'access_token' AS t8 \gset
SELECT reservation_id AS r FROM quota.reserve('tok-r1', 'tok-user', 30, access_token => :'t8') \gset
SELECT remaining_quota, held_quota FROM quota.tokens WHERE held_quota > 0;
SELECT charged_credits, token_charged_credits, token_remaining_after, org_charged_credits FROM quota.settle(:r, 40, 'tok-s1');
SELECT balance, used_quota FROM quota.wallets WHERE user_id = 'tok-user';
-- more than the token has: 23514 insufficient_token_quota
SAVEPOINT s;
SELECT * FROM quota.reserve('tok-r2', 'tok-user', 61, access_token => :'t8');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT token_charged_credits, token_remaining_after FROM quota.consume('tok-c1', 'tok-user', 60, access_token => :'t8');
-- only hashes are stored
SELECT count(*) AS tokens_stored_in_clear FROM quota.tokens WHERE encode(token_sha256, 'escape') LIKE 'flow_%';
SELECT * FROM quota.verify();
ROLLBACK;
