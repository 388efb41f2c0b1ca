-- Organizations, unlimited users and two-phase consumption (seed 003) as a DBA sees them.
-- Every line of seed 003's checklist that does not need tokens (issue 12 adds those).
\set VERBOSITY terse
BEGIN;
SET LOCAL quota.now_override = '2026-01-01 00:00:00+00';
-- reservation ids in messages do not depend on the scripts that ran before
SELECT setval(pg_get_serial_sequence('quota.reservations', 'reservation_id'), 1000) AS next_reservation_after;
SELECT quota.set_exchange_rate(10000, 'pg_test') ->> 'new_base_rate' AS base_rate;
-- organizations: one prepaid with 1000 credits, one postpaid with an overdraft of 50
SELECT quota.create_organization('acme', '{"name":"Acme","quota":1000}') - 'created_at' - 'updated_at' AS acme;
SELECT quota.create_organization('post', '{"billing_type":"postpaid","quota":100,"overdraft_limit":50}') - 'created_at' - 'updated_at' AS post;
-- a user whose org does not exist: 404 (P0002) naming it, nothing written
SAVEPOINT s;
SELECT quota.create_user('r-ghost', '{"org":"nope"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT count(*) AS ghost_users FROM quota.users WHERE id = 'r-ghost';
-- checklist: an org user is unlimited by default, a user without org is not
SELECT quota.create_user('r-org', '{"org":"acme"}') -> 'unlimited' AS org_user_unlimited;
SELECT quota.create_user('r-solo', '{}') -> 'unlimited' AS solo_user_unlimited;
SELECT quota.create_user('r-lim', '{"org":"acme","unlimited":false}') -> 'unlimited' AS explicit_limited;
SELECT quota.create_user('r-post', '{"org":"post"}') -> 'unlimited' AS post_user_unlimited;
SELECT credits_added FROM quota.bonus('r-lim', 500, 'seed-lim');
SELECT credits_added FROM quota.bonus('r-solo', 300, 'seed-solo');
-- checklist: an unlimited user's wallet is not debited, used_quota grows, the org is charged
SELECT reservation_id AS r1 FROM quota.reserve('u1', 'r-org', 200) \gset
-- a replay of the reserve answers the first answer
SELECT reservation_id = :r1 AS same_reservation, status, user_id, org, unlimited, credits_held,
       user_credits_held, org_credits_held, expires_at - created_at AS ttl
  FROM quota.reserve('u1', 'r-org', 200);
SELECT balance, held_credits FROM quota.wallets WHERE user_id = 'r-org';
SELECT (SELECT held_quota FROM quota.organizations WHERE id = 'acme') AS acme_held;
SELECT status, actual_credits, charged_credits, returned_credits, uncollected_credits, org_charged_credits,
       balance_after, held_credits_after, used_quota_after, request_count_after, org_quota_after, org_used_quota_after
  FROM quota.settle(:r1, 150, 's1');
-- replay: the same answer, nothing moves again
SELECT status, actual_credits, charged_credits, org_quota_after, operation_id FROM quota.settle(:r1, 150, 's1');
SELECT quota, used_quota, held_quota FROM quota.organizations WHERE id = 'acme';
-- settle again with another id: 55000, the reservation is settled
SAVEPOINT s;
SELECT * FROM quota.settle(:r1, 150, 's1-again');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- same id, other parameters: 23505
SAVEPOINT s;
SELECT * FROM quota.settle(:r1, 151, 's1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- checklist: a limited user is held and debited; settle below the hold returns the rest
SELECT reservation_id AS r2 FROM quota.reserve('l1', 'r-lim', 300) \gset
SELECT balance, held_credits FROM quota.wallets WHERE user_id = 'r-lim';
-- the hold is not spendable: a charge of 0.03 USD (300 credits) does not fit in 500 - 300
SAVEPOINT s;
SELECT * FROM quota.charge('r-lim', 0.03, 'c-lim');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT charged_credits, returned_credits, uncollected_credits, balance_after, held_credits_after, org_quota_after
  FROM quota.settle(:r2, 120, 's2');
-- above the hold with room: the extra is charged
SELECT reservation_id AS r3 FROM quota.reserve('l2', 'r-lim', 100) \gset
SELECT charged_credits, returned_credits, uncollected_credits, balance_after FROM quota.settle(:r3, 180, 's3');
-- above the hold without room: what is there is charged, the rest is uncollected, never below 0
SELECT reservation_id AS r4 FROM quota.reserve('l3', 'r-lim', 100) \gset
SELECT charged_credits, returned_credits, uncollected_credits, balance_after, used_quota_after
  FROM quota.settle(:r4, 1000, 's4');
SELECT org_charged_credits, org_uncollected_credits FROM quota.reservations WHERE reservation_id = :r4;
SELECT uncollected_credits, status FROM quota.reservations WHERE reservation_id = :r4;
-- refusals: the user's wallet (403 insufficient_user_quota), nothing written
SAVEPOINT s;
SELECT * FROM quota.reserve('l4', 'r-lim', 1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- the organization without room refuses even an unlimited user (insufficient_org_quota)
SAVEPOINT s;
SELECT * FROM quota.reserve('u2', 'r-org', 100000);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- a disabled organization refuses (org_disabled, 55000)
SELECT quota.update_organization('acme', '{"status":"disabled"}') ->> 'status' AS acme_status;
SAVEPOINT s;
SELECT * FROM quota.reserve('u3', 'r-org', 1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT quota.update_organization('acme', '{"status":"enabled"}') ->> 'status' AS acme_status;
SELECT count(*) AS ledger_rows_of_refusals FROM quota.ledger WHERE operation_id IN ('l4', 'u2', 'u3');
-- checklist: switching limited -> unlimited applies to the next reserve; a hold made before
-- settles under the rules it was made with
SELECT credits_added FROM quota.bonus('r-lim', 400, 'seed-lim-2');
SELECT quota_after FROM jsonb_to_record(quota.add_organization_quota('acme', 2000, 'topup-0')) AS t(quota_after bigint);
SELECT reservation_id AS r5 FROM quota.reserve('l5', 'r-lim', 100) \gset
SELECT quota.update_user('r-lim', '{"unlimited":true}') -> 'unlimited' AS now_unlimited;
SELECT unlimited, charged_credits, balance_after FROM quota.settle(:r5, 100, 's5');
SELECT unlimited, user_credits_held FROM quota.reserve('l6', 'r-lim', 100);
-- and back: unlimited -> limited
SELECT quota.update_user('r-lim', '{"unlimited":false}') -> 'unlimited' AS now_unlimited;
SELECT unlimited, charged_credits, balance_after FROM quota.settle((SELECT reservation_id FROM quota.reservations WHERE operation_id = 'l6'), 100, 's6');
SELECT unlimited, user_credits_held FROM quota.reserve('l7', 'r-lim', 100);
-- release returns the whole hold
SELECT status, charged_credits, returned_credits, balance_after, held_credits_after
  FROM quota.release((SELECT reservation_id FROM quota.reservations WHERE operation_id = 'l7'), 'rel7');
-- postpaid: used_quota may reach quota + overdraft_limit (150) and no further
SELECT org_charged_credits, org_quota_after, org_used_quota_after FROM quota.consume('p1', 'r-post', 140);
SAVEPOINT s;
SELECT * FROM quota.consume('p2', 'r-post', 11);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT org_charged_credits, org_used_quota_after FROM quota.consume('p2', 'r-post', 10);
-- consume replays field for field
SELECT org_charged_credits, org_used_quota_after FROM quota.consume('p2', 'r-post', 10);
-- cost_usd is priced like a charge (no plan: multiplier 1): 0.0123 USD = 123 credits
SELECT credits_held, cost_usd FROM quota.reserve('solo-1', 'r-solo', cost_usd => 0.0123);
-- expiry: an abandoned hold is released once, then settle and release say so (55000)
SELECT reservation_id AS r8 FROM quota.reserve('solo-2', 'r-solo', 50, ttl_s => 60) \gset
SET LOCAL quota.now_override = '2026-01-01 00:10:00+00';
SELECT quota.get_reservation(:r8) ->> 'status' AS shown_before_the_worker;
SELECT * FROM quota.expire_reservations();
SELECT * FROM quota.expire_reservations();
SELECT status FROM quota.reservations WHERE reservation_id = :r8;
SAVEPOINT s;
SELECT * FROM quota.settle(:r8, 10, 'late');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT balance, held_credits FROM quota.wallets WHERE user_id = 'r-solo';
-- bad input: 22023, nothing written
SAVEPOINT s;
SELECT * FROM quota.reserve('bad', 'r-solo', 5, 0.1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM quota.reserve('bad', 'r-solo');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM quota.reserve('bad', 'r-solo', -1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM quota.reserve('bad', 'r-solo', 1, ttl_s => 0);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM quota.reserve(' bad', 'r-solo', 1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM quota.settle(999999, 1, 'x');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT * FROM quota.settle(:r8, -1, 'x');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SAVEPOINT s;
SELECT quota.create_organization('bad', '{"billing_type":"credit"}');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- deleting: an org with users (23503), a user with an open hold (23503)
SAVEPOINT s;
SELECT quota.delete_organization('acme');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT reservation_id AS r9 FROM quota.reserve('solo-3', 'r-solo', 5) \gset
SAVEPOINT s;
SELECT quota.delete_user('r-solo');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT status FROM quota.release(:r9, 'rel9');
SELECT quota.delete_user('r-solo') -> 'deleted' AS deleted;
-- org top-ups are idempotent
SELECT quota.add_organization_quota('acme', 500, 'topup-1') - 'entry_id' AS topup;
SELECT quota.add_organization_quota('acme', 500, 'topup-1') - 'entry_id' AS replay;
SAVEPOINT s;
SELECT quota.add_organization_quota('acme', 501, 'topup-1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
-- the users of an org, and the org as JSON
SELECT jsonb_path_query_array(quota.organization_users('acme'), '$.users[*].id') AS acme_users;
SELECT quota.get_organization('acme') - 'created_at' - 'updated_at' AS acme;
-- the invariants hold
SELECT * FROM quota.verify();
ROLLBACK;
