-- pg_quota demo data, loaded by scripts/run.sh once, when it creates the database.
-- Everything goes through the SQL API (schema quota), the way an application or a DBA would.
--
-- Safe to run again by hand (psql -v ON_ERROR_STOP=1 -f sql/demo.sql):
--   * plans and users that already exist are skipped (their 23505 is caught);
--   * money-moving calls carry fixed operation_ids, so a rerun replays them and writes nothing.

SET client_min_messages = warning;

-- Exchange rate: 10000 credits per USD (the default, set explicitly so the demo does not depend on it).
SELECT quota.set_exchange_rate(10000, 'demo');

-- Plans. monthly_cost in USD; multiplier applies to charges, purchase_rate to purchases.
DO $$
DECLARE
    p jsonb;
BEGIN
    FOR p IN SELECT * FROM jsonb_array_elements($plans$[
        {"tier": "basic",    "name": "Basic",    "monthly_cost":  9.99, "fixed_cost": 0,
         "credits_included": 100000, "bonus_credits": 0,      "multiplier": 1.5, "purchase_rate": 1.0},
        {"tier": "standard", "name": "Standard", "monthly_cost": 19.99, "fixed_cost": 0,
         "credits_included": 250000, "bonus_credits": 25000,  "multiplier": 1.2, "purchase_rate": 1.1},
        {"tier": "premium",  "name": "Premium",  "monthly_cost": 49.99, "fixed_cost": 0,
         "credits_included": 750000, "bonus_credits": 100000, "multiplier": 1.0, "purchase_rate": 1.2}
    ]$plans$::jsonb)
    LOOP
        BEGIN
            PERFORM quota.create_plan(p, 'demo');
        EXCEPTION WHEN unique_violation THEN
            RAISE NOTICE 'plan % exists: skipped', p->>'tier';
        END;
    END LOOP;
END
$$;

-- Organizations (seed 003): users name one in `org`, so they come first. demo-org is prepaid
-- (it spends its quota), org001 postpaid with an overdraft, org002 prepaid.
DO $$
DECLARE
    o record;
BEGIN
    FOR o IN SELECT * FROM (VALUES
        ('demo-org', '{"name": "Demo Org", "billing_type": "prepaid", "quota": 5000000}'::jsonb),
        ('org001', '{"name": "Org 001", "billing_type": "postpaid", "quota": 1000000, "overdraft_limit": 200000}'::jsonb),
        ('org002', '{"name": "Org 002", "billing_type": "prepaid", "quota": 2000000}'::jsonb)
    ) AS t(id, body)
    LOOP
        BEGIN
            PERFORM quota.create_organization(o.id, o.body, 'demo');
        EXCEPTION WHEN unique_violation THEN
            RAISE NOTICE 'organization % exists: skipped', o.id;
        END;
    END LOOP;
END
$$;

-- Users (one users table for the whole product; the wallet comes with the user). A user created
-- in an organization is unlimited unless it says otherwise: user_111 keeps a limited wallet.
DO $$
DECLARE
    u record;
BEGIN
    FOR u IN SELECT * FROM (VALUES
        ('user_111', $j${"name": "Demo User", "email": "demo@example.com", "github_username": "demo-user",
                        "vip": 1, "org": "demo-org", "unlimited": false, "register_time": "2024-01-15 10:00:00"}$j$::jsonb),
        ('user_222', $j${"name": "Second User", "email": "second@example.com"}$j$::jsonb),
        ('user_333', $j${"name": "Third User"}$j$::jsonb)
    ) AS t(id, profile)
    LOOP
        BEGIN
            PERFORM quota.create_user(u.id, u.profile);
        EXCEPTION WHEN unique_violation THEN
            RAISE NOTICE 'user % exists: skipped', u.id;
        END;
    END LOOP;
END
$$;

-- user_111 subscribes to standard: 250000 included + 25000 bonus credits.
SELECT * FROM quota.update_subscription('user_111', 'standard', 275000, 'demo-sub-user_111');

-- user_222 gets a welcome bonus and buys credits at the default purchase rate.
SELECT * FROM quota.bonus('user_222', 50000, 'demo-bonus-user_222', 'welcome bonus');
SELECT * FROM quota.add('user_222', 5.00, 'demo-add-user_222', 'manual top-up', NULL, 'demo');
-- user_333 buys credits: the payment side confirms the payment, then the purchase uses it.
SELECT quota.confirm_payment('demo-pi-user_333', 'user_333', 9.99, 'pm_card_visa') ->> 'status' AS payment;
SELECT * FROM quota.purchase('user_333', 9.99, 'pm_card_visa', 'demo-buy-user_333');

-- A few charges (standard tier: multiplier 1.2; 0.0123 USD -> 148 credits).
SELECT * FROM quota.charge('user_111', 0.0123, 'demo-charge-user_111-1', 'chat completion',
                           '{"model": "gpt-4o-mini", "tokens": 1234}');
SELECT * FROM quota.charge('user_111', 0.25, 'demo-charge-user_111-2', 'image generation',
                           '{"model": "dall-e-3"}');
SELECT * FROM quota.charge('user_222', 0.0042, 'demo-charge-user_222-1', 'embedding',
                           '{"model": "text-embedding-3-small"}');

-- Part of the second charge is refunded (500 credits).
SELECT * FROM quota.refund('user_111', 'demo-charge-user_111-2', 'demo-refund-user_111-1', 500,
                           'partial refund');

-- Recharge strategies (seed 000): 20 users with the seed's profile fields, and 7 strategies built
-- from the seed's condition examples, some enabled and some disabled. The worker (or
-- SELECT * FROM quota.scan()) recharges the matching users; quota.match_users() previews them.
SELECT quota.import_users(jsonb_agg(u), 'demo')
FROM (
    SELECT jsonb_build_object(
        'id', format('user_%s', lpad(i::text, 3, '0')),
        'name', format('Demo user %s', i),
        'github_username', format('dev%s', i),
        'email', format('user%s@example.com', i),
        'phone', format('+86-138-0000-%s', lpad(i::text, 4, '0')),
        'github_star', CASE i % 4 WHEN 0 THEN 'zgsm,costrict' WHEN 1 THEN 'zgsm' ELSE 'costrict' END,
        'vip', i % 4,
        'org', CASE WHEN i % 3 = 0 THEN 'org001' WHEN i % 3 = 1 THEN 'org002' ELSE NULL END,
        'register_time', (timestamptz '2022-06-01 00:00:00+00' + (i * interval '40 days'))::text,
        'access_time', (timestamptz '2024-03-01 00:00:00+00' + (i * interval '7 days'))::text) AS u
    FROM generate_series(1, 20) AS i
) users;

SELECT quota.create_strategy(s) ->> 'name' AS strategy
FROM jsonb_array_elements('[
  {"name": "star-zgsm-welcome", "title": "Thanks for starring zgsm", "type": "single", "amount": 100,
   "model": "gpt-3.5-turbo", "condition": "github-star(\"zgsm\")"},
  {"name": "active-vip-monthly", "title": "Monthly credits for active VIPs", "type": "periodic", "amount": 500,
   "model": "gpt-4", "periodic_expr": "0 0 1 * *", "condition": "and(is-vip(1), access-after(\"2024-05-01 00:00:00\"))"},
  {"name": "early-or-vip2", "title": "Early users and VIP 2+", "type": "single", "amount": 200,
   "model": "gpt-3.5-turbo", "condition": "or(register-before(\"2023-01-01 00:00:00\"), is-vip(2))"},
  {"name": "daily-top-up-low-balance", "title": "Daily top-up below 1000 credits", "type": "periodic", "amount": 50,
   "model": "gpt-3.5-turbo", "periodic_expr": "0 0 8 * * *", "condition": "quota-le(\"gpt-3.5-turbo\", 1000)",
   "max_exec_per_user": 30},
  {"name": "org001-members", "title": "Credits for org001", "type": "single", "amount": 300,
   "model": "gpt-4", "condition": "belong-to(\"org001\")", "status": false},
  {"name": "vip3-star-costrict", "title": "VIP 3 who starred costrict", "type": "single", "amount": 1000,
   "model": "gpt-4", "condition": "is-vip(3) and github-star(\"costrict\")"},
  {"name": "named-users", "title": "Hand-picked users", "type": "single", "amount": 42,
   "model": "gpt-3.5-turbo", "condition": "match-user(\"user_001\", \"user_002\")", "status": false}
]'::jsonb) AS s;

-- Two-phase consumption (seed 003): user_111 (limited, in demo-org) reserves 2000 credits and
-- settles 1500; user_003 (unlimited, in the postpaid org001) consumes 700 in one step (its wallet
-- is untouched, org001's used_quota grows); user_222 keeps an open hold for a day.
SELECT reservation_id, status, credits_held, expires_at FROM quota.reserve('demo-reserve-user_111-1', 'user_111', 2000);
SELECT status, charged_credits, returned_credits, balance_after, org_quota_after
FROM quota.settle((SELECT reservation_id FROM quota.reservations
                   WHERE user_id = 'user_111' AND operation_id = 'demo-reserve-user_111-1'),
                  1500, 'demo-settle-user_111-1');
SELECT status, charged_credits, org_charged_credits, org_used_quota_after FROM quota.consume('demo-consume-user_003-1', 'user_003', 700);
SELECT reservation_id, status, credits_held, expires_at FROM quota.reserve('demo-reserve-user_222-1', 'user_222', 100, ttl_s => 86400);

-- Provider pools (seed 002): one provider with every limit, two accounts (one near its warning
-- threshold), a request acquired and released through the pool.
SELECT quota.create_provider('demo-openai', 'least_used',
       '{"rpm": 60, "rph": 3000, "rpd": 50000, "tpm": 200000, "tpd": 5000000, "concurrent": 10}') ->> 'provider_id' AS demo_provider;
SELECT quota.create_pool_account(p.provider_id, '{"api_key": "sk-demo-not-a-real-key-1"}',
       '{"name": "demo-account-1", "quota_limit": 1000000}') ->> 'account_id' AS demo_account_1
FROM quota.providers p WHERE p.name = 'demo-openai';
SELECT quota.create_pool_account(p.provider_id, '{"api_key": "sk-demo-not-a-real-key-2"}',
       '{"name": "demo-account-2", "quota_limit": 100000}') ->> 'account_id' AS demo_account_2
FROM quota.providers p WHERE p.name = 'demo-openai';
SELECT quota.pool_consume(a.account_id, 79000) ->> 'usage_percent' AS demo_account_2_percent
FROM quota.pool_accounts a WHERE a.name = 'demo-account-2';
SELECT quota.pool_release((j ->> 'account_id')::uuid, (j ->> 'lease_id')::uuid,
       '{"input_tokens": 420, "output_tokens": 610, "status_code": 200, "latency_ms": 950, "model": "gpt-4o", "estimated_cost": 0.0123, "user_id": "user_111"}')
       ->> 'released' AS demo_pool_request
FROM (SELECT quota.pool_acquire(p.provider_id, 1000, 'gpt-4o', user_id => 'user_111') AS j
        FROM quota.providers p WHERE p.name = 'demo-openai') x;

-- The ledger invariant holds: quota.verify() returns no rows.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM quota.verify()) THEN
        RAISE EXCEPTION 'demo data broke the ledger invariant: %',
            (SELECT string_agg(subject || ': ' || problem, '; ') FROM quota.verify());
    END IF;
END
$$;
