-- pgbench script (vb): the baseline of (v), the bare SQL doing the same durable write: the token
-- found by the SHA-256 of the presented token, the conditional decrement of its count, and the
-- log row, in one statement (the same input read from public.bench_tokens). What (v) does on top:
-- validation, the active / expiry checks, the rate limit in shared memory, the function call.
\set i random(1, :ntokens)
WITH t AS (
    UPDATE quota.tokens SET remaining_quota = remaining_quota - 1
     WHERE token_sha256 = sha256(convert_to((SELECT token FROM public.bench_tokens
                                             WHERE kind = 'count' AND i = :i), 'UTF8'))
       AND remaining_quota >= 1
    RETURNING token_id, remaining_quota, total_quota)
INSERT INTO quota.token_logs (token_id, kind, units, remaining_after, total_after)
SELECT token_id, 'consume', 1, remaining_quota, total_quota FROM t;
