-- Admin operations: plans, rates, statistics, the audit log.
\set VERBOSITY terse
BEGIN;
SELECT quota.set_exchange_rate(10000, 'pg_test') - 'updated_at' AS rate;
SELECT quota.create_plan('{"tier":"standard","name":"Standard","monthly_cost":19.99,"credits_included":250000,"bonus_credits":25000,"multiplier":1.2,"purchase_rate":1.1}', 'dba') #- '{plan,created_at}' #- '{plan,updated_at}' AS plan;
-- duplicates and invalid values
SAVEPOINT a; SELECT quota.create_plan('{"tier":"standard","name":"Other"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO a;
SAVEPOINT b; SELECT quota.create_plan('{"tier":"other","name":"Standard"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO b;
SAVEPOINT c; SELECT quota.create_plan('{"tier":"free","name":"Free","multiplier":0}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO c;
SAVEPOINT d; SELECT quota.create_plan('{"tier":"free","name":"Free","purchase_rate":0.5}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO d;
SELECT quota.create_user('bob') ->> 'id' AS created;
SELECT credits_added FROM quota.update_subscription('bob', 'standard', 1000, 'sub-bob');
SELECT quota.update_plan('standard', '{"monthly_cost":24.99,"active":false}', 'dba') #- '{plan,created_at}' #- '{plan,updated_at}' AS plan;
SELECT r ->> 'old_multiplier' AS old_multiplier, r ->> 'new_multiplier' AS new_multiplier
  FROM quota.set_plan_multiplier('standard', 1.25, 'dba') r;
SELECT r ->> 'old_purchase_rate' AS old_purchase_rate, r ->> 'new_purchase_rate' AS new_purchase_rate
  FROM quota.set_plan_purchase_rate('standard', 1.3, 'dba') r;
SELECT jsonb_array_length(quota.list_plans(true) -> 'plans') AS active_plans,
       (quota.list_plans(false) -> 'total')::int AS all_plans;
SELECT quota.set_exchange_rate(20000, 'dba') - 'updated_at' AS rate;
SELECT tier, multiplier, base_rate, credits_to_charge FROM quota.calculate_credits(0.01, tier => 'standard');
-- a plan with subscribers cannot be deleted
SAVEPOINT e; SELECT quota.delete_plan('standard');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO e;
-- an inactive plan takes no new subscribers
SELECT quota.create_user('dave') ->> 'id' AS created;
SAVEPOINT f; SELECT * FROM quota.update_subscription('dave', 'standard', 0, 'sub-dave');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO f;
SELECT credits_charged FROM quota.charge('bob', 0.0001, 'bob-charge');
SELECT stats -> 'total_users' AS users, stats -> 'subscriptions' AS subscriptions, stats -> 'transactions' -> 'subscriptions' AS subscription_tx
  FROM quota.statistics(NULL, NULL, 'standard') stats;
SELECT actor, action, subject FROM quota.audit_log WHERE actor IN ('dba', 'pg_test') ORDER BY id;
ROLLBACK;
