-- Reservation benchmark data (scripts/bench_reserve.sh): :norgs prepaid organizations with a
-- quota of 1e15 each and :nusers limited users spread over them (user rb_i in org rb_org_(i % norgs)),
-- each with 1e12 credits, all through the SQL API.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SELECT count(quota.create_organization('rb_org_' || i, '{"quota": 1000000000000000}'))
FROM generate_series(0, :norgs - 1) AS i;
SELECT quota.import_users(jsonb_agg(jsonb_build_object('id', 'rb_' || i, 'org', 'rb_org_' || (i % :norgs),
                                                       'unlimited', false)))
FROM generate_series(1, :nusers) AS i;
SELECT count(*) AS bonuses
FROM generate_series(1, :nusers) AS i,
     LATERAL quota.bonus('rb_' || i, 1000000000000, 'bench-seed-' || i) AS b;
VACUUM ANALYZE quota.users;
VACUUM ANALYZE quota.wallets;
VACUUM ANALYZE quota.organizations;
VACUUM ANALYZE quota.ledger;
