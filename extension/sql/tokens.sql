-- Access tokens (seed 001, SPEC 4): time / count / hybrid quotas, key verification, exact rate
-- limits (the limiter's state is in shared memory, src/ratelimit.rs). Loaded after schema.sql.

-- The plain token (`flow_` + 64 hex from a CSPRNG) is shown once, when it is created; only its
-- SHA-256 is stored, so a copy of the database (a backup, a replica, a DBA's SELECT) holds no
-- usable token. Every API that names a token takes the token itself and hashes it.
CREATE TABLE quota.tokens (
    token_id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_sha256              bytea NOT NULL CONSTRAINT tokens_sha256_key UNIQUE,
    token_hint                text NOT NULL,
    ws_id                     text NOT NULL CHECK (length(ws_id) BETWEEN 1 AND 255),
    email                     text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    user_id                   text REFERENCES quota.users (id),
    quota_type                text NOT NULL DEFAULT 'time' CHECK (quota_type IN ('time', 'count', 'hybrid')),
    total_quota               bigint CHECK (total_quota >= 0),
    remaining_quota           bigint CHECK (remaining_quota >= 0),
    -- Credits held by open reservations made with this token (seed 003).
    held_quota                bigint NOT NULL DEFAULT 0 CHECK (held_quota >= 0),
    expires_at                timestamptz,
    operation                 text NOT NULL CHECK (operation IN ('add', 'set', 'unlimited')),
    active                    boolean NOT NULL DEFAULT true,
    unlimited                 boolean NOT NULL DEFAULT false,
    rate_limit_per_minute     integer CHECK (rate_limit_per_minute BETWEEN 1 AND 1000),
    rate_limit_burst          integer NOT NULL DEFAULT 10 CHECK (rate_limit_burst BETWEEN 1 AND 1000),
    rate_limit_window_seconds integer NOT NULL DEFAULT 60 CHECK (rate_limit_window_seconds BETWEEN 1 AND 86400),
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);
CREATE INDEX tokens_ws_email_idx ON quota.tokens (ws_id, email);
CREATE INDEX tokens_user_idx ON quota.tokens (user_id) WHERE user_id IS NOT NULL;
COMMENT ON TABLE quota.tokens IS
    'Access tokens (seed 001): only the SHA-256 of each token is stored; quota_type time checks expires_at, count remaining_quota, hybrid both.';

-- Every change of a token's quota: init (created), consume (a verification), refund, recharge
-- (an admin's quota_operation), update (other admin changes). A verification with a request_id
-- is recorded once: (token_id, request_id) is its idempotency key.
CREATE TABLE quota.token_logs (
    log_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_id        bigint NOT NULL REFERENCES quota.tokens (token_id),
    kind            text NOT NULL CHECK (kind IN ('init', 'consume', 'refund', 'recharge', 'update')),
    units           bigint,
    remaining_after bigint,
    total_after     bigint,
    request_id      text,
    detail          jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT token_logs_request_key UNIQUE (token_id, request_id)
);
CREATE INDEX token_logs_token_idx ON quota.token_logs (token_id, created_at DESC, log_id DESC);
COMMENT ON TABLE quota.token_logs IS
    'Quota history per token (init, consume, refund, recharge, update); (token_id, request_id) is the idempotency key of a verification.';

-- Each backend caches what a verification reads of a token (src/tokens.rs): a change of any of
-- those columns, by a function or a DBA's UPDATE, queues a relcache invalidation of the table
-- (the trigger function of quota.settings), which clears every backend's cache once it commits.
-- remaining_quota and held_quota are not cached (the count is taken by a conditional UPDATE).
CREATE TRIGGER tokens_changed
    AFTER INSERT OR DELETE OR UPDATE OF token_sha256, user_id, quota_type, expires_at, operation,
        active, unlimited, rate_limit_per_minute, rate_limit_burst, rate_limit_window_seconds
    ON quota.tokens FOR EACH ROW EXECUTE FUNCTION quota._settings_changed();
CREATE TRIGGER tokens_truncated
    AFTER TRUNCATE ON quota.tokens FOR EACH STATEMENT EXECUTE FUNCTION quota._settings_changed();
ALTER TABLE quota.tokens ENABLE ALWAYS TRIGGER tokens_changed;
ALTER TABLE quota.tokens ENABLE ALWAYS TRIGGER tokens_truncated;

SELECT pg_catalog.pg_extension_config_dump('quota.tokens', '');
SELECT pg_catalog.pg_extension_config_dump('quota.token_logs', '');

-- The seed's date format: 'YYYY-MM-DD HH:MM:SS', UTC.
CREATE FUNCTION quota._seed_time(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
$$;

-- A token as every admin answer shows it (never the token itself).
CREATE FUNCTION quota._token_json(t quota.tokens) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'access_token_hint', t.token_hint, 'ws_id', t.ws_id, 'email', t.email, 'user_id', t.user_id,
        'quota_type', t.quota_type, 'total_quota', t.total_quota, 'remaining_quota', t.remaining_quota,
        'consumed_quota', CASE WHEN t.total_quota IS NULL THEN NULL
                               ELSE greatest(t.total_quota - coalesce(t.remaining_quota, 0), 0) END,
        'held_quota', t.held_quota,
        'expires_at', quota._seed_time(t.expires_at), 'operation', t.operation, 'active', t.active,
        'unlimited', t.unlimited, 'rate_limit_per_minute', t.rate_limit_per_minute,
        'rate_limit_burst', t.rate_limit_burst, 'rate_limit_window_seconds', t.rate_limit_window_seconds,
        'created_at', quota._seed_time(t.created_at), 'updated_at', quota._seed_time(t.updated_at))
$$;

CREATE FUNCTION quota._token_log_json(l quota.token_logs) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', l.log_id, 'kind', l.kind, 'units', l.units, 'remaining_after', l.remaining_after,
        'total_after', l.total_after, 'request_id', l.request_id, 'detail', l.detail,
        'created_at', quota._seed_time(l.created_at))
$$;

-- The token invariants, read by quota.verify(): a count token's remaining never above its total,
-- holds equal the open reservations made with the token.
CREATE VIEW quota.token_problems AS
SELECT 'token:' || t.token_id AS subject,
       format('remaining_quota %s is more than total_quota %s', t.remaining_quota, t.total_quota) AS problem
FROM quota.tokens t WHERE t.remaining_quota > t.total_quota
UNION ALL
SELECT 'token:' || t.token_id, format('held_quota %s <> open holds %s', t.held_quota, coalesce(h.held, 0))
FROM quota.tokens t
LEFT JOIN (SELECT token_id, sum(token_credits_held) AS held FROM quota.reservations
           WHERE status = 'held' AND token_id IS NOT NULL GROUP BY token_id) h ON h.token_id = t.token_id
WHERE t.held_quota <> coalesce(h.held, 0)
UNION ALL
SELECT 'token:' || t.token_id, format('held_quota %s is more than remaining_quota %s', t.held_quota, t.remaining_quota)
FROM quota.tokens t WHERE t.held_quota > coalesce(t.remaining_quota, 0);
