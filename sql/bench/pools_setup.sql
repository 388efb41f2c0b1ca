-- Pool benchmark data (scripts/bench_pools.sh): :nprov providers, each with 4 accounts
-- (quota 1e15 tokens a day) and limits high enough never to refuse (rpm, rph, rpd, tpm, tpd,
-- concurrent: every check runs, none binds), created through the SQL API. public.bench_providers
-- (i, provider_id) lets both load scripts pick a random provider the same way.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE TABLE public.bench_providers (i int PRIMARY KEY, provider_id uuid NOT NULL);
INSERT INTO public.bench_providers
SELECT i, (quota.create_provider('bench-' || i, 'least_used',
           '{"rpm": 1000000000, "rph": 1000000000, "rpd": 1000000000, "tpm": 1000000000000, "tpd": 1000000000000, "concurrent": 100000}') ->> 'provider_id')::uuid
FROM generate_series(1, :nprov) AS i;
SELECT count(quota.create_pool_account(b.provider_id, jsonb_build_object('api_key', 'sk-bench-' || b.i || '-' || k),
                                       '{"quota_limit": 1000000000000000}'))
FROM public.bench_providers b, generate_series(1, 4) AS k;
VACUUM ANALYZE quota.providers;
VACUUM ANALYZE quota.pool_accounts;
VACUUM ANALYZE public.bench_providers;
