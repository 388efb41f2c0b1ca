-- The scan's baseline: the same writes as quota.scan() does for one strategy (executions, wallet
-- credits, ledger rows, outbox rows), written by hand with the condition as a literal WHERE
-- clause. :sid is a strategy id of its own per run, so each run recharges the same users.
\set ON_ERROR_STOP on
WITH cand AS (
    SELECT u.id AS user_id, (w.balance <= 1000000000000000000 - 10 AND w.total_earned <= 9000000000000000000 - 10) AS fits
    FROM quota.users u JOIN quota.wallets w ON w.user_id = u.id
    WHERE u.vip >= 1 AND u.github_star @> ARRAY['zgsm']
      AND NOT EXISTS (SELECT 1 FROM quota.executions e
                      WHERE e.strategy_id = :sid AND e.user_id = u.id AND e.fire_key = '-infinity')),
ex AS (
    INSERT INTO quota.executions (strategy_id, strategy_name, user_id, batch_number, fire_key, amount, status, last_error)
    SELECT :sid, 'baseline', cand.user_id, '20300101000000', '-infinity', 10,
           CASE WHEN cand.fits THEN 'pending' ELSE 'skipped' END, CASE WHEN NOT cand.fits THEN 'limit' END
    FROM cand
    ON CONFLICT ON CONSTRAINT executions_once_key DO NOTHING
    RETURNING id, user_id, status),
wal AS (
    UPDATE quota.wallets w SET balance = w.balance + 10, total_earned = w.total_earned + 10, updated_at = now()
      FROM ex WHERE w.user_id = ex.user_id AND ex.status <> 'skipped'
    RETURNING w.user_id, w.balance),
led AS (
    INSERT INTO quota.ledger (operation_id, user_id, scope, transaction_type, credits, balance_before,
                              balance_after, description, metadata, request)
    SELECT 'baseline:' || ex.id, ex.user_id, 'system', 'recharge', 10, wal.balance - 10, wal.balance, 'baseline',
           jsonb_build_object('strategy_id', :sid, 'execution_id', ex.id),
           jsonb_build_object('strategy_id', :sid, 'user_id', ex.user_id)
    FROM ex JOIN wal ON wal.user_id = ex.user_id
    RETURNING 1),
ob AS (
    INSERT INTO quota.outbox (execution_id, consumer, value)
    SELECT ex.id, ex.user_id, 10 FROM ex WHERE ex.status <> 'skipped' RETURNING 1)
SELECT (SELECT count(*) FROM ex) AS recharged;
