-- pgbench script (v): quota.verify_token on a count token with a rate limit (the gateway's call
-- per request): active, expiry, the rate limit (shared memory), then the count decrement and its
-- log row (a durable write). Variables: -D ntokens=<N>.
\set i random(1, :ntokens)
SELECT valid FROM quota.verify_token((SELECT token FROM public.bench_tokens WHERE kind = 'count' AND i = :i));
