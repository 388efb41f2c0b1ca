-- Reservation crash test data (scripts/fault_test.sh): one prepaid organization with tight room,
-- :nusers limited users in it with 150 credits each, and the step the load runs: reserve, then
-- settle, release, or abandon the hold (it expires after ttl_s). Refusals (no room, a duplicated
-- operation id) are expected under this load and counted, not raised, so pgbench goes on.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SELECT quota.create_organization('crash-org', jsonb_build_object('quota', :nusers * 60)) ->> 'id' AS org;
SELECT count(quota.create_user('cu_' || i, '{"org":"crash-org","unlimited":false}')) AS users
FROM generate_series(1, :nusers) AS i;
SELECT count(*) AS seeded FROM generate_series(1, :nusers) AS i, quota.bonus('cu_' || i, 150, 'seed-' || i) b;

CREATE TABLE public.fault_refusals (code text PRIMARY KEY, n bigint NOT NULL);
-- mode 0..5: settle with an actual of 0..2x the hold; 6..7: release; 8..9: abandon.
CREATE FUNCTION public.fault_step(uid int, op bigint, credits int, mode int, ttl_s int)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    rid bigint;
BEGIN
    SELECT reservation_id INTO rid
    FROM quota.reserve('op-' || op, 'cu_' || uid, credits::bigint, ttl_s => ttl_s);
    IF mode < 6 THEN
        PERFORM quota.settle(rid, (credits * mode / 3)::bigint, 'end-' || op);
    ELSIF mode < 8 THEN
        PERFORM quota.release(rid, 'end-' || op);
    END IF;
EXCEPTION WHEN OTHERS THEN
    INSERT INTO public.fault_refusals VALUES (SQLSTATE, 1)
    ON CONFLICT (code) DO UPDATE SET n = fault_refusals.n + 1;
END
$$;
