-- pgbench script (pb): the baseline, i.e. the bare SQL doing the same writes as (p), one
-- statement per step (one round trip and one transaction each, like (p)):
--   acquire: the least-used active account of the provider, conditionally updated (quota and
--   in-flight within limits; request counts +1 in the minute, hour and day windows; 100 tokens
--   into the minute and day tokens and the hold), its lease row, its credentials (ciphertext:
--   the baseline does not decrypt);
--   release: the account (hold freed, 100 tokens used, in_flight -1, success counted), the lease
--   ended, the request log row, the provider's request counter.
-- What (p) does on top: validation, the function calls (SPI), the provider's limits read, the
-- ranking in Rust, a subtransaction per try, the row lock, decryption (AES-256-GCM), the window
-- arithmetic. Keep in step with extension/src/pools.rs.
\set prov random(1, :nprov)
WITH p AS (SELECT provider_id FROM public.bench_providers WHERE i = :prov),
c AS (SELECT a.account_id FROM quota.pool_accounts a, p
       WHERE a.provider_id = p.provider_id AND a.active AND (a.expires_at IS NULL OR a.expires_at > now())
       ORDER BY (a.quota_used + a.quota_held)::float8 / a.quota_limit, a.in_flight, a.request_count LIMIT 1),
u AS (UPDATE quota.pool_accounts a
         SET quota_held = quota_held + 100, in_flight = in_flight + 1,
             minute_start = date_trunc('minute', now()), minute_requests = minute_requests + 1,
             minute_tokens = minute_tokens + 100, hour_start = date_trunc('hour', now()),
             hour_requests = hour_requests + 1, day_start = date_trunc('day', now()),
             day_requests = day_requests + 1, day_tokens = day_tokens + 100,
             request_count = request_count + 1, last_used_at = now(), updated_at = now()
        FROM c WHERE a.account_id = c.account_id
         AND a.quota_used + a.quota_held + 100 <= a.quota_limit AND a.in_flight < 100000
      RETURNING a.account_id, a.provider_id, a.credentials),
l AS (INSERT INTO quota.pool_leases (account_id, provider_id, tokens_needed, model, minute_start, day_start,
                                     acquired_at, expires_at)
      SELECT u.account_id, u.provider_id, 100, 'gpt-4o', date_trunc('minute', now()), date_trunc('day', now()),
             now(), now() + interval '300 s'
        FROM u RETURNING lease_id, account_id)
SELECT l.account_id AS acc, l.lease_id AS lease, length(u.credentials) AS n FROM l, u \gset
WITH u AS (UPDATE quota.pool_accounts
              SET quota_held = quota_held - 100, in_flight = in_flight - 1, quota_used = quota_used + 100,
                  success_count = success_count + 1, updated_at = now()
            WHERE account_id = :acc::uuid RETURNING provider_id),
l AS (UPDATE quota.pool_leases SET status = 'released', ended_at = now()
       WHERE lease_id = :lease::uuid AND account_id = :acc::uuid AND status = 'held'
      RETURNING lease_id, provider_id, account_id, model, user_id),
r AS (INSERT INTO quota.pool_request_logs (lease_id, provider_id, account_id, model, user_id, status_code,
                                            latency_ms, input_tokens, output_tokens, success, estimated_cost)
      SELECT l.lease_id, l.provider_id, l.account_id, l.model, l.user_id, 200, 250, 40, 60, true, 0.001 FROM l
      RETURNING provider_id)
INSERT INTO quota.pool_counters AS c (provider_id, name, label, value)
SELECT provider_id, 'requests', 'true', 1 FROM r
ON CONFLICT (provider_id, name, label) DO UPDATE SET value = c.value + 1;
