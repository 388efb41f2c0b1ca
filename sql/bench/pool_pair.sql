-- pgbench script (p): an acquire and its release through the extension, as a gateway does around
-- one upstream request: quota.pool_acquire (one transaction: the least-used account of a random
-- provider, every limit checked and recorded, a lease, the decrypted credentials), then
-- quota.pool_release (another: 100 tokens consumed, the lease ended, the request logged).
\set prov random(1, :nprov)
SELECT j ->> 'account_id' AS acc, j ->> 'lease_id' AS lease
  FROM quota.pool_acquire((SELECT provider_id FROM public.bench_providers WHERE i = :prov), 100, 'gpt-4o') AS j \gset
SELECT quota.pool_release(:acc::uuid, :lease::uuid,
       '{"input_tokens": 40, "output_tokens": 60, "status_code": 200, "latency_ms": 250, "estimated_cost": 0.001}');
