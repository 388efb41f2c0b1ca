-- Provider account pools (seed 002, SPEC 5): providers with per-provider limits, pooled upstream
-- accounts with encrypted credentials, concurrency leases, request logs, daily stats and alerts.
-- The rules (availability, windows, selection, alerts) are quota_core::pool's; src/pools.rs runs
-- them under row locks. Loaded after strategies.sql and outbox.sql (alerts use the outbox).

CREATE TABLE quota.providers (
    provider_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL CONSTRAINT providers_name_key UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    strategy    text NOT NULL DEFAULT 'least_used'
                CHECK (strategy IN ('least_used', 'round_robin', 'random', 'best')),
    active      boolean NOT NULL DEFAULT true,
    -- Per-provider limits, enforced per account (0 = unlimited; SPEC 5).
    rpm         bigint NOT NULL DEFAULT 0 CHECK (rpm >= 0),
    rph         bigint NOT NULL DEFAULT 0 CHECK (rph >= 0),
    rpd         bigint NOT NULL DEFAULT 0 CHECK (rpd >= 0),
    tpm         bigint NOT NULL DEFAULT 0 CHECK (tpm >= 0),
    tpd         bigint NOT NULL DEFAULT 0 CHECK (tpd >= 0),
    concurrent  bigint NOT NULL DEFAULT 0 CHECK (concurrent >= 0),
    -- round_robin's position (moved by each round_robin acquire).
    rr_cursor   bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE quota.providers IS
    'Upstream providers (seed 002): the default pick strategy and the limits every account of the provider obeys (0 = unlimited).';

-- One pooled upstream account. credentials is AES-256-GCM ciphertext (src/crypto.rs: version
-- byte, 12-byte nonce, ciphertext and tag; the account id is the associated data), with a key
-- that is not in the database (quota.credentials_key_file). The windows are fixed and aligned
-- to the UTC clock (minute, hour, day), as in Envoy's rate-limit service; the quota window is
-- rolling: period_s from last_reset.
CREATE TABLE quota.pool_accounts (
    account_id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider_id        uuid NOT NULL REFERENCES quota.providers (provider_id),
    user_id            text CHECK (length(user_id) BETWEEN 1 AND 255),
    name               text CHECK (length(name) BETWEEN 1 AND 100),
    credentials        bytea NOT NULL,
    quota_limit        bigint NOT NULL DEFAULT 0 CHECK (quota_limit >= 0),
    quota_used         bigint NOT NULL DEFAULT 0 CHECK (quota_used >= 0),
    quota_held         bigint NOT NULL DEFAULT 0 CHECK (quota_held >= 0),
    period_s           integer NOT NULL DEFAULT 86400 CHECK (period_s BETWEEN 60 AND 31536000),
    last_reset         timestamptz NOT NULL DEFAULT now(),
    active             boolean NOT NULL DEFAULT true,
    expires_at         timestamptz,
    in_flight          bigint NOT NULL DEFAULT 0 CHECK (in_flight >= 0),
    minute_start       timestamptz NOT NULL DEFAULT 'epoch',
    minute_requests    bigint NOT NULL DEFAULT 0,
    minute_tokens      bigint NOT NULL DEFAULT 0,
    hour_start         timestamptz NOT NULL DEFAULT 'epoch',
    hour_requests      bigint NOT NULL DEFAULT 0,
    day_start          timestamptz NOT NULL DEFAULT 'epoch',
    day_requests       bigint NOT NULL DEFAULT 0,
    day_tokens         bigint NOT NULL DEFAULT 0,
    request_count      bigint NOT NULL DEFAULT 0,
    success_count      bigint NOT NULL DEFAULT 0,
    error_count        bigint NOT NULL DEFAULT 0,
    -- The last_reset of the window in which a warning / exhausted alert was raised (once each).
    warned_reset       timestamptz,
    exhausted_reset    timestamptz,
    last_used_at       timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 70);
CREATE INDEX pool_accounts_provider_idx ON quota.pool_accounts (provider_id);
CREATE INDEX pool_accounts_used_idx ON quota.pool_accounts (last_reset) WHERE quota_used > 0;
COMMENT ON TABLE quota.pool_accounts IS
    'Pooled upstream accounts (seed 002): encrypted credentials (never returned by reads), quota per rolling period, fixed rate-limit windows, in-flight leases.';

-- A concurrency lease: taken by pool_acquire, ended by pool_release or, if never released, by
-- expiry (the worker, or an acquire that finds the account at its concurrency limit).
CREATE TABLE quota.pool_leases (
    lease_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    account_id    uuid NOT NULL REFERENCES quota.pool_accounts (account_id) ON DELETE CASCADE,
    provider_id   uuid NOT NULL,
    tokens_needed bigint NOT NULL CHECK (tokens_needed >= 0),
    model         text,
    user_id       text,
    status        text NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'released', 'expired')),
    minute_start  timestamptz NOT NULL,
    day_start     timestamptz NOT NULL,
    acquired_at   timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz
);
CREATE INDEX pool_leases_held_idx ON quota.pool_leases (expires_at) WHERE status = 'held';
CREATE INDEX pool_leases_account_idx ON quota.pool_leases (account_id) WHERE status = 'held';
CREATE INDEX pool_leases_ended_idx ON quota.pool_leases (ended_at) WHERE status <> 'held';

-- Every request made through the pool (seed 002's tracker), written by pool_release or
-- pool_track. Kept quota.log_retention days (the worker deletes older rows in batches).
CREATE TABLE quota.pool_request_logs (
    log_id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lease_id       uuid CONSTRAINT pool_request_logs_lease_key UNIQUE,
    provider_id    uuid NOT NULL,
    account_id     uuid,
    model          text,
    user_id        text,
    method         text,
    endpoint       text,
    status_code    integer NOT NULL CHECK (status_code BETWEEN 100 AND 599),
    latency_ms     bigint NOT NULL DEFAULT 0 CHECK (latency_ms >= 0),
    input_tokens   bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens  bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    success        boolean NOT NULL,
    error          text,
    estimated_cost numeric NOT NULL DEFAULT 0 CHECK (estimated_cost >= 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pool_request_logs_time_idx ON quota.pool_request_logs (created_at);
CREATE INDEX pool_request_logs_provider_idx ON quota.pool_request_logs (provider_id, created_at);
CREATE INDEX pool_request_logs_user_idx ON quota.pool_request_logs (user_id, created_at) WHERE user_id IS NOT NULL;
CREATE INDEX pool_request_logs_account_idx ON quota.pool_request_logs (account_id, created_at);

-- Daily aggregates per provider and model, recomputed by the background worker for the days
-- that still have logs; kept after the logs are gone.
CREATE TABLE quota.pool_daily_stats (
    day            date NOT NULL,
    provider_id    uuid NOT NULL,
    model          text NOT NULL DEFAULT '',
    requests       bigint NOT NULL,
    successes      bigint NOT NULL,
    failures       bigint NOT NULL,
    input_tokens   bigint NOT NULL,
    output_tokens  bigint NOT NULL,
    estimated_cost numeric NOT NULL,
    latency_ms_sum bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, provider_id, model)
);

-- Monotonic counters for /metrics that are not recounted from rows that retention deletes:
-- refusals per provider and limit type, requests per provider and outcome.
CREATE TABLE quota.pool_counters (
    provider_id uuid NOT NULL,
    name        text NOT NULL,
    label       text NOT NULL,
    value       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (provider_id, name, label)
);

-- Alerts (SPEC 5): a warning when an account's quota_used crosses quota.warning_threshold of its
-- limit (once per window), exhausted when an acquire refuses it for quota (once per window).
-- Each is a row, a NOTIFY on quota_alerts, and an outbox row the sidecar delivers to webhooks.
CREATE TABLE quota.pool_alerts (
    alert_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text NOT NULL CHECK (kind IN ('warning', 'exhausted')),
    account_id      uuid NOT NULL,
    provider_id     uuid NOT NULL,
    quota_used      bigint NOT NULL,
    quota_limit     bigint NOT NULL,
    usage_percent   double precision NOT NULL,
    threshold       double precision NOT NULL,
    window_start    timestamptz NOT NULL,
    delivery_status text NOT NULL DEFAULT 'pending' CHECK (delivery_status IN ('pending', 'delivered', 'failed')),
    delivered_at    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pool_alerts_account_idx ON quota.pool_alerts (account_id, created_at);
CREATE INDEX pool_alerts_time_idx ON quota.pool_alerts (created_at);

-- The outbox carries alerts too (one outbox, one relay): kind 'alert' rows name an alert.
ALTER TABLE quota.outbox
    ADD COLUMN kind text NOT NULL DEFAULT 'recharge' CHECK (kind IN ('recharge', 'alert')),
    ADD COLUMN alert_id bigint CONSTRAINT outbox_alert_key UNIQUE REFERENCES quota.pool_alerts (alert_id) ON DELETE CASCADE,
    ALTER COLUMN execution_id DROP NOT NULL,
    ALTER COLUMN consumer DROP NOT NULL,
    ALTER COLUMN value DROP NOT NULL,
    ADD CONSTRAINT outbox_kind_shape CHECK (
        (kind = 'recharge' AND execution_id IS NOT NULL AND consumer IS NOT NULL AND value IS NOT NULL)
        OR (kind = 'alert' AND alert_id IS NOT NULL AND execution_id IS NULL));

-- What quota.verify() checks of the pools: each account's in_flight and quota_held equal its
-- held leases (count, tokens), and every request log of a lease names a lease that ended.
CREATE VIEW quota.pool_problems AS
SELECT 'pool_account:' || a.account_id AS subject,
       format('in_flight %s / quota_held %s <> held leases %s / %s', a.in_flight, a.quota_held,
              coalesce(l.n, 0), coalesce(l.tokens, 0)) AS problem
FROM quota.pool_accounts a
LEFT JOIN (SELECT account_id, count(*) AS n, sum(tokens_needed) AS tokens FROM quota.pool_leases
           WHERE status = 'held' GROUP BY account_id) l ON l.account_id = a.account_id
WHERE a.in_flight <> coalesce(l.n, 0) OR a.quota_held <> coalesce(l.tokens, 0)
UNION ALL
SELECT 'pool_lease:' || r.lease_id, 'a request log names a lease that is still held'
FROM quota.pool_request_logs r JOIN quota.pool_leases l ON l.lease_id = r.lease_id
WHERE l.status = 'held';

SELECT pg_catalog.pg_extension_config_dump('quota.providers', '');
SELECT pg_catalog.pg_extension_config_dump('quota.pool_accounts', '');
SELECT pg_catalog.pg_extension_config_dump('quota.pool_leases', '');
SELECT pg_catalog.pg_extension_config_dump('quota.pool_request_logs', '');
SELECT pg_catalog.pg_extension_config_dump('quota.pool_daily_stats', '');
SELECT pg_catalog.pg_extension_config_dump('quota.pool_counters', '');
SELECT pg_catalog.pg_extension_config_dump('quota.pool_alerts', '');

-- JSON shapes (no credentials, ever).
CREATE FUNCTION quota._provider_json(p quota.providers) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT jsonb_build_object(
        'provider_id', p.provider_id, 'name', p.name, 'strategy', p.strategy, 'active', p.active,
        'limits', jsonb_strip_nulls(jsonb_build_object(
            'rpm', nullif(p.rpm, 0), 'rph', nullif(p.rph, 0), 'rpd', nullif(p.rpd, 0),
            'tpm', nullif(p.tpm, 0), 'tpd', nullif(p.tpd, 0), 'concurrent', nullif(p.concurrent, 0))),
        'accounts', (SELECT count(*) FROM quota.pool_accounts a WHERE a.provider_id = p.provider_id),
        'created_at', p.created_at, 'updated_at', p.updated_at)
$$;

CREATE FUNCTION quota._pool_account_json(a quota.pool_accounts) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT jsonb_build_object(
        'account_id', a.account_id, 'provider_id', a.provider_id, 'user_id', a.user_id, 'name', a.name,
        'has_credentials', true,
        'quota_limit', a.quota_limit, 'quota_used', a.quota_used, 'quota_held', a.quota_held,
        'remaining', CASE WHEN a.quota_limit > 0 THEN greatest(a.quota_limit - a.quota_used - a.quota_held, 0) END,
        'usage_percent', CASE WHEN a.quota_limit > 0 THEN round(100.0 * a.quota_used / a.quota_limit, 2) ELSE 0 END,
        'period_s', a.period_s, 'last_reset', a.last_reset,
        'reset_at', a.last_reset + make_interval(secs => a.period_s),
        'active', a.active, 'expires_at', a.expires_at, 'in_flight', a.in_flight,
        'request_count', a.request_count, 'success_count', a.success_count, 'error_count', a.error_count,
        'last_used_at', a.last_used_at, 'created_at', a.created_at, 'updated_at', a.updated_at)
$$;

CREATE FUNCTION quota._pool_alert_json(al quota.pool_alerts) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT jsonb_build_object(
        'alert_id', al.alert_id, 'kind', al.kind, 'account_id', al.account_id,
        'provider_id', al.provider_id, 'quota_used', al.quota_used, 'quota_limit', al.quota_limit,
        'usage_percent', al.usage_percent, 'threshold', al.threshold, 'window_start', al.window_start,
        'created_at', al.created_at, 'delivery_status', al.delivery_status,
        'delivered_at', al.delivered_at, 'last_error', al.last_error)
$$;

-- Raises an alert: the row, the outbox row for the webhooks, NOTIFY on quota_alerts (payload:
-- the alert JSON) and on quota_outbox (wakes the relay).
CREATE FUNCTION quota._raise_pool_alert(kind text, account_id uuid, threshold double precision) RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    a quota.pool_accounts;
    al quota.pool_alerts;
BEGIN
    SELECT * INTO a FROM quota.pool_accounts p WHERE p.account_id = _raise_pool_alert.account_id;
    INSERT INTO quota.pool_alerts (kind, account_id, provider_id, quota_used, quota_limit, usage_percent,
                                   threshold, window_start)
    VALUES (kind, a.account_id, a.provider_id, a.quota_used, a.quota_limit,
            CASE WHEN a.quota_limit > 0 THEN round(100.0 * a.quota_used / a.quota_limit, 2) ELSE 0 END,
            threshold, a.last_reset)
    RETURNING * INTO al;
    INSERT INTO quota.outbox (kind, alert_id) VALUES ('alert', al.alert_id);
    PERFORM pg_notify('quota_alerts', quota._pool_alert_json(al)::text);
    NOTIFY quota_outbox;
    INSERT INTO quota.pool_counters (provider_id, name, label, value)
    VALUES (a.provider_id, 'alerts', kind, 1)
    ON CONFLICT (provider_id, name, label) DO UPDATE SET value = pool_counters.value + 1;
    RETURN al.alert_id;
END
$$;

CREATE FUNCTION quota._count_pool(provider_id uuid, name text, label text) RETURNS void
LANGUAGE sql VOLATILE SET search_path = pg_catalog, quota, pg_temp AS $$
    INSERT INTO quota.pool_counters AS c (provider_id, name, label, value) VALUES ($1, $2, $3, 1)
    ON CONFLICT (provider_id, name, label) DO UPDATE SET value = c.value + 1
$$;

CREATE FUNCTION quota._provider_row(provider_id uuid) RETURNS quota.providers
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    p quota.providers;
BEGIN
    SELECT * INTO p FROM quota.providers x WHERE x.provider_id = _provider_row.provider_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'provider % not found', coalesce(provider_id::text, 'NULL')
            USING ERRCODE = 'P0002',
                  DETAIL = jsonb_build_object('error', 'not_found', 'provider_id', provider_id)::text;
    END IF;
    RETURN p;
END
$$;

CREATE FUNCTION quota._pool_account_row(account_id uuid) RETURNS quota.pool_accounts
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    a quota.pool_accounts;
BEGIN
    SELECT * INTO a FROM quota.pool_accounts x WHERE x.account_id = _pool_account_row.account_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pool account % not found', coalesce(account_id::text, 'NULL')
            USING ERRCODE = 'P0002',
                  DETAIL = jsonb_build_object('error', 'not_found', 'account_id', account_id)::text;
    END IF;
    RETURN a;
END
$$;

-- Reads.
CREATE FUNCTION quota.get_provider(provider_id uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT quota._provider_json(quota._provider_row(provider_id))
$$;

CREATE FUNCTION quota.list_providers() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT jsonb_build_object(
        'providers', coalesce(jsonb_agg(quota._provider_json(p) ORDER BY p.name), '[]'::jsonb),
        'total', count(*))
    FROM quota.providers p
$$;

CREATE FUNCTION quota.get_pool_account(account_id uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT quota._pool_account_json(quota._pool_account_row(account_id))
$$;

CREATE FUNCTION quota.list_pool_accounts(provider_id uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT jsonb_build_object(
        'accounts', coalesce(jsonb_agg(quota._pool_account_json(a) ORDER BY a.created_at, a.account_id), '[]'::jsonb),
        'total', count(*))
    FROM quota.pool_accounts a
    WHERE a.provider_id = (quota._provider_row(list_pool_accounts.provider_id)).provider_id
$$;

CREATE FUNCTION quota.list_pool_alerts(account_id uuid DEFAULT NULL, since timestamptz DEFAULT NULL,
                                       max_rows integer DEFAULT 100) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    result jsonb;
BEGIN
    IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'max_rows must be between 1 and 1000, got %', coalesce(max_rows::text, 'NULL')
            USING ERRCODE = '22023',
                  DETAIL = jsonb_build_object('error', 'invalid_parameter', 'field', 'limit')::text;
    END IF;
    SELECT jsonb_build_object('alerts', coalesce(jsonb_agg(quota._pool_alert_json(x) ORDER BY x.alert_id DESC), '[]'::jsonb),
                              'total', count(*))
      INTO result
      FROM (SELECT * FROM quota.pool_alerts al
             WHERE (list_pool_alerts.account_id IS NULL OR al.account_id = list_pool_alerts.account_id)
               AND (since IS NULL OR al.created_at >= since)
             ORDER BY al.alert_id DESC LIMIT max_rows) x;
    RETURN result;
END
$$;

-- Usage over request logs: totals, success rate, tokens, cost, average latency.
CREATE FUNCTION quota._usage(user_id text, provider_id uuid, from_at timestamptz, to_at timestamptz) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT jsonb_build_object(
        'from', from_at, 'to', to_at,
        'total_requests', count(*),
        'successful_requests', count(*) FILTER (WHERE l.success),
        'failed_requests', count(*) FILTER (WHERE NOT l.success),
        'success_rate', CASE WHEN count(*) > 0 THEN round(count(*) FILTER (WHERE l.success)::numeric / count(*), 4) ELSE 0 END,
        'input_tokens', coalesce(sum(l.input_tokens), 0),
        'output_tokens', coalesce(sum(l.output_tokens), 0),
        'total_tokens', coalesce(sum(l.input_tokens + l.output_tokens), 0),
        'estimated_cost', coalesce(sum(l.estimated_cost), 0),
        'avg_latency_ms', coalesce(round(avg(l.latency_ms), 2), 0))
    FROM quota.pool_request_logs l
    WHERE ($1 IS NULL OR l.user_id = $1) AND ($2 IS NULL OR l.provider_id = $2)
      AND l.created_at >= $3 AND l.created_at < $4
$$;

-- A statistics period [from, to): `to` defaults to now (quota.now(), plus 1 us so a request
-- logged at this instant counts), `from` to 30 days before `to`; from after to is 22023.
CREATE FUNCTION quota._period(from_at timestamptz, to_at timestamptz) RETURNS timestamptz[]
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    t timestamptz := coalesce(to_at, quota.now() + interval '1 microsecond');
    f timestamptz := coalesce(from_at, t - interval '30 days');
BEGIN
    IF f > t THEN
        RAISE EXCEPTION 'from (%) must be at or before to (%)', f, t
            USING ERRCODE = '22023',
                  DETAIL = jsonb_build_object('error', 'invalid_parameter', 'field', 'from')::text;
    END IF;
    RETURN ARRAY[f, t];
END
$$;

CREATE FUNCTION quota.usage_stats(user_id text, from_at timestamptz DEFAULT NULL,
                                  to_at timestamptz DEFAULT NULL) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT jsonb_build_object('user_id', user_id) || quota._usage(user_id, NULL, p[1], p[2])
    FROM quota._period(from_at, to_at) p
$$;

-- The database's counters and gauges for /metrics (the DBA can query them too).
CREATE FUNCTION quota.metrics()
RETURNS TABLE (name text, kind text, help text, labels jsonb, value double precision)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT 'quota_usage_percent', 'gauge', 'Quota used by a pool account in its current period, percent of its limit (0 when unlimited).',
           jsonb_build_object('account_id', a.account_id::text, 'provider_id', a.provider_id::text),
           CASE WHEN a.quota_limit > 0 THEN 100.0 * a.quota_used / a.quota_limit ELSE 0 END
      FROM quota.pool_accounts a
    UNION ALL
    SELECT 'quota_pool_in_flight', 'gauge', 'Open concurrency leases of a pool account.',
           jsonb_build_object('account_id', a.account_id::text, 'provider_id', a.provider_id::text), a.in_flight
      FROM quota.pool_accounts a
    UNION ALL
    SELECT 'rate_limit_hits_total', 'counter', 'Pool admissions refused, by provider and limit type (quota for the account quota).',
           jsonb_build_object('provider_id', c.provider_id::text, 'limit_type', c.label), c.value
      FROM quota.pool_counters c WHERE c.name = 'refused'
    UNION ALL
    SELECT 'quota_pool_requests_total', 'counter', 'Requests recorded through the pool, by provider and outcome.',
           jsonb_build_object('provider_id', c.provider_id::text, 'success', c.label), c.value
      FROM quota.pool_counters c WHERE c.name = 'requests'
    UNION ALL
    SELECT 'quota_pool_alerts_total', 'counter', 'Pool alerts raised, by kind.',
           jsonb_build_object('kind', c.label), sum(c.value)
      FROM quota.pool_counters c WHERE c.name = 'alerts' GROUP BY c.label
    UNION ALL
    SELECT 'quota_ledger_entries_total', 'counter', 'Ledger entries (charges, additions, refunds, holds...), by kind.',
           jsonb_build_object('kind', l.transaction_type), count(*)
      FROM quota.ledger l GROUP BY l.transaction_type
    UNION ALL
    SELECT 'quota_reservations_total', 'counter', 'Reservations, by status.',
           jsonb_build_object('status', r.status), count(*)
      FROM quota.reservations r GROUP BY r.status
    UNION ALL
    SELECT 'quota_token_consumptions_total', 'counter', 'Count-token verifications that consumed quota.',
           '{}'::jsonb, (SELECT count(*) FROM quota.token_logs t WHERE t.kind = 'consume')
    UNION ALL
    SELECT 'quota_token_verifications_total', 'counter', 'Access-token verifications since the server started (SQL and REST), by outcome.',
           jsonb_build_object('outcome', v.outcome), v.count
      FROM quota.token_verifications() v
    UNION ALL
    SELECT 'quota_strategy_executions_total', 'counter', 'Recharge strategy executions, by status.',
           jsonb_build_object('status', e.status), count(*)
      FROM quota.executions e GROUP BY e.status
    UNION ALL
    SELECT 'quota_outbox_backlog', 'gauge', 'Outbox rows waiting for the relay, by kind.',
           jsonb_build_object('kind', k.kind), (SELECT count(*) FROM quota.outbox o WHERE o.kind = k.kind)
      FROM (VALUES ('recharge'), ('alert')) k (kind)
$$;
