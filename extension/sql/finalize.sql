-- Runs last (finalize), once every function exists: the documentation of the public SQL API,
-- then the access rules (SPEC 1.6).
COMMENT ON FUNCTION quota.charge(text, double precision, text, text, jsonb) IS
    'Charges round_half_even(cost_usd * plan multiplier * base_rate) credits. Idempotent by operation_id (replay returns the first result; other parameters: 23505). Insufficient credits: 23514, nothing recorded.';
COMMENT ON FUNCTION quota.add(text, double precision, text, text, jsonb, text) IS
    'Adds round_half_even(amount_usd * plan purchase_rate * base_rate) credits (ledger type add); source (where the money came from) is kept in the metadata. Idempotent by operation_id.';
COMMENT ON FUNCTION quota.purchase(text, double precision, text, text, text) IS
    'A credit purchase (the user''s own idempotency scope): like quota.add, but only against a payment confirmed by quota.confirm_payment for this user and amount and not used yet (payment_id, or the oldest such payment). No payment: 23514 payment_required (HTTP 402), nothing written. Idempotent by operation_id.';
COMMENT ON FUNCTION quota.confirm_payment(text, text, double precision, text, jsonb) IS
    'Records a payment the payment side confirmed (once per user and payment_id; the same again is a replay, other amount or method 23505), for one purchase to use.';
COMMENT ON FUNCTION quota.bonus(text, bigint, text, text, jsonb) IS
    'Grants credits as a bonus (ledger type bonus). Idempotent by operation_id.';
COMMENT ON FUNCTION quota.refund(text, text, text, bigint, text) IS
    'Returns credits of an earlier charge (by its operation_id); credits NULL = all not yet refunded. Never more than charged (23514). Idempotent by operation_id.';
COMMENT ON FUNCTION quota.update_subscription(text, text, bigint, text) IS
    'Moves a user to a plan tier and adds credits_to_add (ledger type subscription). Same tier again: 23505. Idempotent by operation_id.';
COMMENT ON FUNCTION quota.check_credits(text, bigint) IS
    'Whether a user has at least required_credits (true when NULL), with their subscription and multiplier; reads only.';
COMMENT ON FUNCTION quota.calculate_credits(double precision, text, text) IS
    'Credits a cost would be charged (the charge''s formula and base rate), at a tier''s multiplier, a user''s plan, or multiplier 1; with a user, their balance after it and whether it suffices. Reads only.';
COMMENT ON FUNCTION quota.balance(text) IS 'A user''s balance, totals earned and spent, and tier.';
COMMENT ON FUNCTION quota.transactions(text, integer, integer, text) IS
    'A user''s ledger entries, newest first, as JSON {transactions, total, limit, offset}; limit 1 to 100.';
COMMENT ON FUNCTION quota.subscription(text) IS 'A user''s subscription, plan and wallet as JSON.';
COMMENT ON FUNCTION quota.verify() IS
    'Checks the ledger invariant: every balance and total equals its ledger sums, the chain of balances is unbroken, no refund exceeds its charge. No rows = clean.';
COMMENT ON FUNCTION quota.create_plan(jsonb, text) IS
    'Creates a plan from JSON (tier, name, monthly_cost, fixed_cost, credits_included, bonus_credits, multiplier > 0, purchase_rate >= 1, active). Duplicate tier or name: 23505. Audited.';
COMMENT ON FUNCTION quota.update_plan(text, jsonb, text) IS 'Partially updates a plan from JSON. Audited.';
COMMENT ON FUNCTION quota.delete_plan(text, text) IS 'Deletes a plan; refused (23503) while users are subscribed. Audited.';
COMMENT ON FUNCTION quota.list_plans(boolean) IS
    'Plans as the admin API shows them, JSON {plans, total}: tier, name, monthly_cost, fixed_cost, credits_included, bonus_credits, multiplier, purchase_rate, active, users_count, created_at, updated_at.';
COMMENT ON FUNCTION quota.subscription_plans() IS
    'The active plans as users see them, JSON {plans, total}: tier, name, monthly_cost, fixed_cost, credits_included, bonus_credits, multiplier, purchase_rate, total_credits.';
COMMENT ON FUNCTION quota.set_plan_multiplier(text, double precision, text) IS 'Sets a plan''s charge multiplier (> 0). Audited.';
COMMENT ON FUNCTION quota.set_plan_purchase_rate(text, double precision, text) IS 'Sets a plan''s purchase rate (>= 1). Audited.';
COMMENT ON FUNCTION quota.set_exchange_rate(bigint, text) IS 'Sets base_rate, the credits per USD; applies on the first call too. Audited.';
COMMENT ON FUNCTION quota.statistics(timestamptz, timestamptz, text) IS
    'Users, subscriptions per tier, credits earned / spent / balance and transaction counts in [start_date, end_date), optionally for one tier.';
COMMENT ON FUNCTION quota.create_user(text, jsonb, text) IS 'Creates a user (profile fields of seed 000) with an empty wallet. Duplicate id: 23505. Audited.';
COMMENT ON FUNCTION quota.update_user(text, jsonb, text) IS 'Partially updates a user''s profile; JSON null clears a field. Audited.';
COMMENT ON FUNCTION quota.get_user(text) IS 'A user''s profile and wallet as JSON.';
COMMENT ON FUNCTION quota.list_users(integer, integer) IS 'Users as JSON {users, total, limit, offset}, ordered by id.';
COMMENT ON FUNCTION quota.import_users(jsonb, text) IS 'Creates or updates up to 10000 users from a JSON array; all or nothing. Audited.';
COMMENT ON FUNCTION quota.issue_api_token(text, text, text) IS 'Issues a user API token for the public REST API; only its SHA-256 is stored, so it is shown once. Audited.';
COMMENT ON FUNCTION quota.revoke_api_token(bigint, text) IS 'Revokes a user API token; false if it was already revoked. Audited.';
COMMENT ON FUNCTION quota.resolve_api_token(text) IS 'The user id of a valid (unrevoked) API token, or NULL.';
COMMENT ON FUNCTION quota.worker_status() IS
    'State and heartbeat of the pg_quota background worker (needs shared_preload_libraries), and what its scans did since it started.';
COMMENT ON FUNCTION quota.library_version() IS 'The version of the loaded pg_quota library (a call proves it loads).';
COMMENT ON FUNCTION quota.price_credits(double precision, double precision, bigint) IS
    'The pricing formula: round_half_even(usd * rate * base_rate), computed in IEEE double in that order (seed 004).';
COMMENT ON FUNCTION quota._settings_changed() IS
    'Trigger function of quota.settings (settings_changed, settings_truncated): queues a relcache invalidation so every backend forgets its cached base_rate (read again by the next charge).';
COMMENT ON TRIGGER settings_changed ON quota.settings IS
    'Keeps the per-backend base_rate cache of quota.charge in step with this table (ENABLE ALWAYS).';
COMMENT ON TRIGGER settings_truncated ON quota.settings IS
    'Keeps the per-backend base_rate cache of quota.charge in step with this table (ENABLE ALWAYS).';
COMMENT ON FUNCTION quota.parse_condition(text) IS
    'Parses a recharge-strategy condition and returns its canonical form; a syntax error (22023) names the position and what was expected.';
COMMENT ON FUNCTION quota.eval_condition(text, text) IS
    'Whether one user matches a condition (the per-user evaluator).';
COMMENT ON FUNCTION quota.match_users(text) IS
    'The ids of the users matching a condition, by its compiled SQL predicate over quota.users (a dry run before enabling a strategy).';
COMMENT ON FUNCTION quota.create_strategy(jsonb) IS
    'Creates a recharge strategy from JSON (name, title, type single|periodic, amount > 0, model, periodic_expr (cron, periodic only), condition, status, max_exec_per_user). Invalid type, cron or condition: 22023 with the position.';
COMMENT ON FUNCTION quota.update_strategy(bigint, jsonb) IS 'Partially updates a strategy; unknown fields are 22023.';
COMMENT ON FUNCTION quota.get_strategy(bigint) IS 'A strategy as JSON.';
COMMENT ON FUNCTION quota.list_strategies(boolean) IS 'Strategies as JSON {strategies, total}, optionally only enabled (true) or disabled (false).';
COMMENT ON FUNCTION quota.enable_strategy(bigint) IS 'Enables a strategy.';
COMMENT ON FUNCTION quota.disable_strategy(bigint) IS 'Disables a strategy; a scan in progress finishes first.';
COMMENT ON FUNCTION quota.delete_strategy(bigint) IS 'Deletes a strategy; its executions are kept.';
COMMENT ON FUNCTION quota.strategy_executions(bigint, integer, integer) IS 'A strategy''s executions, newest first, as JSON {executions, total, limit, offset}.';
COMMENT ON FUNCTION quota.scan(timestamptz, boolean, bigint, bigint) IS
    'Runs the enabled strategies due now: single ones (each user at most once), periodic ones for their latest cron fire since the last. Exactly once per (strategy, user, fire). Each strategy in its own subtransaction (a failure shows in error and last_error; the others go on); users whose balance would pass its limit are skipped and reported. strategy_id limits it to one strategy, batch_users the users per strategy (more = some left). now other than the current time: superusers only (a test hook).';
COMMENT ON FUNCTION quota.next_fire(text, timestamptz, text) IS 'The next fire of a cron expression after a time, in quota.timezone or the given zone.';

-- Organizations and reservations (seed 003, SPEC 3).
COMMENT ON FUNCTION quota.create_organization(text, jsonb, text) IS
    'Creates an organization from JSON (name, status enabled|disabled, billing_type prepaid|postpaid, quota >= 0, overdraft_limit >= 0). Duplicate id: 23505. Audited.';
COMMENT ON FUNCTION quota.update_organization(text, jsonb, text) IS
    'Changes an organization (name, status, billing_type, overdraft_limit, quota: a new quota is an adjust entry of the org ledger). Refused (22023) if it would no longer cover its holds. Audited.';
COMMENT ON FUNCTION quota.get_organization(text) IS
    'An organization as JSON: quota, used_quota, held_quota, overdraft_limit, available_quota, users_count, open_reservations. Reads only.';
COMMENT ON FUNCTION quota.list_organizations(integer, integer) IS
    'Organizations as JSON {organizations, total, limit, offset}; limit 1 to 1000. Reads only.';
COMMENT ON FUNCTION quota.organization_users(text, integer, integer) IS
    'The users of an organization as JSON {users, total, limit, offset}. Reads only.';
COMMENT ON FUNCTION quota.delete_organization(text, text) IS
    'Deletes an organization and its ledger; refused (23503 in_use) while it has users or open holds. Audited.';
COMMENT ON FUNCTION quota.add_organization_quota(text, bigint, text, text) IS
    'Adds credits to an organization''s quota (org ledger type add). Idempotent by operation_id (other parameters: 23505).';
COMMENT ON FUNCTION quota.delete_user(text, text) IS
    'Deletes a user with their wallet, ledger, tokens, payments, executions and ended reservations; refused (23503 in_use) while they have an open hold. Audited.';
COMMENT ON FUNCTION quota.reserve(text, text, bigint, double precision, integer, text) IS
    'Holds credits (or a USD cost priced like quota.charge) on the user''s wallet (not for an unlimited user) and on their organization (always), for ttl_s seconds (1..86400, default 300). Refusals: 23514 insufficient_user_quota / insufficient_org_quota, 55000 org_disabled, nothing written. With access_token (the user''s), a limited token is held too (23514 insufficient_token_quota; 55000 token_unusable when inactive or expired). Idempotent by operation_id.';
COMMENT ON FUNCTION quota.settle(bigint, bigint, text) IS
    'Ends a hold charging actual_credits: the rest of the hold is returned; above the hold, the extra is charged if the wallet (or the org) can pay it, else what it can and the rest is uncollected. used_quota and request_count grow. Not held: 55000 reservation_not_held. Idempotent by operation_id.';
COMMENT ON FUNCTION quota.release(bigint, text) IS
    'Ends a hold charging nothing. Not held: 55000 reservation_not_held. Idempotent by operation_id.';
COMMENT ON FUNCTION quota.consume(text, text, bigint, double precision, text) IS
    'Reserve and settle in one step (same checks and refusals as quota.reserve). Idempotent by operation_id.';
COMMENT ON FUNCTION quota.get_reservation(bigint) IS
    'A reservation as JSON (status held, settled, released or expired, and its amounts). Reads only.';
COMMENT ON FUNCTION quota.expire_reservations(integer) IS
    'Releases up to max_count holds past their expiry, each exactly once (the background worker calls it every tick); more = some may be left.';

-- Access tokens (seed 001, SPEC 4).
COMMENT ON FUNCTION quota.create_token(jsonb, text) IS
    'Creates an access token (flow_ + 64 hex, shown once in access_token; only its SHA-256 is stored) from JSON: ws_id, email, operation add (days) | set (specific_date) | unlimited, quota_type time|count|hybrid, total_quota, user_id, unlimited, rate limits. Audited.';
COMMENT ON FUNCTION quota.update_token(text, jsonb, text) IS
    'Changes a token: operation set|unlimited, quota_type, quota_operation add|set|reset with quota_amount, specific_date, unlimited, rate limits (absent: unchanged; null: removed). Audited; quota changes are logged as recharge.';
COMMENT ON FUNCTION quota.delete_token(text, text) IS 'Deactivates a token (verification answers inactive). Audited.';
COMMENT ON FUNCTION quota.token_quota(text) IS 'A token''s quota: quota_type, total_quota, remaining_quota, consumed_quota, expires_at. Reads only.';
COMMENT ON FUNCTION quota.token_quota_logs(text, integer, integer, text, text) IS 'A token''s quota history (init, consume, refund, recharge, update), newest first, paged, within [start_date, end_date). Reads only.';
COMMENT ON FUNCTION quota.list_tokens(text, text, integer, integer) IS 'Tokens, optionally of one ws_id and/or email, as JSON {tokens, total} (never the tokens themselves). Reads only.';
COMMENT ON FUNCTION quota.verify_token(text, bigint, text) IS
    'The gateway''s per-request check: exists and active, not expired (time, hybrid), rate limit (burst per second, then per window; shared memory, exact), then count quota (count, hybrid: units, atomically). Refusals are rows (code unknown_token, inactive, expired, burst, window, limiter_full, quota_exceeded), not errors. Idempotent by request_id.';
COMMENT ON FUNCTION quota.refund_token(text, bigint, text) IS 'Gives units back to a count token (never above its total). Idempotent by request_id.';

-- Provider pools (seed 002, SPEC 5).
COMMENT ON FUNCTION quota.create_provider(text, text, jsonb) IS
    'Creates a provider: unique name, default strategy (least_used, round_robin, random, best), limits {rpm, rph, rpd, tpm, tpd, concurrent} (0 or absent = unlimited). Audited.';
COMMENT ON FUNCTION quota.update_provider(uuid, jsonb) IS
    'Changes a provider: name, strategy, active, limits (a key with null removes that limit; keys left out are unchanged). Audited.';
COMMENT ON FUNCTION quota.set_provider_limit(uuid, text, bigint) IS 'Sets one limit of a provider (NULL or 0 removes it). Audited.';
COMMENT ON FUNCTION quota.delete_provider(uuid) IS 'Deletes a provider without accounts (23503 while it has some). Audited.';
COMMENT ON FUNCTION quota.create_pool_account(uuid, jsonb, jsonb) IS
    'Adds an account to a provider''s pool: credentials (a JSON object, stored AES-256-GCM encrypted, never returned by reads) and options user_id, name, quota_limit (0 = unlimited), period_s, active, expires_at, last_reset. Audited without the credentials.';
COMMENT ON FUNCTION quota.update_pool_account(uuid, jsonb) IS 'Changes a pool account (its options, or new credentials). Audited without the credentials.';
COMMENT ON FUNCTION quota.delete_pool_account(uuid) IS 'Deletes a pool account and its leases (its request logs stay). Audited.';
COMMENT ON FUNCTION quota.reset_pool_account(uuid) IS 'Manual reset: quota_used 0, a new quota window from now. Audited.';
COMMENT ON FUNCTION quota.get_provider(uuid) IS 'A provider as JSON (limits, account count). Reads only.';
COMMENT ON FUNCTION quota.list_providers() IS 'Every provider as JSON {providers, total}. Reads only.';
COMMENT ON FUNCTION quota.get_pool_account(uuid) IS 'A pool account as JSON, never its credentials. Reads only.';
COMMENT ON FUNCTION quota.list_pool_accounts(uuid) IS 'A provider''s pool accounts as JSON {accounts, total}, never their credentials. Reads only.';
COMMENT ON FUNCTION quota.pool_status(uuid) IS 'Seed 002''s pool status: accounts total, active and available, quota totals, usage percent, in-flight leases, each account''s availability and reason. Reads only.';
COMMENT ON FUNCTION quota.pool_account_status(uuid) IS 'Seed 002''s quota status of an account: availability and reason, limit, used, held, remaining, usage percent, reset_at. Reads only.';
COMMENT ON FUNCTION quota.pool_stats(uuid, timestamptz, timestamptz) IS 'pool_status plus usage (requests, success rate, tokens, cost, latency), top models, error breakdown and daily stats within [from, to) (default the last 30 days). Reads only.';
COMMENT ON FUNCTION quota.usage_stats(text, timestamptz, timestamptz) IS 'Pool usage of a user (NULL: everyone) within [from_at, to_at) (default the 30 days up to now): requests, success rate, tokens, cost, average latency. Reads only.';
COMMENT ON FUNCTION quota.list_pool_alerts(uuid, timestamptz, integer) IS 'Pool alerts (warning, exhausted), newest first, with their webhook delivery status. Reads only.';
COMMENT ON FUNCTION quota.token_verifications() IS 'Access-token verifications since the server started, by outcome (valid or the refusal code): lock-free counters in shared memory, for /metrics.';
COMMENT ON FUNCTION quota.metrics() IS 'The database''s counters and gauges in Prometheus terms (name, kind, help, labels, value): what /metrics serves. Reads only.';
COMMENT ON FUNCTION quota.pool_acquire(uuid, bigint, text, text, integer, text) IS
    'Admission: picks an account by strategy, checks availability and every limit on the locked row, records the request in rpm/rph/rpd and the tokens in tpm/tpd, takes a concurrency lease (lease_ttl_s), returns the decrypted credentials. Refusals are answers (admitted false, SPEC 5 bodies), not errors.';
COMMENT ON FUNCTION quota.pool_release(uuid, uuid, jsonb) IS
    'Ends a lease with the usage: consumes input + output tokens (quota, tpm/tpd), frees the lease, writes the request log, raises a warning alert when the threshold is crossed. A lease released twice: 55000 lease_not_held.';
COMMENT ON FUNCTION quota.pool_check_availability(uuid, bigint) IS 'Seed 002''s CheckAvailability (a due lazy reset is written): available, reason, reset_at.';
COMMENT ON FUNCTION quota.pool_consume(uuid, bigint) IS 'Seed 002''s ConsumeQuota made atomic: consumes tokens if they fit the quota (else 23514 pool_quota_exceeded, nothing written).';
COMMENT ON FUNCTION quota.pool_sweep(integer) IS 'The background worker''s pool sweep by hand: expires leases, applies due quota resets, aggregates daily stats, deletes request logs past quota.log_retention.';

-- ---------------------------------------------------------------------------------------------
-- Access (SPEC 1.6). Nothing is executable by PUBLIC; each role gets the functions of its job
-- (quota_admin includes quota_service, which includes quota_reader; schema.sql creates them).
-- No role writes a table: the functions are SECURITY DEFINER with a pinned search_path and do
-- the writes as the extension's owner. Functions named _* are internal: granted to nobody.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA quota FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA quota FROM PUBLIC;

DO $grants$
DECLARE
    roles constant jsonb := jsonb_build_object(
        -- reads (and pure helpers)
        'quota_reader', jsonb_build_array(
            'now', 'price_credits', 'parse_condition', 'next_fire', 'eval_condition', 'match_users',
            'check_credits', 'calculate_credits', 'balance', 'transactions', 'subscription', 'verify',
            'list_plans', 'subscription_plans', 'statistics', 'get_user', 'list_users', 'get_strategy', 'list_strategies',
            'strategy_executions', 'worker_status', 'library_version', 'relay_status',
            'get_organization', 'list_organizations', 'organization_users', 'get_reservation',
            'token_quota', 'token_quota_logs', 'list_tokens', 'get_provider', 'list_providers',
            'get_pool_account', 'list_pool_accounts', 'pool_status', 'pool_account_status', 'usage_stats',
            'pool_stats', 'list_pool_alerts', 'metrics', 'token_verifications'),
        -- what a service does per request
        'quota_service', jsonb_build_array(
            'charge', 'add', 'purchase', 'confirm_payment', 'bonus', 'refund', 'update_subscription',
            'resolve_api_token', 'reserve', 'settle', 'release', 'consume', 'verify_token',
            'refund_token', 'pool_acquire', 'pool_release', 'pool_check_availability', 'pool_consume'),
        -- plans, rates, users, tokens, strategies, the relay
        'quota_admin', jsonb_build_array(
            'create_plan', 'update_plan', 'delete_plan', 'set_plan_multiplier', 'set_plan_purchase_rate',
            'set_exchange_rate', 'create_user', 'update_user', 'import_users', 'issue_api_token',
            'revoke_api_token', 'create_strategy', 'update_strategy', 'delete_strategy', 'enable_strategy',
            'disable_strategy', 'scan', 'outbox_claim', 'outbox_complete', 'outbox_retry', 'outbox_fail',
            'outbox_unknown', 'retry_execution', 'confirm_execution', 'create_organization',
            'update_organization', 'delete_organization', 'add_organization_quota', 'delete_user',
            'expire_reservations', 'create_token', 'update_token', 'delete_token', 'create_provider',
            'update_provider', 'delete_provider', 'set_provider_limit', 'create_pool_account',
            'update_pool_account', 'delete_pool_account', 'reset_pool_account', 'pool_sweep'));
    r text;
    f regprocedure;
    missing text;
BEGIN
    FOR r IN SELECT jsonb_object_keys(roles) LOOP
        FOR f IN
            SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
            WHERE p.pronamespace = 'quota'::regnamespace
              AND p.proname IN (SELECT jsonb_array_elements_text(roles -> r))
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, r);
        END LOOP;
    END LOOP;
    -- Every public function has a role: a new function without one fails CREATE EXTENSION here.
    SELECT string_agg(p.proname, ', ') INTO missing
    FROM pg_catalog.pg_proc p
    WHERE p.pronamespace = 'quota'::regnamespace AND p.proname NOT LIKE '\_%'
      AND NOT EXISTS (SELECT 1 FROM jsonb_each(roles) e WHERE e.value ? p.proname);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'pg_quota: functions without a role in finalize.sql: %', missing;
    END IF;
END
$grants$;

GRANT SELECT ON quota.users, quota.wallets, quota.plans, quota.settings, quota.subscriptions,
                quota.ledger, quota.payments, quota.strategies, quota.executions, quota.ledger_problems,
                quota.organizations, quota.org_ledger, quota.reservations, quota.reservation_problems,
                quota.tokens, quota.token_logs, quota.token_problems, quota.pool_problems, quota.providers, quota.pool_leases,
                quota.pool_request_logs, quota.pool_daily_stats, quota.pool_counters, quota.pool_alerts
    TO quota_reader;
-- Pool accounts without their credentials (ciphertext, but still nobody's business).
GRANT SELECT (account_id, provider_id, user_id, name, quota_limit, quota_used, quota_held, period_s,
              last_reset, active, expires_at, in_flight, minute_start, minute_requests, minute_tokens,
              hour_start, hour_requests, day_start, day_requests, day_tokens, request_count,
              success_count, error_count, warned_reset, exhausted_reset, last_used_at, created_at, updated_at)
    ON quota.pool_accounts TO quota_reader;
GRANT SELECT ON quota.audit_log, quota.outbox TO quota_admin;
