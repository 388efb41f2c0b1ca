-- Benchmark data (scripts/bench.sh): :nusers users user_1 .. user_N, each with a bonus of
-- 1e12 credits so charges never run out. Run with: psql -v nusers=10000 -f sql/bench/setup.sql
\set ON_ERROR_STOP on
SET client_min_messages = warning;

-- Users through the SQL API (one call, up to 10000 per call).
SELECT quota.import_users(jsonb_agg(jsonb_build_object('id', 'user_' || i, 'name', 'Bench user ' || i)))
FROM generate_series(1, :nusers) AS i;

-- A large balance per user, also through the API (each is a ledger entry).
SELECT count(*) AS bonuses
FROM generate_series(1, :nusers) AS i,
     LATERAL quota.bonus('user_' || i, 1000000000000, 'bench-seed-' || i, 'benchmark balance') AS b;

VACUUM ANALYZE quota.users;
VACUUM ANALYZE quota.wallets;
VACUUM ANALYZE quota.ledger;
