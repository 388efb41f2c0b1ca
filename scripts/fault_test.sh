#!/usr/bin/env bash
# Fault test: the cluster restarted in the middle of a recharge scan (issue 3, SPEC 6.4).
#
#   scripts/fault_test.sh        (run by scripts/test.sh as the stage `faults`)
#
# A scan is one transaction per strategy, so a crash mid-scan must leave nothing behind: no
# executions, credits or outbox rows of that scan; the next scan recharges every matching user
# exactly once. Throwaway cluster on port 55437 with the scheduler off (only this script scans).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${FAULT_TEST_PORT:-55437}"
DB=pg_quota_faults
NUSERS="${FAULT_TEST_USERS:-500000}"

install_cleanup_trap
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

FIRST="$(val "SELECT recharged FROM quota.scan(NULL, true, $SID)")"
SECOND="$(val "SELECT recharged FROM quota.scan(NULL, true, $SID)")"
EXECS="$(val "SELECT count(*) FROM quota.executions WHERE strategy_id = $SID")"
CREDITED="$(val "SELECT count(*) FROM quota.wallets WHERE balance = 5")"
PROBLEMS="$(val "SELECT count(*) FROM quota.verify()")"
[ "$FIRST/$SECOND/$EXECS/$CREDITED/$PROBLEMS" = "$MATCHING/0/$MATCHING/$MATCHING/0" ] ||
    die "after restart: scans recharged $FIRST then $SECOND, $EXECS executions, $CREDITED credited wallets, $PROBLEMS problems (want $MATCHING/0/$MATCHING/$MATCHING/0)"
ok "the next scan recharged all $MATCHING matching users once, a rerun none; quota.verify() clean"
