-- Token benchmark data (scripts/bench_tokens.sh): :ntokens count tokens (1e12 each, 1000 per
-- minute, burst 1000) and :ntokens time tokens (same rate limit), created through the SQL API.
-- The plain tokens go to public.bench_tokens (kind, i, token) so the load scripts can present
-- them; both the extension's script and its baseline read them the same way.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE TABLE public.bench_tokens (kind text, i int, token text, PRIMARY KEY (kind, i));
INSERT INTO public.bench_tokens
SELECT 'count', i, quota.create_token(jsonb_build_object(
           'ws_id', 'bench', 'email', 'bench@example.com', 'operation', 'unlimited',
           'quota_type', 'count', 'total_quota', 1000000000000,
           'rate_limit_per_minute', 1000, 'rate_limit_burst', 1000)) ->> 'access_token'
FROM generate_series(1, :ntokens) AS i;
INSERT INTO public.bench_tokens
SELECT 'time', i, quota.create_token(jsonb_build_object(
           'ws_id', 'bench', 'email', 'bench@example.com', 'operation', 'add', 'days', 30,
           'rate_limit_per_minute', 1000, 'rate_limit_burst', 1000)) ->> 'access_token'
FROM generate_series(1, :ntokens) AS i;
VACUUM ANALYZE quota.tokens;
VACUUM ANALYZE public.bench_tokens;
