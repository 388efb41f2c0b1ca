-- The credit ledger as a DBA sees it: charge, replay, conflict, insufficient credits, refund.
\set VERBOSITY terse
BEGIN;
SELECT quota.set_exchange_rate(10000, 'pg_test') ->> 'new_base_rate' AS base_rate;
SELECT quota.create_plan('{"tier":"basic","name":"Basic","monthly_cost":9.99,"credits_included":100000,"multiplier":1.5,"purchase_rate":1.0}', 'pg_test') #- '{plan,created_at}' #- '{plan,updated_at}' AS plan;
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
-- a purchase needs a payment the payment side confirmed: none yet, so 23514 payment_required
SAVEPOINT s4;
SELECT * FROM quota.purchase('alice', 1.5, 'pm_card', 'purchase-1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s4;
SELECT payment_id, amount_usd, status FROM jsonb_to_record(quota.confirm_payment('pay-1', 'alice', 1.5, 'pm_card'))
    AS p (payment_id text, amount_usd float8, status text);
SELECT transaction_type, amount_usd, credits_added, purchase_rate FROM quota.purchase('alice', 1.5, 'pm_card', 'purchase-1');
-- the payment is used up: a second purchase of it is refused, a replay of the first is not
SELECT status, operation_id FROM quota.payments WHERE payment_id = 'pay-1';
SELECT credits_added, balance_after FROM quota.purchase('alice', 1.5, 'pm_card', 'purchase-1');
SAVEPOINT s5;
SELECT * FROM quota.purchase('alice', 1.5, 'pm_card', 'purchase-2', 'pay-1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s5;
SELECT * FROM quota.check_credits('alice', 100000);
SELECT * FROM quota.balance('alice');
SELECT e ->> 'type' AS type, (e ->> 'credits')::bigint AS credits,
       (e ->> 'balance_after')::bigint AS balance_after, e ->> 'operation_id' AS operation_id
  FROM jsonb_array_elements(quota.transactions('alice', 100) -> 'transactions') e;
SELECT quota.transactions('alice', 2, 0, 'refund') -> 'total' AS refunds;
-- Idempotency keys are scoped per user and caller: the same id is free for another user, and a
-- purchase id (the user's own scope) never blocks a service's charge with the same id.
SELECT quota.create_user('bert') ->> 'id' AS created;
SELECT credits_added FROM quota.bonus('bert', 1000, 'bonus-1');
SELECT user_id, credits_charged FROM quota.charge('bert', 0.0123, 'charge-1');
SELECT credits_charged FROM quota.charge('alice', 0.001, 'purchase-1');
SELECT user_id, scope, operation_id, transaction_type FROM quota.ledger
 WHERE operation_id IN ('charge-1', 'purchase-1') ORDER BY transaction_id;
-- A caller's own write to the wallet in the same statement does not turn a replay into a
-- credit (the statement reports whether it moved the wallet; nothing is inferred).
SELECT balance FROM quota.wallets WHERE user_id = 'bert';
WITH x AS (UPDATE quota.wallets SET updated_at = now() WHERE user_id = 'bert' RETURNING 1)
SELECT (quota.charge('bert', 0.0123, 'charge-1')).credits_charged FROM x;
SELECT balance FROM quota.wallets WHERE user_id = 'bert';
-- Ids that are blank, padded or hold invisible characters are refused.
SAVEPOINT s6;
SELECT * FROM quota.charge('bert', 0.001, '   ');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s6;
SELECT * FROM quota.charge('bert', 0.001, 'charge-1 ');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s6;
SELECT * FROM quota.charge('bert', 0.001, E'charge\u200b-1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s6;
SELECT * FROM quota.charge('bert', 0.001, E'charge\u202e-1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s6;
-- Bounds: a wallet cannot pass 1e18 credits (22003, by name, not "bigint out of range").
SELECT (quota.bonus('bert', 1000000000000000, 'big-' || g)).credits_added FROM generate_series(1, 3) g;
SELECT balance FROM quota.wallets WHERE user_id = 'bert';
UPDATE quota.wallets SET balance = 999999999999999999, total_earned = 999999999999999999 + total_spent
 WHERE user_id = 'bert';
SELECT * FROM quota.bonus('bert', 5, 'too-much');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s6;
SELECT * FROM quota.verify();
ROLLBACK;
