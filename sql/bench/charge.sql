-- pgbench script (a): one charge through the extension, as an application would call it.
-- Variables: -D run=<unique per run> -D seq=0 -D nusers=<N> (N = 1 for the hot-user case).
-- :seq is a per-client counter (pgbench variables live as long as the client), so with
-- :client_id and the run prefix every operation_id is unique. 0.0001 USD = 1 credit at the
-- default base rate (10000) and multiplier (1.0, no subscription).
\set uid random(1, :nusers)
\set seq :seq + 1
SELECT quota.charge('user_' || :uid, 0.0001, :run::text || '-a-' || :client_id || '-' || :seq);
