-- pgbench script (b2): the same writes as an application would issue them without pg_quota: an
-- explicit transaction with the conditional wallet UPDATE, then the ledger INSERT (with the same
-- unique operation_id check), each a prepared statement and a round trip. Same variables as
-- charge.sql. (b) in baseline.sql is the stricter floor: both writes in one statement.
\set uid random(1, :nusers)
\set seq :seq + 1
BEGIN;
UPDATE quota.wallets
   SET balance = balance - 1, total_spent = total_spent + 1, updated_at = now()
 WHERE user_id = 'user_' || :uid AND balance - held_credits >= 1
RETURNING balance AS after \gset
INSERT INTO quota.ledger (operation_id, user_id, scope, transaction_type, credits, balance_before,
                          balance_after, cost_usd, description, metadata, request)
VALUES (:run::text || '-c-' || :client_id || '-' || :seq, 'user_' || :uid, 'service', 'charge', -1, :after::bigint + 1,
        :after::bigint, 0.0001, NULL, NULL,
        jsonb_build_object('user_id', 'user_' || :uid, 'cost_usd', 0.0001::float8))
ON CONFLICT ON CONSTRAINT ledger_operation_key DO NOTHING;
COMMIT;
