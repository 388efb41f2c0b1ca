-- Organizations' ledger and two-phase consumption (seed 003, SPEC 3): reserve, settle, release,
-- consume and expiry (the functions are in src/reservations.rs). Loaded after schema.sql.

-- Every change of an organization's quota, used_quota or held_quota, with an operation id.
-- Keys: (org_id, scope, operation_id). scope 'service' = ids chosen by callers (top-ups through
-- quota.add_organization_quota); 'system' = ids pg_quota makes (`reserve:<reservation id>`,
-- `settle:<id>`, `release:<id>`, `expire:<id>`, `create:<org>`, `adjust:<audit id>`), which no
-- function lets a caller write.
CREATE TABLE quota.org_ledger (
    entry_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id           text NOT NULL REFERENCES quota.organizations (id),
    scope            text NOT NULL CHECK (scope IN ('service', 'system')),
    operation_id     text NOT NULL CHECK (length(operation_id) BETWEEN 1 AND 255),
    entry_type       text NOT NULL CHECK (entry_type IN
                     ('create', 'add', 'adjust', 'reserve', 'settle', 'release', 'expire')),
    quota_change     bigint NOT NULL DEFAULT 0,
    used_change      bigint NOT NULL DEFAULT 0,
    held_change      bigint NOT NULL DEFAULT 0,
    quota_after      bigint NOT NULL,
    used_quota_after bigint NOT NULL,
    held_quota_after bigint NOT NULL,
    reservation_id   bigint,
    user_id          text,
    description      text,
    request          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT org_ledger_operation_key UNIQUE (org_id, scope, operation_id)
);
CREATE INDEX org_ledger_org_idx ON quota.org_ledger (org_id, entry_id DESC);
COMMENT ON TABLE quota.org_ledger IS
    'Every change of an organization''s quota, used_quota and held_quota; (org_id, scope, operation_id) is the idempotency key.';

-- Reservations: a hold on a user's wallet (none for an unlimited user) and on the user's
-- organization (if any), made by quota.reserve and ended exactly once by quota.settle,
-- quota.release or expiry (status leaves 'held' once, under the row lock). The rules a hold was
-- made with (unlimited, org) are kept here, so a later switch of the user does not change them.
-- The reserve's operation_id is the user's ledger key (scope service); the end's too (settle,
-- release) or `expire:<id>` (scope system).
CREATE TABLE quota.reservations (
    reservation_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                 text NOT NULL REFERENCES quota.users (id),
    org                     text,
    unlimited               boolean NOT NULL,
    operation_id            text NOT NULL,
    credits_held            bigint NOT NULL CHECK (credits_held >= 0),
    user_credits_held       bigint NOT NULL CHECK (user_credits_held >= 0),
    org_credits_held        bigint NOT NULL CHECK (org_credits_held >= 0),
    cost_usd                double precision,
    -- The access token the hold was made with (issue 12), if any: a limited token is held and
    -- debited too, even when its user is unlimited.
    token_id                bigint,
    token_limited           boolean NOT NULL DEFAULT false,
    token_credits_held      bigint NOT NULL DEFAULT 0 CHECK (token_credits_held >= 0),
    token_charged_credits   bigint,
    status                  text NOT NULL DEFAULT 'held'
                            CHECK (status IN ('held', 'settled', 'released', 'expired')),
    created_at              timestamptz NOT NULL DEFAULT now(),
    expires_at              timestamptz NOT NULL,
    ended_at                timestamptz,
    end_operation_id        text,
    actual_credits          bigint,
    charged_credits         bigint,
    returned_credits        bigint,
    uncollected_credits     bigint,
    org_charged_credits     bigint,
    org_uncollected_credits bigint,
    -- The settle / release answer, returned again field for field on a replay.
    outcome                 jsonb,
    CHECK ((status = 'held') = (ended_at IS NULL)),
    CONSTRAINT reservations_operation_key UNIQUE (user_id, operation_id)
);
CREATE INDEX reservations_held_expiry_idx ON quota.reservations (expires_at) WHERE status = 'held';
CREATE INDEX reservations_held_org_idx ON quota.reservations (org) WHERE status = 'held';
CREATE INDEX reservations_held_token_idx ON quota.reservations (token_id) WHERE status = 'held' AND token_id IS NOT NULL;
COMMENT ON TABLE quota.reservations IS
    'Holds of quota.reserve: ended exactly once (settled, released, expired); open ones expire after expires_at (background worker).';

SELECT pg_catalog.pg_extension_config_dump('quota.org_ledger', '');
SELECT pg_catalog.pg_extension_config_dump('quota.reservations', '');

-- An organization as the SQL and REST APIs show it.
CREATE FUNCTION quota._organization_json(o quota.organizations) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', o.id, 'name', o.name, 'status', o.status, 'billing_type', o.billing_type,
        'quota', o.quota, 'used_quota', o.used_quota, 'held_quota', o.held_quota,
        'overdraft_limit', o.overdraft_limit,
        'available_quota', CASE o.billing_type
            WHEN 'prepaid' THEN o.quota - o.held_quota
            ELSE o.quota + o.overdraft_limit - o.used_quota - o.held_quota END,
        'users_count', (SELECT count(*) FROM quota.users u WHERE u.org = o.id),
        'open_reservations', (SELECT count(*) FROM quota.reservations r
                              WHERE r.org = o.id AND r.status = 'held'),
        'created_at', o.created_at, 'updated_at', o.updated_at)
$$;

-- A reservation: every column but the stored outcome; a hold past its expiry that the worker has
-- not released yet already shows as 'expired' (settle and release refuse it).
CREATE FUNCTION quota._reservation_json(r quota.reservations) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT (to_jsonb(r) - 'outcome')
        || jsonb_build_object('status',
               CASE WHEN r.status = 'held' AND r.expires_at <= quota.now() THEN 'expired' ELSE r.status END)
$$;

-- The invariants of organizations and holds (SPEC 1.2, issue 11), read by quota.verify().
CREATE VIEW quota.reservation_problems AS
WITH org_sums AS (
    SELECT org_id, sum(quota_change) AS quota, sum(used_change) AS used, sum(held_change) AS held
    FROM quota.org_ledger GROUP BY org_id
), org_holds AS (
    SELECT org, sum(org_credits_held) AS held FROM quota.reservations
    WHERE status = 'held' AND org IS NOT NULL GROUP BY org
), user_holds AS (
    SELECT user_id, sum(user_credits_held) AS held FROM quota.reservations
    WHERE status = 'held' GROUP BY user_id
), user_sums AS (
    SELECT user_id, sum(held_change) AS held,
           sum((request ->> 'actual_credits')::bigint) FILTER (WHERE transaction_type = 'settle') AS used,
           count(*) FILTER (WHERE transaction_type = 'settle') AS requests
    FROM quota.ledger GROUP BY user_id
), ends AS (
    SELECT r.reservation_id, r.status,
           count(l.*) FILTER (WHERE l.transaction_type IN ('settle', 'release')) AS user_ends,
           count(o.*) AS org_ends
    FROM quota.reservations r
    LEFT JOIN quota.ledger l ON l.user_id = r.user_id AND l.transaction_type IN ('settle', 'release')
         AND (l.request ->> 'reservation_id')::bigint = r.reservation_id
    LEFT JOIN quota.org_ledger o ON o.org_id = r.org AND o.reservation_id = r.reservation_id
         AND o.entry_type IN ('settle', 'release', 'expire')
    GROUP BY r.reservation_id, r.status
)
SELECT 'org:' || o.id AS subject,
       format('quota %s <> org ledger sum %s', o.quota, coalesce(s.quota, 0)) AS problem
FROM quota.organizations o LEFT JOIN org_sums s ON s.org_id = o.id
WHERE o.quota <> coalesce(s.quota, 0)
UNION ALL
SELECT 'org:' || o.id, format('used_quota %s <> org ledger sum %s', o.used_quota, coalesce(s.used, 0))
FROM quota.organizations o LEFT JOIN org_sums s ON s.org_id = o.id
WHERE o.used_quota <> coalesce(s.used, 0)
UNION ALL
SELECT 'org:' || o.id, format('held_quota %s <> org ledger sum %s', o.held_quota, coalesce(s.held, 0))
FROM quota.organizations o LEFT JOIN org_sums s ON s.org_id = o.id
WHERE o.held_quota <> coalesce(s.held, 0)
UNION ALL
SELECT 'org:' || o.id, format('held_quota %s <> open holds %s', o.held_quota, coalesce(h.held, 0))
FROM quota.organizations o LEFT JOIN org_holds h ON h.org = o.id
WHERE o.held_quota <> coalesce(h.held, 0)
UNION ALL
SELECT 'org:' || o.id,
       format('used_quota %s is past quota %s + overdraft_limit %s', o.used_quota, o.quota, o.overdraft_limit)
FROM quota.organizations o
WHERE o.billing_type = 'postpaid' AND o.used_quota > o.quota + o.overdraft_limit
UNION ALL
SELECT 'user:' || w.user_id, format('held_credits %s <> open holds %s', w.held_credits, coalesce(h.held, 0))
FROM quota.wallets w LEFT JOIN user_holds h ON h.user_id = w.user_id
WHERE w.held_credits <> coalesce(h.held, 0)
UNION ALL
SELECT 'user:' || w.user_id, format('held_credits %s <> ledger sum %s', w.held_credits, coalesce(s.held, 0))
FROM quota.wallets w LEFT JOIN user_sums s ON s.user_id = w.user_id
WHERE w.held_credits <> coalesce(s.held, 0)
UNION ALL
SELECT 'user:' || w.user_id, format('held_credits %s is more than balance %s', w.held_credits, w.balance)
FROM quota.wallets w WHERE w.held_credits > w.balance OR w.held_credits < 0
UNION ALL
SELECT 'user:' || w.user_id, format('used_quota %s <> settled actual credits %s', w.used_quota, coalesce(s.used, 0))
FROM quota.wallets w LEFT JOIN user_sums s ON s.user_id = w.user_id
WHERE w.used_quota <> coalesce(s.used, 0)
UNION ALL
SELECT 'user:' || w.user_id, format('request_count %s <> settles %s', w.request_count, coalesce(s.requests, 0))
FROM quota.wallets w LEFT JOIN user_sums s ON s.user_id = w.user_id
WHERE w.request_count <> coalesce(s.requests, 0)
UNION ALL
SELECT 'reservation:' || e.reservation_id,
       format('status %s with %s user end(s) and %s org end(s)', e.status, e.user_ends, e.org_ends)
FROM ends e JOIN quota.reservations r USING (reservation_id)
-- (a deleted organization takes its ledger with it: its ended reservations have no org end left)
WHERE (e.status = 'held' AND (e.user_ends + e.org_ends) > 0)
   OR (e.status <> 'held' AND (e.user_ends <> 1 OR (e.org_ends <> 1 AND EXISTS
          (SELECT 1 FROM quota.organizations o WHERE o.id = r.org))));
