-- pgbench script (b): the baseline, i.e. the bare SQL doing the same writes as quota.charge, in
-- one prepared statement (one round trip, one transaction, like (a)): the conditional wallet
-- UPDATE plus the ledger INSERT, with the same uniqueness check (the idempotency key
-- ledger_operation_key, (user_id, scope, operation_id), ON CONFLICT DO NOTHING).
-- It writes the same ledger row as CHARGE_SQL in extension/src/ledger.rs; keep the two in step
-- when the ledger table changes (columns: user_id, scope, operation_id, transaction_type, credits,
-- balance_before, balance_after, cost_usd, description, metadata, request NOT NULL).
-- What (a) does on top: validation, the function call (SPI), the price (quota.price_credits from
-- the wallet's multiplier and settings.base_rate, cached per backend), and the composite result
-- row. Same variables as charge.sql.
\set uid random(1, :nusers)
\set seq :seq + 1
WITH w AS (
    UPDATE quota.wallets
       SET balance = balance - 1, total_spent = total_spent + 1, updated_at = now()
     WHERE user_id = 'user_' || :uid AND balance - held_credits >= 1
    RETURNING user_id, balance)
INSERT INTO quota.ledger (operation_id, user_id, scope, transaction_type, credits, balance_before,
                          balance_after, cost_usd, description, metadata, request)
SELECT :run::text || '-b-' || :client_id || '-' || :seq, w.user_id, 'service', 'charge', -1, w.balance + 1,
       w.balance, 0.0001, NULL, NULL,
       jsonb_build_object('user_id', w.user_id, 'cost_usd', 0.0001::float8)
FROM w
ON CONFLICT ON CONSTRAINT ledger_operation_key DO NOTHING
RETURNING transaction_id, balance_before, balance_after;
