-- pgbench script (rb): the baseline, i.e. the bare SQL doing the same writes as (r), one prepared
-- statement per step (one round trip and one transaction each, like (r)):
--   reserve: the conditional wallet hold (balance - held_credits >= 2), the conditional
--   organization hold (enabled, quota - held_quota >= 2), the reservation row, the wallet's ledger
--   row (with the same idempotency key) and the organization's ledger row;
--   settle: the reservation leaves 'held' (with its amounts and outcome), the wallet is charged and
--   its hold released, the organization likewise, and both ledger rows.
-- Each organization UPDATE names the wallet CTE (EXISTS (SELECT 1 FROM w)), so the wallet row is
-- locked first, as the extension does: otherwise the executor may take them in either order and
-- clients of one organization deadlock.
-- What (r) does on top: validation, the function calls (SPI), the replay look-ups, the row locks
-- in a fixed order, the settle policy. Keep in step with extension/src/reservations.rs.
\set uid 1 + :stride * random(0, :nusers / :stride - 1)
\set seq :seq + 1
WITH w AS (
    UPDATE quota.wallets SET held_credits = held_credits + 2, updated_at = now()
     WHERE user_id = 'rb_' || :uid AND balance - held_credits >= 2
    RETURNING user_id, balance),
o AS (
    UPDATE quota.organizations SET held_quota = held_quota + 2, updated_at = now()
     WHERE id = (SELECT org FROM quota.users WHERE id = 'rb_' || :uid)
       AND status = 'enabled' AND quota - held_quota >= 2 AND EXISTS (SELECT 1 FROM w)
    RETURNING id, quota, used_quota, held_quota),
r AS (
    INSERT INTO quota.reservations (user_id, org, unlimited, operation_id, credits_held,
                                    user_credits_held, org_credits_held, created_at, expires_at)
    SELECT w.user_id, o.id, false, :run::text || '-rb-' || :client_id || '-' || :seq, 2, 2, 2,
           now(), now() + interval '300 s'
    FROM w, o
    RETURNING reservation_id, user_id, org, operation_id),
l AS (
    INSERT INTO quota.ledger (user_id, scope, operation_id, transaction_type, credits, balance_before,
                              balance_after, held_change, metadata, request)
    SELECT w.user_id, 'service', r.operation_id, 'reserve', 0, w.balance, w.balance, 2,
           jsonb_build_object('reservation_id', r.reservation_id),
           jsonb_build_object('user_id', w.user_id, 'credits', 2, 'ttl_s', 300)
    FROM w, r
    ON CONFLICT ON CONSTRAINT ledger_operation_key DO NOTHING),
ol AS (
    INSERT INTO quota.org_ledger (org_id, scope, operation_id, entry_type, held_change, quota_after,
                                  used_quota_after, held_quota_after, reservation_id, user_id, request)
    SELECT o.id, 'system', 'reserve:' || r.reservation_id, 'reserve', 2, o.quota, o.used_quota,
           o.held_quota, r.reservation_id, r.user_id,
           jsonb_build_object('reservation_id', r.reservation_id, 'credits', 2)
    FROM o, r)
SELECT reservation_id AS rid FROM r \gset
WITH r AS (
    UPDATE quota.reservations
       SET status = 'settled', ended_at = now(), end_operation_id = operation_id || '-end',
           actual_credits = 1, charged_credits = 1, returned_credits = 1, uncollected_credits = 0,
           org_charged_credits = 1, org_uncollected_credits = 0,
           outcome = jsonb_build_object('reservation_id', reservation_id, 'status', 'settled',
                                        'actual_credits', 1, 'charged_credits', 1)
     WHERE reservation_id = :rid AND status = 'held'
    RETURNING reservation_id, user_id, org, operation_id),
w AS (
    UPDATE quota.wallets
       SET balance = balance - 1, total_spent = total_spent + 1, held_credits = held_credits - 2,
           used_quota = used_quota + 1, request_count = request_count + 1, updated_at = now()
     WHERE user_id = (SELECT user_id FROM r)
    RETURNING user_id, balance),
l AS (
    INSERT INTO quota.ledger (user_id, scope, operation_id, transaction_type, credits, balance_before,
                              balance_after, held_change, metadata, request)
    SELECT w.user_id, 'service', r.operation_id || '-end', 'settle', -1, w.balance + 1, w.balance, -2,
           jsonb_build_object('reservation_id', r.reservation_id),
           jsonb_build_object('reservation_id', r.reservation_id, 'actual_credits', 1)
    FROM w, r
    ON CONFLICT ON CONSTRAINT ledger_operation_key DO NOTHING),
o AS (
    UPDATE quota.organizations
       SET quota = quota - 1, used_quota = used_quota + 1, held_quota = held_quota - 2, updated_at = now()
     WHERE id = (SELECT org FROM r) AND EXISTS (SELECT 1 FROM w)
    RETURNING id, quota, used_quota, held_quota)
INSERT INTO quota.org_ledger (org_id, scope, operation_id, entry_type, quota_change, used_change,
                              held_change, quota_after, used_quota_after, held_quota_after,
                              reservation_id, user_id, request)
SELECT o.id, 'system', 'settle:' || r.reservation_id, 'settle', -1, 1, -2, o.quota, o.used_quota,
       o.held_quota, r.reservation_id, r.user_id,
       jsonb_build_object('reservation_id', r.reservation_id, 'actual_credits', 1)
FROM o, r;
