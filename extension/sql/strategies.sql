-- Recharge strategies (seed 000, SPEC 6): strategies, their executions, and the outbox the
-- sidecar drains to the AiGateway. Exactly once (SPEC 6.4): an execution is unique per
-- (strategy, user, fire_key), where fire_key is the cron fire time of a periodic strategy and
-- -infinity for a single one (at most one recharge per user, ever); the ledger credit, the
-- execution and the outbox row are written by one statement.

CREATE TABLE quota.strategies (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text NOT NULL CONSTRAINT strategies_name_key UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
    title             text NOT NULL DEFAULT '',
    type              text NOT NULL CHECK (type IN ('single', 'periodic')),
    amount            bigint NOT NULL CHECK (amount > 0),
    model             text NOT NULL DEFAULT '',
    periodic_expr     text NOT NULL DEFAULT '',
    condition         text NOT NULL,
    status            boolean NOT NULL DEFAULT true,
    max_exec_per_user integer NOT NULL DEFAULT 0 CHECK (max_exec_per_user >= 0),
    last_fire_time    timestamptz,
    -- The last ERROR a scan met with this strategy (the scan went on with the others); cleared
    -- by the next fire that succeeds.
    last_error        text,
    last_error_time   timestamptz,
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now(),
    CHECK ((type = 'periodic') = (periodic_expr <> ''))
);
COMMENT ON TABLE quota.strategies IS 'Recharge strategies: who (condition) gets how many credits (amount), once (single) or on a cron (periodic).';

-- Executions outlive their strategy (no foreign key): deleting a strategy keeps its history.
CREATE TABLE quota.executions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    strategy_id   bigint NOT NULL,
    strategy_name text NOT NULL,
    user_id       text NOT NULL REFERENCES quota.users (id),
    batch_number  text NOT NULL,
    fire_key      timestamptz NOT NULL,
    -- pending: credited, relay queued; completed: delivered (or no relay); failed: the relay gave
    -- up (credit kept, retryable); unknown: a delivery's outcome is unknown and the gateway does
    -- not deduplicate, so it waits for an operator (retry or confirm); skipped: matched but not
    -- credited, the balance would pass its limit.
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'completed', 'failed', 'unknown', 'skipped')),
    amount        bigint NOT NULL CHECK (amount > 0),
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT executions_once_key UNIQUE (strategy_id, user_id, fire_key)
);
CREATE INDEX executions_status_idx ON quota.executions (status) WHERE status <> 'completed';
COMMENT ON TABLE quota.executions IS
    'One recharge of one user by one strategy at one fire time: pending (credited, relay queued), completed, failed (relay gave up; the credit stays), unknown (delivery outcome unknown; an operator retries or confirms), skipped (not credited: balance limit).';

-- Deliveries to the AiGateway, drained by the sidecar (FOR UPDATE SKIP LOCKED).
CREATE TABLE quota.outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    execution_id    bigint NOT NULL CONSTRAINT outbox_execution_key UNIQUE REFERENCES quota.executions (id),
    consumer        text NOT NULL,
    value           bigint NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_due_idx ON quota.outbox (next_attempt_at);

SELECT pg_catalog.pg_extension_config_dump('quota.strategies', '');
SELECT pg_catalog.pg_extension_config_dump('quota.executions', '');
SELECT pg_catalog.pg_extension_config_dump('quota.outbox', '');

CREATE FUNCTION quota._strategy_json(s quota.strategies) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', s.id, 'name', s.name, 'title', s.title, 'type', s.type, 'amount', s.amount,
        'model', s.model, 'periodic_expr', s.periodic_expr, 'condition', s.condition,
        'status', s.status, 'max_exec_per_user', s.max_exec_per_user,
        'last_fire_time', s.last_fire_time, 'last_error', s.last_error, 'last_error_time', s.last_error_time,
        'create_time', s.create_time, 'update_time', s.update_time)
$$;

CREATE FUNCTION quota._execution_json(e quota.executions) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', e.id, 'strategy_id', e.strategy_id, 'strategy_name', e.strategy_name, 'user', e.user_id,
        'batch_number', e.batch_number, 'status', e.status, 'amount', e.amount,
        'attempts', e.attempts, 'last_error', e.last_error,
        'create_time', e.create_time, 'update_time', e.update_time)
$$;
