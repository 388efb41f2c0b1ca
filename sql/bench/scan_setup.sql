-- Scan benchmark data (scripts/bench_scan.sh): :nusers users generated in SQL with wallets;
-- vip >= 1 for every 5th user, the zgsm star for every 2nd, so and(is-vip(1), github-star("zgsm"))
-- matches every 10th user.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
-- users.org names an organization: the 50 organizations first.
INSERT INTO quota.organizations (id, name) SELECT 'org' || i, 'Scan org ' || i FROM generate_series(0, 49) AS i
ON CONFLICT (id) DO NOTHING;
INSERT INTO quota.users (id, name, vip, github_star, org, register_time, access_time)
SELECT 'su_' || i, 'Scan user ' || i,
       CASE WHEN i % 5 = 0 THEN 1 + (i / 5) % 3 ELSE 0 END,
       CASE WHEN i % 2 = 0 THEN ARRAY['zgsm'] ELSE ARRAY['other'] END,
       'org' || (i % 50),
       timestamptz '2023-01-01' + (i % 700) * interval '1 day',
       timestamptz '2024-01-01' + (i % 300) * interval '1 day'
FROM generate_series(1, :nusers) AS i;
INSERT INTO quota.wallets (user_id) SELECT id FROM quota.users WHERE id LIKE 'su\_%';
VACUUM ANALYZE quota.users;
VACUUM ANALYZE quota.wallets;
