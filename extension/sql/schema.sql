-- pg_quota schema: tables and hand-written SQL helpers. Loaded first (bootstrap) by the
-- extension script that pgrx generates; the Rust functions come after it.

-- The roles of SPEC 1.6, cluster-wide (a second database with the extension reuses them):
-- quota_reader reads, quota_service does what a service does per request (charge, add, refund,
-- reserve, resolve a user's API token), quota_admin manages plans, rates, users, strategies and
-- the relay. Each includes the one before it. None of them writes a table: every write goes
-- through a SECURITY DEFINER function (grants in finalize.sql).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'quota_reader') THEN
        CREATE ROLE quota_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'quota_service') THEN
        CREATE ROLE quota_service NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'quota_admin') THEN
        CREATE ROLE quota_admin NOLOGIN;
    END IF;
END
$roles$;
GRANT quota_reader TO quota_service;
GRANT quota_service TO quota_admin;
GRANT USAGE ON SCHEMA quota TO quota_reader;

-- The clock every time-dependent rule reads (SPEC 1.4). A superuser (tests) may pin it per
-- session with SET quota.now_override = '2024-05-01 00:00:00+00'; the setting is superuser-only.
-- The answer of quota.verify_token (access tokens, tokens.sql): a named row type, so a call
-- builds its result from the type cache instead of from the function's OUT parameters (the
-- gateway calls it on every request).
CREATE TYPE quota.verify_result AS (
    valid                boolean,
    code                 text,
    token_id             bigint,
    quota_type           text,
    remaining            bigint,
    rate_limit_limit     integer,
    rate_limit_remaining integer,
    rate_limit_reset_s   integer,
    retry_after_s        integer,
    replayed             boolean
);

CREATE FUNCTION quota.now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(nullif(current_setting('quota.now_override', true), '')::timestamptz, now())
$$;
COMMENT ON FUNCTION quota.now() IS
    'The clock of pg_quota: now(), unless the setting quota.now_override pins it (tests).';

-- Organizations (seed 003, SPEC 3). `id` is the value users.org and the strategy condition
-- belong-to(...) use. prepaid: `quota` is what is left, a settle takes from it; postpaid: a settle
-- adds to `used_quota`, which may reach quota + overdraft_limit. `held_quota` is the sum of the
-- open reservations' holds on it. Every change of quota, used_quota or held_quota is a row of
-- quota.org_ledger (reservations.sql), and quota.verify() checks the sums.
CREATE TABLE quota.organizations (
    id              text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    status          text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    billing_type    text NOT NULL DEFAULT 'prepaid' CHECK (billing_type IN ('prepaid', 'postpaid')),
    quota           bigint NOT NULL DEFAULT 0 CHECK (quota BETWEEN 0 AND 1000000000000000000),
    used_quota      bigint NOT NULL DEFAULT 0 CHECK (used_quota >= 0),
    held_quota      bigint NOT NULL DEFAULT 0 CHECK (held_quota >= 0),
    overdraft_limit bigint NOT NULL DEFAULT 0 CHECK (overdraft_limit BETWEEN 0 AND 1000000000000000000),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);
COMMENT ON TABLE quota.organizations IS
    'Organizations (seed 003): prepaid spend quota, postpaid accrue used_quota up to quota + overdraft_limit; held_quota = open holds.';

-- One users table for the whole product (SPEC 3 and 6.1). Later features add columns here.
CREATE TABLE quota.users (
    id              text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 255),
    name            text,
    github_username text,
    email           text,
    phone           text,
    github_star     text[] NOT NULL DEFAULT '{}',
    vip             integer NOT NULL DEFAULT 0 CHECK (vip >= 0),
    org             text REFERENCES quota.organizations (id),
    -- Seed 003: reservations neither check nor debit an unlimited user's wallet (the
    -- organization is still charged). Defaults to true for a user created in an organization.
    unlimited       boolean NOT NULL DEFAULT false,
    register_time   timestamptz,
    access_time     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_org_idx ON quota.users (org) WHERE org IS NOT NULL;
COMMENT ON TABLE quota.users IS 'Users: the seed 000 profile fields, org and unlimited (seed 003); the wallet is quota.wallets.';

-- The wallet of each user. Its balance only moves together with a quota.ledger row.
-- Bounds (quota_core::pricing): balance <= 1e18, far below the bigint limit, so a full wallet is
-- refused by name and sums never overflow; the functions also keep total_earned <= 9e18 (and
-- total_spent <= total_earned follows). The CHECKs are few on purpose: PostgreSQL parses every
-- CHECK of a table from its text on each INSERT or UPDATE, and a charge writes this table.
-- (multiplier copies quota.plans.multiplier, which is CHECKed; quota.verify() compares them.)
CREATE TABLE quota.wallets (
    user_id      text PRIMARY KEY REFERENCES quota.users (id),
    balance      bigint NOT NULL DEFAULT 0 CHECK (balance BETWEEN 0 AND 1000000000000000000),
    total_earned bigint NOT NULL DEFAULT 0 CHECK (total_earned >= 0),
    total_spent  bigint NOT NULL DEFAULT 0 CHECK (total_spent >= 0),
    -- The charge multiplier of the user's plan (1 without one), kept in step by the triggers
    -- below so a charge prices itself from the row it updates, without two more lookups.
    multiplier   double precision NOT NULL DEFAULT 1,
    -- Seed 003: credits held by open reservations (part of balance that no charge or other
    -- reservation may take), credits consumed by settled requests (counted for unlimited users
    -- too) and the number of settled requests. No CHECKs here (see above); quota.verify()
    -- proves them against the ledger and the reservations.
    held_credits  bigint NOT NULL DEFAULT 0,
    used_quota    bigint NOT NULL DEFAULT 0,
    request_count bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80); -- room for HOT updates: every charge rewrites the row
COMMENT ON TABLE quota.wallets IS
    'Credit balance per user; invariant (quota.verify): balance = sum of the user''s ledger credits.';

CREATE TABLE quota.plans (
    tier             text PRIMARY KEY CHECK (length(tier) BETWEEN 1 AND 64),
    name             text NOT NULL CONSTRAINT plans_name_key UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
    monthly_cost     numeric(16, 4) NOT NULL DEFAULT 0 CHECK (monthly_cost >= 0),
    fixed_cost       numeric(16, 4) NOT NULL DEFAULT 0 CHECK (fixed_cost >= 0),
    credits_included bigint NOT NULL DEFAULT 0 CHECK (credits_included >= 0),
    bonus_credits    bigint NOT NULL DEFAULT 0 CHECK (bonus_credits >= 0),
    -- Bounds of quota_core::pricing (NaN sorts above every number, so BETWEEN excludes it).
    multiplier       double precision NOT NULL DEFAULT 1 CHECK (multiplier BETWEEN 0.001 AND 1000),
    purchase_rate    double precision NOT NULL DEFAULT 1 CHECK (purchase_rate BETWEEN 1 AND 1000),
    active           boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE quota.plans IS 'Subscription plans (seed 004): multiplier prices charges, purchase_rate prices purchases.';

-- Global settings: one row.
CREATE TABLE quota.settings (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    base_rate  bigint NOT NULL DEFAULT 10000 CHECK (base_rate BETWEEN 1 AND 1000000000),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO quota.settings DEFAULT VALUES;
COMMENT ON TABLE quota.settings IS 'Global settings: base_rate = credits per USD before multipliers.';

-- One subscription per user. Deleting a plan with subscribers is refused (23503).
CREATE TABLE quota.subscriptions (
    user_id    text PRIMARY KEY REFERENCES quota.users (id),
    tier       text NOT NULL REFERENCES quota.plans (tier) ON UPDATE CASCADE,
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_tier_idx ON quota.subscriptions (tier);

-- wallets.multiplier follows the subscription and the plan, whoever changes them (SQL functions
-- or plain UPDATEs). quota.verify() checks that it does.
CREATE FUNCTION quota._wallet_multiplier_from_subscription() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        UPDATE quota.wallets SET multiplier = 1 WHERE user_id = OLD.user_id;
    ELSE
        UPDATE quota.wallets w
           SET multiplier = coalesce((SELECT p.multiplier FROM quota.plans p WHERE p.tier = NEW.tier), 1)
         WHERE w.user_id = NEW.user_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER subscriptions_wallet_multiplier
    AFTER INSERT OR DELETE OR UPDATE OF tier ON quota.subscriptions
    FOR EACH ROW EXECUTE FUNCTION quota._wallet_multiplier_from_subscription();

CREATE FUNCTION quota._wallet_multiplier_from_plan() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE quota.wallets w SET multiplier = NEW.multiplier
      FROM quota.subscriptions s
     WHERE s.tier = NEW.tier AND w.user_id = s.user_id AND w.multiplier IS DISTINCT FROM NEW.multiplier;
    RETURN NULL;
END
$$;
CREATE TRIGGER plans_wallet_multiplier
    AFTER UPDATE OF multiplier ON quota.plans
    FOR EACH ROW WHEN (OLD.multiplier IS DISTINCT FROM NEW.multiplier)
    EXECUTE FUNCTION quota._wallet_multiplier_from_plan();

-- The ledger: every movement of credits, forever. It is also the idempotency record of every
-- money-moving call (SPEC 1.1): the key is (user_id, scope, operation_id), and `request` holds the
-- canonical parameters the first call was made with, so a retry is replayed and a reuse with
-- other parameters refused. Keys are scoped per user (as Stripe scopes them per account), so one
-- user can neither block nor probe another's operations, and per caller:
--   service  ids chosen by services and SQL callers (charge, add, bonus, refund, subscription);
--   user     ids an end user chose through the public API (purchases), so a user cannot take an
--            id a service will use to charge them later;
--   system   ids pg_quota generates itself (recharges `recharge:<execution id>`): no function lets
--            a caller write this scope.
CREATE TABLE quota.ledger (
    transaction_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id          text NOT NULL REFERENCES quota.users (id),
    scope            text NOT NULL DEFAULT 'service' CHECK (scope IN ('service', 'user', 'system')),
    operation_id     text NOT NULL CHECK (length(operation_id) BETWEEN 1 AND 255),
    transaction_type text NOT NULL CHECK (transaction_type IN
                     ('charge', 'add', 'subscription', 'bonus', 'refund',
                      'reserve', 'settle', 'release', 'recharge', 'adjust')),
    credits          bigint NOT NULL,
    balance_before   bigint NOT NULL,
    balance_after    bigint NOT NULL CHECK (balance_after = balance_before + credits),
    -- The change of the wallet's held_credits (reserve +, settle / release -).
    held_change      bigint NOT NULL DEFAULT 0,
    cost_usd         double precision,
    amount_usd       double precision,
    refund_of        text,
    description      text,
    metadata         jsonb,
    request          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ledger_operation_key UNIQUE (user_id, scope, operation_id)
);
CREATE INDEX ledger_user_idx ON quota.ledger (user_id, transaction_id DESC);
CREATE INDEX ledger_refund_of_idx ON quota.ledger (user_id, refund_of) WHERE refund_of IS NOT NULL;
CREATE INDEX ledger_created_at_idx ON quota.ledger (created_at);
COMMENT ON TABLE quota.ledger IS
    'Every credit movement; (user_id, scope, operation_id) is the idempotency key, request the parameters it was first called with.';

-- Payments confirmed by the payment side (POST /api/internal/payments, quota.confirm_payment).
-- A purchase adds credits only against a confirmed payment of that user and amount, and uses it
-- up: the payment then names the purchase's operation_id. Recorded once per (user, payment id).
CREATE TABLE quota.payments (
    user_id           text NOT NULL REFERENCES quota.users (id),
    payment_id        text NOT NULL CHECK (length(payment_id) BETWEEN 1 AND 255),
    amount_usd        double precision NOT NULL CHECK (amount_usd > 0 AND amount_usd <= 1000000),
    payment_method_id text,
    status            text NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'used')),
    metadata          jsonb,
    confirmed_at      timestamptz NOT NULL DEFAULT now(),
    used_at           timestamptz,
    operation_id      text,
    PRIMARY KEY (user_id, payment_id),
    CHECK ((status = 'used') = (used_at IS NOT NULL AND operation_id IS NOT NULL))
);
CREATE INDEX payments_unused_idx ON quota.payments (user_id, amount_usd, confirmed_at) WHERE status = 'confirmed';
COMMENT ON TABLE quota.payments IS
    'Payments confirmed by the payment side; a purchase uses up one of the same user and amount.';

-- User API tokens for the public REST API: only the SHA-256 of the token is stored.
CREATE TABLE quota.api_tokens (
    token_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id      text NOT NULL REFERENCES quota.users (id),
    token_sha256 bytea NOT NULL CONSTRAINT api_tokens_sha256_key UNIQUE,
    label        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX api_tokens_user_idx ON quota.api_tokens (user_id);

-- Who changed what, when: every admin change (plans, rates, users, tokens).
CREATE TABLE quota.audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor      text NOT NULL,
    action     text NOT NULL,
    subject    text NOT NULL,
    old_value  jsonb,
    new_value  jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_created_at_idx ON quota.audit_log (created_at);

SELECT pg_catalog.pg_extension_config_dump('quota.organizations', '');
SELECT pg_catalog.pg_extension_config_dump('quota.users', '');
SELECT pg_catalog.pg_extension_config_dump('quota.wallets', '');
SELECT pg_catalog.pg_extension_config_dump('quota.plans', '');
SELECT pg_catalog.pg_extension_config_dump('quota.settings', '');
SELECT pg_catalog.pg_extension_config_dump('quota.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('quota.ledger', '');
SELECT pg_catalog.pg_extension_config_dump('quota.payments', '');
SELECT pg_catalog.pg_extension_config_dump('quota.api_tokens', '');
SELECT pg_catalog.pg_extension_config_dump('quota.audit_log', '');

-- JSON shapes shared by the SQL API and REST (one rendering per concept). The two plan shapes
-- are seed 004's, key for key: its clients count them.
-- A plan as the admin API shows it (12 keys).
CREATE FUNCTION quota._plan_json(p quota.plans) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'tier', p.tier, 'name', p.name,
        'monthly_cost', p.monthly_cost::float8, 'fixed_cost', p.fixed_cost::float8,
        'credits_included', p.credits_included, 'bonus_credits', p.bonus_credits,
        'multiplier', p.multiplier, 'purchase_rate', p.purchase_rate, 'active', p.active,
        'users_count', (SELECT count(*) FROM quota.subscriptions s WHERE s.tier = p.tier),
        'created_at', p.created_at, 'updated_at', p.updated_at)
$$;

-- A plan as users see it (9 keys): what it costs and gives, total_credits = included + bonus.
CREATE FUNCTION quota._public_plan_json(p quota.plans) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'tier', p.tier, 'name', p.name,
        'monthly_cost', p.monthly_cost::float8, 'fixed_cost', p.fixed_cost::float8,
        'credits_included', p.credits_included, 'bonus_credits', p.bonus_credits,
        'multiplier', p.multiplier, 'purchase_rate', p.purchase_rate,
        'total_credits', p.credits_included + p.bonus_credits)
$$;

CREATE FUNCTION quota._user_json(user_id text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', u.id, 'name', u.name, 'github_username', u.github_username, 'email', u.email,
        'phone', u.phone, 'github_star', to_jsonb(u.github_star), 'vip', u.vip, 'org', u.org,
        'register_time', u.register_time, 'access_time', u.access_time,
        'created_at', u.created_at, 'updated_at', u.updated_at,
        'balance', w.balance, 'total_earned', w.total_earned, 'total_spent', w.total_spent,
        'subscription_tier', s.tier, 'unlimited', u.unlimited, 'held_credits', w.held_credits,
        'used_quota', w.used_quota, 'request_count', w.request_count)
    FROM quota.users u
    JOIN quota.wallets w ON w.user_id = u.id
    LEFT JOIN quota.subscriptions s ON s.user_id = u.id
    WHERE u.id = $1
$$;

-- A ledger entry as seed 004's transaction history shows it (id, type, date, credits,
-- balance_after, description, operation_id; cost_usd to 4 places on charges, amount_usd to 2 on
-- adds), plus balance_before and metadata. STABLE, not IMMUTABLE: it renders timestamptz, which
-- depends on the session's TimeZone.
CREATE FUNCTION quota._transaction_json(l quota.ledger) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', l.transaction_id::text, 'type', l.transaction_type, 'date', l.created_at,
        'credits', l.credits, 'balance_before', l.balance_before, 'balance_after', l.balance_after,
        'description', l.description, 'operation_id', l.operation_id, 'metadata', l.metadata)
        || CASE WHEN l.transaction_type = 'charge' AND l.cost_usd IS NOT NULL
                THEN jsonb_build_object('cost_usd', round(l.cost_usd::numeric, 4)::float8) ELSE '{}' END
        || CASE WHEN l.transaction_type = 'add' AND l.amount_usd IS NOT NULL
                THEN jsonb_build_object('amount_usd', round(l.amount_usd::numeric, 2)::float8) ELSE '{}' END
        || CASE WHEN l.refund_of IS NOT NULL THEN jsonb_build_object('refund_of', l.refund_of) ELSE '{}' END
        || CASE WHEN l.held_change <> 0 THEN jsonb_build_object('held_change', l.held_change) ELSE '{}' END
$$;

CREATE FUNCTION quota._payment_json(p quota.payments) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'payment_id', p.payment_id, 'user_id', p.user_id, 'amount_usd', p.amount_usd,
        'payment_method_id', p.payment_method_id, 'status', p.status, 'metadata', p.metadata,
        'confirmed_at', p.confirmed_at, 'used_at', p.used_at, 'operation_id', p.operation_id)
$$;

-- The ledger invariant (SPEC 1.2), as a view quota.verify() reads. No rows = clean.
CREATE VIEW quota.ledger_problems AS
WITH sums AS (
    SELECT user_id,
           sum(credits) AS credits,
           sum(credits) FILTER (WHERE transaction_type IN ('add', 'subscription', 'bonus', 'recharge')
                                   OR (transaction_type = 'adjust' AND credits > 0)) AS earned,
           -sum(credits) FILTER (WHERE transaction_type IN ('charge', 'settle', 'refund')
                                   OR (transaction_type = 'adjust' AND credits < 0)) AS spent
    FROM quota.ledger GROUP BY user_id
), chain AS (
    SELECT user_id, transaction_id, balance_before,
           lag(balance_after, 1, 0::bigint) OVER (PARTITION BY user_id ORDER BY transaction_id) AS previous_after
    FROM quota.ledger
), refunds AS (
    SELECT r.user_id, r.refund_of, sum(r.credits) AS refunded, -min(c.credits) AS charged
    FROM quota.ledger r LEFT JOIN quota.ledger c
      ON c.user_id = r.user_id AND c.scope = 'service' AND c.operation_id = r.refund_of
     AND c.transaction_type = 'charge'
    WHERE r.transaction_type = 'refund' GROUP BY r.user_id, r.refund_of
)
SELECT 'user:' || w.user_id AS subject,
       format('balance %s <> ledger sum %s', w.balance, coalesce(s.credits, 0)) AS problem
FROM quota.wallets w LEFT JOIN sums s USING (user_id)
WHERE w.balance <> coalesce(s.credits, 0)
UNION ALL
SELECT 'user:' || w.user_id,
       format('total_earned %s <> ledger earned %s', w.total_earned, coalesce(s.earned, 0))
FROM quota.wallets w LEFT JOIN sums s USING (user_id)
WHERE w.total_earned <> coalesce(s.earned, 0)
UNION ALL
SELECT 'user:' || w.user_id,
       format('total_spent %s <> ledger spent %s', w.total_spent, coalesce(s.spent, 0))
FROM quota.wallets w LEFT JOIN sums s USING (user_id)
WHERE w.total_spent <> coalesce(s.spent, 0)
UNION ALL
SELECT 'user:' || w.user_id,
       format('wallet multiplier %s <> plan multiplier %s', w.multiplier, coalesce(p.multiplier, 1))
FROM quota.wallets w
LEFT JOIN quota.subscriptions s ON s.user_id = w.user_id
LEFT JOIN quota.plans p ON p.tier = s.tier
WHERE w.multiplier <> coalesce(p.multiplier, 1)
UNION ALL
SELECT 'user:' || w.user_id, format('balance %s is negative', w.balance)
FROM quota.wallets w WHERE w.balance < 0
UNION ALL
SELECT 'user:' || w.user_id, format('total_earned %s is beyond the bound of 9e18', w.total_earned)
FROM quota.wallets w WHERE w.total_earned > 9000000000000000000
UNION ALL
SELECT 'ledger:' || c.transaction_id,
       format('balance_before %s <> previous balance_after %s', c.balance_before, c.previous_after)
FROM chain c WHERE c.balance_before <> c.previous_after
UNION ALL
SELECT 'ledger:' || l.transaction_id, 'ledger entry of a user without a wallet'
FROM quota.ledger l WHERE NOT EXISTS (SELECT 1 FROM quota.wallets w WHERE w.user_id = l.user_id)
UNION ALL
SELECT 'refund_of:' || r.user_id || '/' || r.refund_of,
       format('refunded %s exceeds charged %s', r.refunded, coalesce(r.charged, 0))
FROM refunds r WHERE r.refunded > coalesce(r.charged, 0)
UNION ALL
SELECT 'payment:' || p.user_id || '/' || p.payment_id,
       format('used by operation %s, which is not a purchase of %s USD in the ledger', p.operation_id, p.amount_usd)
FROM quota.payments p
WHERE p.status = 'used' AND NOT EXISTS (
    SELECT 1 FROM quota.ledger l
    WHERE l.user_id = p.user_id AND l.scope = 'user' AND l.operation_id = p.operation_id
      AND l.transaction_type = 'add' AND l.amount_usd = p.amount_usd);
