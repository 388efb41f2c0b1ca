-- pgbench script (tb): pgbench's SELECT 1, given the same input as (t) (the token read from
-- public.bench_tokens), so the two differ only by the verification.
\set i random(1, :ntokens)
SELECT 1 FROM public.bench_tokens WHERE kind = 'time' AND i = :i;
