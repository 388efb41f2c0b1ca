#!/usr/bin/env bash
# Fault tests (issue 3, SPEC 6.4 and 6.5; issue 11): the cluster restarted in the middle of a
# recharge scan, and in the middle of a reservation load; the AiGateway down.
#
#   scripts/fault_test.sh        (run by scripts/test.sh as the stage `faults`)
#
# A scan is one transaction per strategy, so a crash mid-scan must leave nothing behind: no
# executions, credits or outbox rows of that scan; the next scan recharges every matching user
# exactly once. Then a sidecar relays to a gateway that is down: the execution fails after its
# attempts with the credit kept, and once the gateway (the mock) is up a retry delivers it once.
# Throwaway cluster on port 55437 with the scheduler off (only this script scans), on the private
# PostgreSQL of the tests (use_test_pg in lib.sh); the sidecar connects as the role quota_sidecar.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${FAULT_TEST_PORT:-55437}"
DB=pg_quota_faults
NUSERS="${FAULT_TEST_USERS:-500000}"

install_cleanup_trap
use_test_pg
[ "${PG_QUOTA_SKIP_INSTALL:-0}" = 1 ] || install_extension debug
throwaway_cluster faults "$PORT" "$DB" "quota.scheduler_enabled = off"
SOCK="$TMP_SOCK"
val() { psql_val "$SOCK" "$PORT" "$DB" "$1"; }

log "generating $NUSERS users"
psql_cmd "$SOCK" "$PORT" "$DB" -v nusers="$NUSERS" -f "$REPO/sql/bench/scan_setup.sql" >/dev/null
MATCHING="$(val "SELECT count(*) FROM quota.match_users('and(is-vip(1), github-star(\"zgsm\"))')")"
SID="$(val "SELECT quota.create_strategy('{\"name\":\"crash\",\"type\":\"single\",\"amount\":5,\"condition\":\"and(is-vip(1), github-star(\\\"zgsm\\\"))\"}') ->> 'id'")"

log "scanning strategy $SID ($MATCHING matching users) and crashing the server mid-scan"
psql_cmd "$SOCK" "$PORT" "$DB" -c "SELECT * FROM quota.scan(NULL, true, $SID)" >"$TMP_BASE/scan.out" 2>&1 &
SCAN_PID=$!
running=0
for _ in $(seq 1 100); do
    if [ "$(val "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%quota.scan(NULL, true, $SID)%' AND pid <> pg_backend_pid()")" = 1 ]; then
        running=1
        break
    fi
    sleep 0.05
done
[ $running = 1 ] || die "the scan never showed as running"
sleep 0.3
# An immediate stop is a crash: no checkpoint, WAL replay on start.
as_postgres "$PG_BIN/pg_ctl" -D "$TMP_DATA" -m immediate -w stop >/dev/null
if wait "$SCAN_PID"; then
    die "the scan finished before the crash ($(cat "$TMP_BASE/scan.out")); raise FAULT_TEST_USERS"
fi
cluster_start "$TMP_DATA" "$TMP_LOG"

EXECS="$(val "SELECT count(*) FROM quota.executions WHERE strategy_id = $SID")"
CREDITS="$(val "SELECT count(*) FROM quota.ledger WHERE transaction_type = 'recharge'")"
OUTBOX="$(val "SELECT count(*) FROM quota.outbox")"
PROBLEMS="$(val "SELECT count(*) FROM quota.verify()")"
[ "$EXECS/$CREDITS/$OUTBOX/$PROBLEMS" = "0/0/0/0" ] ||
    die "after the crash: $EXECS executions, $CREDITS credits, $OUTBOX outbox rows, $PROBLEMS ledger problems (want 0/0/0/0)"
ok "the crashed scan left nothing behind"

# The rescans queue nothing for a relay, so the gateway part below has only its own row.
val "ALTER DATABASE $DB SET quota.relay = off" >/dev/null
FIRST="$(val "SELECT recharged FROM quota.scan(NULL, true, $SID)")"
SECOND="$(val "SELECT recharged FROM quota.scan(NULL, true, $SID)")"
EXECS="$(val "SELECT count(*) FROM quota.executions WHERE strategy_id = $SID")"
CREDITED="$(val "SELECT count(*) FROM quota.wallets WHERE balance = 5")"
PROBLEMS="$(val "SELECT count(*) FROM quota.verify()")"
[ "$FIRST/$SECOND/$EXECS/$CREDITED/$PROBLEMS" = "$MATCHING/0/$MATCHING/$MATCHING/0" ] ||
    die "after restart: scans recharged $FIRST then $SECOND, $EXECS executions, $CREDITED credited wallets, $PROBLEMS problems (want $MATCHING/0/$MATCHING/$MATCHING/0)"
ok "the next scan recharged all $MATCHING matching users once, a rerun none; quota.verify() clean"

# ---------------------------------------------------------------------------------------------
# Reservations (issue 11): 32 clients reserve, settle, release and abandon holds (ttl 4 s) for
# limited users of one organization, with duplicated operation ids, and the server crashes in
# the middle. After the restart the invariants hold, and the background worker expires every
# hold that was open.
RUSERS=200
log "reservation load: 32 clients, $RUSERS users of one organization; crashing the server mid-load"
psql_cmd "$SOCK" "$PORT" "$DB" -v nusers="$RUSERS" -f "$REPO/sql/bench/reserve_fault.sql" >/dev/null
cat >"$TMP_BASE/reserve.pgbench" <<PGB
\\set uid random(1, $RUSERS)
\\set op random(1, 40)
\\set credits random(1, 60)
\\set mode random(0, 9)
SELECT public.fault_step(:uid, :op, :credits, :mode, 4);
PGB
"$PG_BIN/pgbench" -n -h "$SOCK" -p "$PORT" -U postgres -c 32 -j 2 -T 60 -f "$TMP_BASE/reserve.pgbench" "$DB" \
    >"$TMP_BASE/reserve.out" 2>&1 &
LOAD_PID=$!
for _ in $(seq 1 100); do
    [ "$(val "SELECT count(*) FROM quota.reservations")" -ge 1500 ] && break
    sleep 0.1
done
OPEN_AT_CRASH="$(val "SELECT count(*) FROM quota.reservations WHERE status = 'held'")"
as_postgres "$PG_BIN/pg_ctl" -D "$TMP_DATA" -m immediate -w stop >/dev/null
wait "$LOAD_PID" || true
cluster_start "$TMP_DATA" "$TMP_LOG"
RES="$(val "SELECT count(*) FROM quota.reservations")"
[ "$RES" -ge 100 ] || die "the load made only $RES reservations before the crash ($(tail -n 5 "$TMP_BASE/reserve.out"))"
PROBLEMS="$(val "SELECT count(*) FROM quota.verify()")"
[ "$PROBLEMS" = 0 ] || { val "SELECT string_agg(subject || ': ' || problem, E'\n') FROM quota.verify()" >&2; die "after the crash quota.verify() reports $PROBLEMS problems"; }
OPEN="$(val "SELECT count(*) FROM quota.reservations WHERE status = 'held'")"
log "load before the crash: $(grep -E 'aborted|error|transactions' "$TMP_BASE/reserve.out" | head -3 | tr '\n' ' ')"
ok "after the crash: $RES reservations ($OPEN_AT_CRASH open when it crashed, $OPEN open now), quota.verify() clean"
for _ in $(seq 1 300); do
    OPEN="$(val "SELECT count(*) FROM quota.reservations WHERE status = 'held'")"
    [ "$OPEN" = 0 ] && break
    sleep 0.1
done
[ "$OPEN" = 0 ] || die "$OPEN holds are still open 30 s after the restart (the worker should expire them)"
STATE="$(val "SELECT (SELECT coalesce(sum(held_credits), 0) FROM quota.wallets) || '/' || \
    (SELECT held_quota FROM quota.organizations WHERE id = 'crash-org') || '/' || \
    (SELECT count(*) FROM quota.wallets WHERE balance < 0) || '/' || (SELECT count(*) FROM quota.verify())")"
[ "$STATE" = "0/0/0/0" ] || die "after expiry: held credits / org held / negative balances / problems = $STATE (want 0/0/0/0)"
ENDS="$(val "SELECT string_agg(status || ' ' || n, ', ' ORDER BY status) FROM (SELECT status, count(*) AS n FROM quota.reservations GROUP BY status) s")"
REFUSED="$(val "SELECT coalesce(string_agg(code || ' ' || n, ', ' ORDER BY code), 'none') FROM public.fault_refusals")"
ok "every hold ended once ($ENDS; refusals before the crash: $REFUSED); no held credits left, verify() clean"

# ---------------------------------------------------------------------------------------------
# The AiGateway down: the relay retries, gives up (execution failed, credit kept), and a retry
# once the gateway is back delivers exactly once.
build_sidecar debug
SIDECAR_BIN="$(bin_path debug quota-sidecar)"
ROLE="$(sidecar_role "$SOCK" "$PORT" "$DB")"
MOCK_BIN="$(bin_path debug aigateway-mock)"
GW_PORT="$(free_port 23000 23999)"
CRED="$(random_hex 16)"
val "ALTER DATABASE $DB RESET quota.relay" >/dev/null
val "SELECT quota.create_user('gw_down')" >/dev/null
GW_SID="$(val "SELECT quota.create_strategy('{\"name\":\"gw-down\",\"type\":\"single\",\"amount\":3,\"condition\":\"match-user(gw_down)\"}') ->> 'id'")"
[ "$(val "SELECT recharged FROM quota.scan(NULL, true, $GW_SID)")" = 1 ] || die "the gw-down strategy did not recharge"
log "relay against a gateway that is down (127.0.0.1:$GW_PORT)"
start_bg "$TMP_BASE/sidecar.pid" "$TMP_BASE/sidecar.log" env \
    QUOTA_LISTEN="127.0.0.1:$(free_port 24000 24999)" \
    QUOTA_DATABASE_URL="host=$SOCK port=$PORT user=$ROLE dbname=$DB" \
    QUOTA_AIGATEWAY_URL="http://127.0.0.1:$GW_PORT" QUOTA_AIGATEWAY_CREDENTIAL="$CRED" \
    QUOTA_RELAY_MAX_ATTEMPTS=3 QUOTA_RELAY_TIMEOUT_MS=500 QUOTA_RELAY_BACKOFF_BASE_MS=50 \
    QUOTA_RELAY_BACKOFF_MAX_MS=200 QUOTA_RELAY_LEASE_S=2 QUOTA_RELAY_POLL_MS=100 \
    "$SIDECAR_BIN"
on_exit "stop_pid '$TMP_BASE/sidecar.pid' quota-sidecar"
state=""
for _ in $(seq 1 100); do
    state="$(val "SELECT status || ' ' || attempts FROM quota.executions WHERE strategy_id = $GW_SID")"
    case "$state" in failed*) break ;; esac
    sleep 0.1
done
case "$state" in
    "failed 3") ok "gateway down: the execution failed after 3 attempts" ;;
    *) tail -n 20 "$TMP_BASE/sidecar.log" >&2; die "gateway down: execution is '$state', want 'failed 3'" ;;
esac
[ "$(val "SELECT balance FROM quota.wallets WHERE user_id = 'gw_down'")" = 3 ] || die "the credit did not stay"
[ "$(val "SELECT count(*) FROM quota.verify()")" = 0 ] || die "quota.verify() is not clean"

log "the gateway comes back; retrying the execution"
start_bg "$TMP_BASE/mock.pid" "$TMP_BASE/mock.log" env \
    AIGATEWAY_MOCK_LISTEN="127.0.0.1:$GW_PORT" AIGATEWAY_MOCK_CREDENTIAL="$CRED" "$MOCK_BIN"
on_exit "stop_pid '$TMP_BASE/mock.pid' aigateway-mock"
wait_http "http://127.0.0.1:$GW_PORT/health" 30 "$TMP_BASE/mock.pid" aigateway-mock || die "the mock did not start"
val "SELECT quota.retry_execution(id) FROM quota.executions WHERE strategy_id = $GW_SID" >/dev/null
for _ in $(seq 1 100); do
    state="$(val "SELECT status FROM quota.executions WHERE strategy_id = $GW_SID")"
    [ "$state" = completed ] && break
    sleep 0.1
done
[ "$state" = completed ] || die "after the retry the execution is '$state', want completed"
DELTAS="$(curl -s "http://127.0.0.1:$GW_PORT/mock/deltas?consumer=gw_down")"
grep -q '"count":1' <<<"$DELTAS" || die "the gateway received: $DELTAS (want one delta)"
ok "gateway back: one delta delivered after the retry, execution completed, credit once"
