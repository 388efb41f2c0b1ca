-- The outbox protocol between the database and the sidecar's AiGateway relay (SPEC 6.5).
-- Claimed rows are leased (next_attempt_at moves past the lease), so several sidecars never
-- deliver one row at once, and a sidecar that dies mid-delivery leaves its rows to be retried
-- when the lease ends.

CREATE FUNCTION quota.outbox_claim(batch integer DEFAULT 100, lease_s integer DEFAULT 60)
RETURNS TABLE (outbox_id bigint, execution_id bigint, consumer text, value bigint, attempts integer,
               kind text, payload jsonb)
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
        RETURNING o.id, o.execution_id, o.consumer, o.value, o.attempts, o.kind, o.alert_id),
    counted AS (
        UPDATE quota.executions e SET attempts = e.attempts + 1, update_time = now()
          FROM claimed WHERE e.id = claimed.execution_id
        RETURNING e.id)
    SELECT c.id, c.execution_id, c.consumer, c.value, c.attempts, c.kind,
           (SELECT quota._pool_alert_json(al) FROM quota.pool_alerts al WHERE al.alert_id = c.alert_id)
    FROM claimed c
    WHERE c.kind = 'alert' OR EXISTS (SELECT 1 FROM counted WHERE counted.id = c.execution_id)
    ORDER BY c.id
$$;

-- Marks the alert of an alert row (delivered, pending with the error, failed); false when the
-- row is not an alert's.
CREATE FUNCTION quota._outbox_alert(outbox_id bigint, status text, error text, remove boolean) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    alert bigint;
BEGIN
    SELECT o.alert_id INTO alert FROM quota.outbox o WHERE o.id = outbox_id AND o.kind = 'alert';
    IF alert IS NULL THEN
        RETURN false;
    END IF;
    UPDATE quota.pool_alerts
       SET delivery_status = status, last_error = left(error, 1000),
           delivered_at = CASE WHEN status = 'delivered' THEN now() END
     WHERE alert_id = alert;
    IF remove THEN
        DELETE FROM quota.outbox WHERE id = outbox_id;
    END IF;
    RETURN true;
END
$$;

CREATE FUNCTION quota.outbox_complete(outbox_id bigint) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    execution bigint;
BEGIN
    IF quota._outbox_alert(outbox_id, 'delivered', NULL, true) THEN
        RETURN true;
    END IF;
    DELETE FROM quota.outbox WHERE id = outbox_id RETURNING execution_id INTO execution;
    UPDATE quota.executions e SET status = 'completed', last_error = NULL, update_time = now()
     WHERE e.id = execution;
    RETURN FOUND;
END
$$;

CREATE FUNCTION quota.outbox_retry(outbox_id bigint, error text, retry_in_ms integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    execution bigint;
BEGIN
    UPDATE quota.outbox
       SET next_attempt_at = now() + make_interval(secs => greatest(retry_in_ms, 0) / 1000.0)
     WHERE id = outbox_id
    RETURNING execution_id INTO execution;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF quota._outbox_alert(outbox_id, 'pending', error, false) THEN
        RETURN true;
    END IF;
    UPDATE quota.executions e SET last_error = left(error, 1000), update_time = now() WHERE e.id = execution;
    RETURN FOUND;
END
$$;

CREATE FUNCTION quota.outbox_fail(outbox_id bigint, error text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    execution bigint;
BEGIN
    IF quota._outbox_alert(outbox_id, 'failed', error, true) THEN
        RETURN true;
    END IF;
    DELETE FROM quota.outbox WHERE id = outbox_id RETURNING execution_id INTO execution;
    UPDATE quota.executions e SET status = 'failed', last_error = left(error, 1000), update_time = now()
     WHERE e.id = execution;
    RETURN FOUND;
END
$$;

-- The delivery's outcome is unknown (it timed out or the connection broke after the request was
-- sent) and the gateway does not deduplicate by Idempotency-Key: sending it again could apply
-- the delta twice, so the execution waits for an operator (retry_execution or confirm_execution).
-- (Alerts are retried instead: a webhook deduplicates by the alert's Idempotency-Key.)
CREATE FUNCTION quota.outbox_unknown(outbox_id bigint, error text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
DECLARE
    execution bigint;
BEGIN
    IF quota._outbox_alert(outbox_id, 'pending', error, false) THEN
        RETURN true;
    END IF;
    DELETE FROM quota.outbox WHERE id = outbox_id RETURNING execution_id INTO execution;
    UPDATE quota.executions e SET status = 'unknown', last_error = left(error, 1000), update_time = now()
     WHERE e.id = execution;
    RETURN FOUND;
END
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

-- The relay's work at a glance (for /health): recharge rows queued, due now, executions waiting
-- for an operator (unknown) or given up (failed); alert rows queued, alerts given up, the last
-- alert delivered.
CREATE FUNCTION quota.relay_status(
    OUT backlog bigint, OUT due bigint, OUT unknown bigint, OUT failed bigint, OUT oldest_due_at timestamptz,
    OUT alert_backlog bigint, OUT alert_failed bigint, OUT alerts_last_delivered_at timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, quota, pg_temp AS $$
    SELECT (SELECT count(*) FROM quota.outbox WHERE kind = 'recharge'),
           (SELECT count(*) FROM quota.outbox WHERE kind = 'recharge' AND next_attempt_at <= now()),
           (SELECT count(*) FROM quota.executions WHERE status = 'unknown'),
           (SELECT count(*) FROM quota.executions WHERE status = 'failed'),
           (SELECT min(next_attempt_at) FROM quota.outbox WHERE next_attempt_at <= now()),
           (SELECT count(*) FROM quota.outbox WHERE kind = 'alert'),
           (SELECT count(*) FROM quota.pool_alerts WHERE delivery_status = 'failed'),
           (SELECT max(delivered_at) FROM quota.pool_alerts)
$$;

COMMENT ON FUNCTION quota.outbox_claim(integer, integer) IS
    'Relay: claims up to batch due outbox rows (FOR UPDATE SKIP LOCKED; kind recharge or alert, with the alert as payload) and leases them for lease_s seconds; attempts counts this one.';
COMMENT ON FUNCTION quota.outbox_complete(bigint) IS 'Relay: the gateway accepted the delta (the execution is completed), or the webhooks took the alert (delivered).';
COMMENT ON FUNCTION quota.outbox_retry(bigint, text, integer) IS 'Relay: a retryable failure; try again after retry_in_ms.';
COMMENT ON FUNCTION quota.outbox_fail(bigint, text) IS 'Relay: gave up; the execution is failed (its ledger credit stays).';
COMMENT ON FUNCTION quota.retry_execution(bigint) IS 'Queues a failed or unknown execution for delivery again.';
COMMENT ON FUNCTION quota.outbox_unknown(bigint, text) IS
    'Relay: the delivery''s outcome is unknown and the gateway does not deduplicate; the execution waits for an operator.';
COMMENT ON FUNCTION quota.confirm_execution(bigint) IS
    'An operator found an unknown execution''s delta applied at the gateway: the execution is completed.';
COMMENT ON FUNCTION quota.relay_status() IS
    'The relay''s work: recharge rows queued and due, executions unknown (waiting for an operator) and failed; alert rows queued, alerts failed, the last alert delivered.';
