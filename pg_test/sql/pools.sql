-- Provider account pools (seed 002) as a DBA sees them: availability at 100 / 1000 / 1100 of
-- 1000, inactive, expired, unlimited, lazy reset after 25 h, manual reset, the warning once at
-- 80 %, exhausted on refusal, least-used pick, every limit exactly at its value, leases that
-- expire, usage stats (2 of 3), the worker's sweep, credentials never read back, bad input.
\set VERBOSITY terse
BEGIN;
SET LOCAL quota.now_override = '2026-03-01 10:00:30+00';
SELECT quota.create_provider('openai-pg', 'least_used', '{"rpm": 3, "concurrent": 2}') ->> 'provider_id' AS p \gset
SELECT quota.get_provider(:'p') - 'provider_id' - 'created_at' - 'updated_at' AS provider;
SELECT quota.create_pool_account(:'p', '{"api_key": "sk-secret-1"}', '{"name": "a1", "quota_limit": 1000}') ->> 'account_id' AS a1 \gset
-- no read shows the credentials (nor their ciphertext)
SELECT quota.get_pool_account(:'a1') ? 'credentials' AS shows_credentials,
       quota.list_pool_accounts(:'p')::text LIKE '%sk-secret%' AS list_leaks,
       (SELECT credentials::text LIKE '%sk-secret%' FROM quota.pool_accounts WHERE account_id = :'a1') AS stored_plain;
-- availability: 100 of 1000, then exactly 1000, then 1100 needed
SELECT available, reason FROM jsonb_to_record(quota.pool_check_availability(:'a1', 100)) AS (available bool, reason text);
SELECT quota.pool_consume(:'a1', 900) ->> 'quota_used' AS used;
SELECT available, reason FROM jsonb_to_record(quota.pool_check_availability(:'a1', 100)) AS (available bool, reason text);
SELECT available, reason FROM jsonb_to_record(quota.pool_check_availability(:'a1', 101)) AS (available bool, reason text);
-- crossing 80 % raised one warning, and consuming more raises no second one
SELECT kind, quota_used, quota_limit, usage_percent FROM jsonb_to_recordset(quota.list_pool_alerts(:'a1') -> 'alerts')
    AS (kind text, quota_used bigint, quota_limit bigint, usage_percent float8);
SELECT quota.pool_consume(:'a1', 50) ->> 'quota_used' AS used;
SELECT count(*) AS warnings FROM quota.pool_alerts WHERE account_id = :'a1' AND kind = 'warning';
-- consuming past the limit: 23514, nothing written
\set VERBOSITY sqlstate
SAVEPOINT s;
SELECT quota.pool_consume(:'a1', 51);
ROLLBACK TO s;
\set VERBOSITY terse
-- acquire: a1 has 50 left; asking 100 refuses for quota (exhausted alert, once), the answer is SPEC 5's
SELECT quota.pool_acquire(:'p', 100) - 'reset_at' - 'account_id' AS refused;
SELECT quota.pool_acquire(:'p', 100) ->> 'error' AS again;
SELECT count(*) AS exhausted FROM quota.pool_alerts WHERE account_id = :'a1' AND kind = 'exhausted';
-- a second, unlimited account: least_used picks it (a1 is at 95 %)
SELECT quota.create_pool_account(:'p', '{"api_key": "sk-secret-2"}', '{"name": "a2"}') ->> 'account_id' AS a2 \gset
SELECT quota.pool_acquire(:'p', 100, 'gpt-4o') AS lease1 \gset
SELECT (:'lease1'::jsonb ->> 'account_id') = :'a2' AS picked_a2, :'lease1'::jsonb -> 'credentials' AS credentials,
       :'lease1'::jsonb ->> 'admitted' AS admitted;
-- a1 sits out for a while: a2 alone shows the limits
SELECT quota.update_pool_account(:'a1', '{"active": false}') ->> 'active' AS a1_active;
-- concurrent 2: a second lease, then the third acquire is refused for concurrency (retry in 1 s)
SELECT quota.pool_acquire(:'p', 10) ->> 'lease_id' AS lease2 \gset
SELECT quota.pool_acquire(:'p', 10) - 'account_id' AS third;
-- release: tokens consumed, request logged; released twice is 55000
SELECT quota.pool_release(:'a2', (:'lease1'::jsonb ->> 'lease_id')::uuid,
       '{"input_tokens": 30, "output_tokens": 70, "status_code": 200, "latency_ms": 120, "estimated_cost": 0.002, "user_id": "user-9"}')
       - 'lease_id' - 'account_id' - 'request_log_id' AS released;
\set VERBOSITY sqlstate
SAVEPOINT s;
SELECT quota.pool_release(:'a2', (:'lease1'::jsonb ->> 'lease_id')::uuid, '{}');
ROLLBACK TO s;
\set VERBOSITY terse
SELECT quota.pool_release(:'a2', :'lease2', '{"output_tokens": 5, "status_code": 500, "error": "upstream", "user_id": "user-9"}') - 'lease_id' - 'account_id' - 'request_log_id' AS failed;
-- rpm 3: two admissions so far this minute (10:00:30), so one more, then refused until 10:01:00
SELECT quota.pool_acquire(:'p', 1, 'gpt-4o', NULL, 300, 'user-9') AS l3 \gset
SELECT quota.pool_acquire(:'p', 1) - 'account_id' AS fourth_in_minute;
SELECT quota.pool_release(:'a2', (:'l3'::jsonb ->> 'lease_id')::uuid, '{"output_tokens": 2}') ->> 'lease_status' AS status;
-- usage stats of user-9: 2 of 3 succeeded
SELECT quota.usage_stats('user-9', '2026-03-01', '2026-03-02') - 'from' - 'to' AS usage;
-- without a period: the 30 days up to now, which includes this instant
SELECT quota.usage_stats('user-9') ->> 'total_requests' AS user9_default_period;
SELECT quota.pool_stats(:'p', '2026-03-01', '2026-03-02') -> 'top_models' AS top_models,
       quota.pool_stats(:'p', '2026-03-01', '2026-03-02') -> 'errors' AS errors;
-- the next minute admits again
SET LOCAL quota.now_override = '2026-03-01 10:01:00+00';
SELECT quota.pool_acquire(:'p', 1) ->> 'lease_id' AS lease4 \gset
SELECT in_flight, quota_held FROM quota.pool_accounts WHERE account_id = :'a2';
-- abandoned: a lease past its ttl (300 s) is expired by the worker's sweep, freeing its hold and
-- slot; the same sweep deletes request logs older than quota.log_retention (90 days: the one
-- from last November goes, the one from January stays) and aggregates the daily stats
INSERT INTO quota.pool_request_logs (provider_id, account_id, model, status_code, success, created_at)
VALUES (:'p', :'a2', 'old-model', 200, true, '2025-11-01 00:00:00+00'),
       (:'p', :'a2', 'old-model', 200, true, '2026-01-15 00:00:00+00');
SET LOCAL quota.now_override = '2026-03-01 10:07:00+00';
SELECT * FROM quota.pool_sweep();
SELECT (created_at AT TIME ZONE 'UTC')::date AS kept_old_log FROM quota.pool_request_logs WHERE model = 'old-model';
SELECT day, model, requests, successes, failures, input_tokens, output_tokens
  FROM quota.pool_daily_stats WHERE provider_id = :'p' ORDER BY day, model;
SELECT in_flight, quota_held FROM quota.pool_accounts WHERE account_id = :'a2';
-- its late release still records the usage
SELECT quota.pool_release(:'a2', :'lease4', '{"output_tokens": 1}') ->> 'lease_status' AS late_release;
SELECT quota.update_pool_account(:'a1', '{"active": true}') ->> 'active' AS a1_active;
-- lazy reset after 25 h (period 24 h): a1's usage is back to 0
SET LOCAL quota.now_override = '2026-03-02 11:00:31+00';
SELECT available, quota_used FROM jsonb_to_record(quota.pool_account_status(:'a1')) AS (available bool, quota_used bigint);
SELECT available, quota_used FROM jsonb_to_record(quota.pool_check_availability(:'a1', 1000)) AS (available bool, quota_used bigint);
-- manual reset
SELECT quota.pool_consume(:'a1', 10) ->> 'quota_used' AS used;
SELECT quota.reset_pool_account(:'a1') ->> 'quota_used' AS after_reset;
-- inactive, expired: no account
SELECT quota.update_pool_account(:'a1', '{"active": false}') ->> 'active' AS a1_active;
SELECT quota.update_pool_account(:'a2', '{"expires_at": "2026-03-01 00:00:00"}') ->> 'active' AS a2_active;
SELECT quota.pool_acquire(:'p', 1) AS none;
SELECT available, reason FROM jsonb_to_record(quota.pool_account_status(:'a1')) AS (available bool, reason text);
SELECT available, reason FROM jsonb_to_record(quota.pool_account_status(:'a2')) AS (available bool, reason text);
-- the pool's status
SELECT quota.pool_status(:'p') - 'provider_id' - 'accounts' AS pool;
-- metrics
SELECT name, labels ->> 'limit_type' AS limit_type, value FROM quota.metrics()
 WHERE name = 'rate_limit_hits_total' AND labels ->> 'provider_id' = :'p' ORDER BY 2;
-- the alerts are queued for the webhooks, in the one outbox
SELECT kind, count(*) FROM quota.outbox WHERE kind = 'alert' GROUP BY kind;
-- bad input: unknown provider / account / lease, negative tokens, unknown strategy and limit type, bad options
\set VERBOSITY sqlstate
SAVEPOINT s;
SELECT quota.pool_acquire('00000000-0000-0000-0000-000000000000', 1);
ROLLBACK TO s;
SELECT quota.pool_acquire(:'p', -1);
ROLLBACK TO s;
SELECT quota.pool_acquire(:'p', 1, NULL, 'fastest');
ROLLBACK TO s;
SELECT quota.pool_release('00000000-0000-0000-0000-000000000000', gen_random_uuid(), '{}');
ROLLBACK TO s;
SELECT quota.pool_release(:'a2', gen_random_uuid(), '{}');
ROLLBACK TO s;
SELECT quota.pool_release(:'a2', :'lease2', '{"output_tokens": -5}');
ROLLBACK TO s;
SELECT quota.pool_release(:'a2', :'lease2', '{"tokens": 5}');
ROLLBACK TO s;
SELECT quota.set_provider_limit(:'p', 'rps', 5);
ROLLBACK TO s;
SELECT quota.create_provider('openai-pg');
ROLLBACK TO s;
SELECT quota.create_provider('x', 'least_used', '{"rpm": -1}');
ROLLBACK TO s;
SELECT quota.create_pool_account(:'p', '"not an object"');
ROLLBACK TO s;
SELECT quota.create_pool_account(:'p', '{}', '{"period_s": 5}');
ROLLBACK TO s;
SELECT quota.delete_provider(:'p');
ROLLBACK TO s;
SELECT quota.usage_stats(NULL, '2026-03-02', '2026-03-01');
ROLLBACK TO s;
\set VERBOSITY terse
-- limits can be changed and removed
SELECT quota.set_provider_limit(:'p', 'tpm', 1000) -> 'limits' AS limits;
SELECT quota.update_provider(:'p', '{"limits": {"rpm": null, "tpm": null}, "strategy": "round_robin"}') - 'provider_id' - 'created_at' - 'updated_at' AS provider;
SELECT count(*) AS problems FROM quota.verify();
ROLLBACK;
