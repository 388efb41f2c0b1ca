-- The credit ledger as a DBA sees it: charge, replay, conflict, insufficient credits, refund.
\set VERBOSITY terse
BEGIN;
SELECT quota.set_exchange_rate(10000, 'pg_test') ->> 'base_rate' AS base_rate;
SELECT quota.create_plan('{"tier":"basic","name":"Basic","monthly_cost":9.99,"credits_included":100000,"multiplier":1.5,"purchase_rate":1.0}', 'pg_test') - 'created_at' - 'updated_at' AS plan;
SELECT quota.create_user('alice', '{"name":"Alice"}') ->> 'id' AS created;
SELECT success, previous_tier, subscription_tier, credits_added, balance_before, balance_after, operation_id
  FROM quota.update_subscription('alice', 'basic', 1000, 'sub-alice');
-- 0.0123 USD at multiplier 1.5 and base rate 10000: round_half_even(184.5) = 184
SELECT success, user_id, cost_usd, credits_charged, balance_before, balance_after, operation_id
  FROM quota.charge('alice', 0.0123, 'charge-1', 'a chat completion', '{"model":"gpt"}');
-- the same call again is a replay: same row, charged once
SELECT success, user_id, cost_usd, credits_charged, balance_before, balance_after, operation_id
  FROM quota.charge('alice', 0.0123, 'charge-1');
SELECT balance, total_earned, total_spent FROM quota.wallets WHERE user_id = 'alice';
-- same operation_id with another amount: idempotency conflict
SAVEPOINT s1;
SELECT * FROM quota.charge('alice', 0.5, 'charge-1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s1;
-- more than the balance: refused, nothing recorded
SAVEPOINT s2;
SELECT * FROM quota.charge('alice', 1, 'charge-2');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s2;
SELECT count(*) AS ledger_rows_for_charge_2 FROM quota.ledger WHERE operation_id = 'charge-2';
-- top up, and the same operation_id now succeeds
SELECT transaction_type, amount_usd, credits_added, balance_after FROM quota.add('alice', 2, 'add-1');
SELECT credits_charged, balance_before, balance_after FROM quota.charge('alice', 1, 'charge-2');
-- refunds: partial, the rest, then nothing is left
SELECT transaction_type, credits_added, balance_after FROM quota.refund('alice', 'charge-1', 'refund-1', 84);
SELECT transaction_type, credits_added, balance_after FROM quota.refund('alice', 'charge-1', 'refund-2');
SAVEPOINT s3;
SELECT * FROM quota.refund('alice', 'charge-1', 'refund-3');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s3;
SELECT transaction_type, credits_added, balance_after FROM quota.bonus('alice', 50, 'bonus-1', 'welcome');
SELECT transaction_type, amount_usd, credits_added FROM quota.purchase('alice', 1.5, 'pm_card', 'purchase-1');
SELECT * FROM quota.check_credits('alice', 100000);
SELECT * FROM quota.balance('alice');
SELECT e ->> 'transaction_type' AS transaction_type, (e ->> 'credits')::bigint AS credits,
       (e ->> 'balance_after')::bigint AS balance_after, e ->> 'operation_id' AS operation_id
  FROM jsonb_array_elements(quota.transactions('alice', 100) -> 'transactions') e;
SELECT quota.transactions('alice', 2, 0, 'refund') -> 'total' AS refunds;
SELECT * FROM quota.verify();
ROLLBACK;
