-- The outbox protocol between the database and the sidecar's AiGateway relay (SPEC 6.5).
-- Claimed rows are leased (next_attempt_at moves past the lease), so several sidecars never
-- deliver one row at once, and a sidecar that dies mid-delivery leaves its rows to be retried
-- when the lease ends.

CREATE FUNCTION quota.outbox_claim(batch integer DEFAULT 100, lease_s integer DEFAULT 60)
RETURNS TABLE (outbox_id bigint, execution_id bigint, consumer text, value bigint, attempts integer)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    WITH due AS (
        SELECT o.id FROM quota.outbox o
        WHERE o.next_attempt_at <= now()
        ORDER BY o.next_attempt_at, o.id
        LIMIT least(greatest(batch, 1), 1000)
        FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE quota.outbox o
           SET attempts = o.attempts + 1,
               next_attempt_at = now() + make_interval(secs => greatest(lease_s, 1))
          FROM due WHERE o.id = due.id
        RETURNING o.id, o.execution_id, o.consumer, o.value, o.attempts),
    counted AS (
        UPDATE quota.executions e SET attempts = e.attempts + 1, update_time = now()
          FROM claimed WHERE e.id = claimed.execution_id
        RETURNING e.id)
    SELECT c.id, c.execution_id, c.consumer, c.value, c.attempts
    FROM claimed c JOIN counted ON counted.id = c.execution_id
    ORDER BY c.id
$$;

CREATE FUNCTION quota.outbox_complete(outbox_id bigint) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    WITH gone AS (DELETE FROM quota.outbox WHERE id = outbox_id RETURNING execution_id),
    done AS (
        UPDATE quota.executions e SET status = 'completed', last_error = NULL, update_time = now()
          FROM gone WHERE e.id = gone.execution_id
        RETURNING e.id)
    SELECT EXISTS (SELECT 1 FROM done)
$$;

CREATE FUNCTION quota.outbox_retry(outbox_id bigint, error text, retry_in_ms integer) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    WITH later AS (
        UPDATE quota.outbox
           SET next_attempt_at = now() + make_interval(secs => greatest(retry_in_ms, 0) / 1000.0)
         WHERE id = outbox_id
        RETURNING execution_id),
    noted AS (
        UPDATE quota.executions e SET last_error = left(error, 1000), update_time = now()
          FROM later WHERE e.id = later.execution_id
        RETURNING e.id)
    SELECT EXISTS (SELECT 1 FROM noted)
$$;

CREATE FUNCTION quota.outbox_fail(outbox_id bigint, error text) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    WITH gone AS (DELETE FROM quota.outbox WHERE id = outbox_id RETURNING execution_id),
    failed AS (
        UPDATE quota.executions e SET status = 'failed', last_error = left(error, 1000), update_time = now()
          FROM gone WHERE e.id = gone.execution_id
        RETURNING e.id)
    SELECT EXISTS (SELECT 1 FROM failed)
$$;

-- The delivery's outcome is unknown (it timed out or the connection broke after the request was
-- sent) and the gateway does not deduplicate by Idempotency-Key: sending it again could apply
-- the delta twice, so the execution waits for an operator (retry_execution or confirm_execution).
CREATE FUNCTION quota.outbox_unknown(outbox_id bigint, error text) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    WITH gone AS (DELETE FROM quota.outbox WHERE id = outbox_id RETURNING execution_id),
    marked AS (
        UPDATE quota.executions e SET status = 'unknown', last_error = left(error, 1000), update_time = now()
          FROM gone WHERE e.id = gone.execution_id
        RETURNING e.id)
    SELECT EXISTS (SELECT 1 FROM marked)
$$;

CREATE FUNCTION quota._execution_row(execution_id bigint) RETURNS quota.executions
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    e quota.executions;
BEGIN
    SELECT * INTO e FROM quota.executions WHERE id = execution_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'execution % not found', execution_id
            USING ERRCODE = 'P0002',
                  DETAIL = jsonb_build_object('error', 'not_found', 'execution_id', execution_id)::text;
    END IF;
    RETURN e;
END
$$;

-- Queues a failed (or unknown) execution for delivery again.
CREATE FUNCTION quota.retry_execution(execution_id bigint) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    e quota.executions := quota._execution_row(execution_id);
BEGIN
    IF e.status NOT IN ('failed', 'unknown') THEN
        RAISE EXCEPTION 'execution % is %, only a failed or unknown execution can be retried', execution_id, e.status
            USING ERRCODE = '22023',
                  DETAIL = jsonb_build_object('error', 'invalid_parameter', 'execution_id', execution_id,
                                              'status', e.status)::text;
    END IF;
    UPDATE quota.executions SET status = 'pending', update_time = now() WHERE id = execution_id
    RETURNING * INTO e;
    INSERT INTO quota.outbox (execution_id, consumer, value) VALUES (e.id, e.user_id, e.amount);
    NOTIFY quota_outbox;
    RETURN quota._execution_json(e);
END
$$;

-- An operator checked the gateway and found the delta of an unknown execution applied.
CREATE FUNCTION quota.confirm_execution(execution_id bigint) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    e quota.executions := quota._execution_row(execution_id);
BEGIN
    IF e.status <> 'unknown' THEN
        RAISE EXCEPTION 'execution % is %, only an unknown execution can be confirmed', execution_id, e.status
            USING ERRCODE = '22023',
                  DETAIL = jsonb_build_object('error', 'invalid_parameter', 'execution_id', execution_id,
                                              'status', e.status)::text;
    END IF;
    UPDATE quota.executions
       SET status = 'completed', last_error = 'confirmed by an operator: ' || coalesce(last_error, ''),
           update_time = now()
     WHERE id = execution_id
    RETURNING * INTO e;
    RETURN quota._execution_json(e);
END
$$;

-- The relay's work at a glance (for /health): rows queued, due now, executions waiting for an
-- operator (unknown) or given up (failed).
CREATE FUNCTION quota.relay_status(
    OUT backlog bigint, OUT due bigint, OUT unknown bigint, OUT failed bigint, OUT oldest_due_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT (SELECT count(*) FROM quota.outbox),
           (SELECT count(*) FROM quota.outbox WHERE next_attempt_at <= now()),
           (SELECT count(*) FROM quota.executions WHERE status = 'unknown'),
           (SELECT count(*) FROM quota.executions WHERE status = 'failed'),
           (SELECT min(next_attempt_at) FROM quota.outbox WHERE next_attempt_at <= now())
$$;

COMMENT ON FUNCTION quota.outbox_claim(integer, integer) IS
    'Relay: claims up to batch due outbox rows (FOR UPDATE SKIP LOCKED) and leases them for lease_s seconds; attempts counts this one.';
COMMENT ON FUNCTION quota.outbox_complete(bigint) IS 'Relay: the gateway accepted the delta; the execution is completed.';
COMMENT ON FUNCTION quota.outbox_retry(bigint, text, integer) IS 'Relay: a retryable failure; try again after retry_in_ms.';
COMMENT ON FUNCTION quota.outbox_fail(bigint, text) IS 'Relay: gave up; the execution is failed (its ledger credit stays).';
COMMENT ON FUNCTION quota.retry_execution(bigint) IS 'Queues a failed or unknown execution for delivery again.';
COMMENT ON FUNCTION quota.outbox_unknown(bigint, text) IS
    'Relay: the delivery''s outcome is unknown and the gateway does not deduplicate; the execution waits for an operator.';
COMMENT ON FUNCTION quota.confirm_execution(bigint) IS
    'An operator found an unknown execution''s delta applied at the gateway: the execution is completed.';
COMMENT ON FUNCTION quota.relay_status() IS
    'The relay''s work: outbox rows queued and due, executions unknown (waiting for an operator) and failed.';
