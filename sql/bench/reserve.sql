-- pgbench script (r): a hold and its settle through the extension, as a gateway does it around
-- one request: quota.reserve (one transaction), then quota.settle (another). 2 credits held,
-- 1 charged. Variables: -D run=<unique per run> -D seq=0 -D nusers=<N> -D stride=<S> (S = 1: any user; S = norgs: the users of one organization).
\set uid 1 + :stride * random(0, :nusers / :stride - 1)
\set seq :seq + 1
SELECT reservation_id AS rid FROM quota.reserve(:run::text || '-r-' || :client_id || '-' || :seq, 'rb_' || :uid, 2) \gset
SELECT status FROM quota.settle(:rid, 1, :run::text || '-r-' || :client_id || '-' || :seq || '-end');
