-- pgbench script (t): quota.verify_token on a time token with a rate limit: the token read, the
-- expiry check and the rate limit in shared memory; no durable write. Variables: -D ntokens=<N>.
\set i random(1, :ntokens)
SELECT valid FROM quota.verify_token((SELECT token FROM public.bench_tokens WHERE kind = 'time' AND i = :i));
