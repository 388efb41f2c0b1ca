#!/usr/bin/env bash
# Benchmark of the recharge scan (issue 3): quota.scan() vs the same writes by hand.
#
#   scripts/bench_scan.sh                  (BENCH_SCAN_USERS=1000000 by default)
#
# - installs the extension (release) into the private PostgreSQL of the tests (use_test_pg in
#   lib.sh; a running scripts/run.sh system is not touched); throwaway cluster on port 55436 (scheduler off, so only
#   this script scans);
# - sql/bench/scan_setup.sql: N users generated in SQL, and(is-vip(1), github-star("zgsm"))
#   matching every 10th;
# - times, in one run on the same data: (b) the hand-written statement (sql/bench/scan_baseline.sql),
#   (a) quota.scan() of a single strategy with that condition, (b) again; a/b uses the mean of b;
# - reports the scanning backend's peak memory (VmHWM, which includes the shared buffers it
#   touched, and RssAnon, its private memory) and the condition language's rates;
# - checks quota.verify() and stops everything.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NUSERS="${BENCH_SCAN_USERS:-1000000}"
PORT="${BENCH_SCAN_PORT:-55436}"
DB=pg_quota_bench_scan

case "${1:-}" in -h | --help) usage_of "$0"; exit 0 ;; esac
install_cleanup_trap

header "dependencies and build (release)"
ensure_deps
use_test_pg
install_extension release

header "cluster (port $PORT)"
throwaway_cluster bench_scan "$PORT" "$DB" "quota.scheduler_enabled = off" "shared_buffers = 512MB"
SOCK="$TMP_SOCK"
psqlb() { psql_cmd "$SOCK" "$PORT" "$DB" "$@"; }

log "generating $NUSERS users"
psqlb -v nusers="$NUSERS" -f "$REPO/sql/bench/scan_setup.sql" >/dev/null
MATCHING="$(psql_val "$SOCK" "$PORT" "$DB" "SELECT count(*) FROM quota.match_users('and(is-vip(1), github-star(\"zgsm\"))')")"
log "$MATCHING users match"

# time_ms SQL-FILE-OR-COMMAND...: runs psql with \timing and prints the last statement's time.
time_ms() {
    psqlb -c CHECKPOINT >/dev/null
    psqlb "$@" 2>&1 | awk '/^Time: / { t = $2 } END { print t }'
}

header "baseline (hand-written), run 1"
B1="$(time_ms -c '\timing on' -v sid=-1 -f "$REPO/sql/bench/scan_baseline.sql")"
echo "$B1 ms"

header "quota.scan()"
SID="$(psql_val "$SOCK" "$PORT" "$DB" \
    "SELECT quota.create_strategy('{\"name\":\"bench\",\"type\":\"single\",\"amount\":10,\"condition\":\"and(is-vip(1), github-star(\\\"zgsm\\\"))\"}') ->> 'id'")"
psqlb -c CHECKPOINT >/dev/null
SCAN_OUT="$(psqlb -f - 2>&1 <<SQL
SELECT pg_backend_pid() AS pid \\gset
\\timing on
SELECT recharged FROM quota.scan('2030-01-01 00:00:00+00') WHERE strategy_id = $SID;
\\timing off
\\setenv SCAN_PID :pid
\\! grep -E '^(VmHWM|RssAnon)' /proc/\$SCAN_PID/status
SQL
)"
echo "$SCAN_OUT"
A="$(awk '/^Time: / { t = $2 } END { print t }' <<<"$SCAN_OUT")"
HWM="$(awk '/^VmHWM/ { print $2, $3 }' <<<"$SCAN_OUT")"
ANON="$(awk '/^RssAnon/ { print $2, $3 }' <<<"$SCAN_OUT")"

header "baseline (hand-written), run 2"
B2="$(time_ms -c '\timing on' -v sid=-2 -f "$REPO/sql/bench/scan_baseline.sql")"
echo "$B2 ms"

header "condition language throughput"
COND_OUT="$(cd "$REPO" && cargo run --release -q -p pg_quota_core --example condition_bench)"

PROBLEMS="$(psql_val "$SOCK" "$PORT" "$DB" "SELECT count(*) FROM quota.verify()")"
EXECS="$(psql_val "$SOCK" "$PORT" "$DB" "SELECT count(*) FROM quota.executions WHERE strategy_id = $SID")"
OUTBOX="$(psql_val "$SOCK" "$PORT" "$DB" "SELECT count(*) FROM quota.outbox o JOIN quota.executions e ON e.id = o.execution_id WHERE e.strategy_id = $SID")"
[ "$PROBLEMS" = 0 ] || die "quota.verify() reports $PROBLEMS problem(s)"
if [ "$EXECS" != "$MATCHING" ] || [ "$OUTBOX" != "$MATCHING" ]; then
    die "scan wrote $EXECS executions and $OUTBOX outbox rows for $MATCHING matching users"
fi

REPORT="$(
    echo "Scan benchmark: \`scripts/bench_scan.sh\` ($(date -u '+%Y-%m-%d'), $(nproc) CPU cores, $NUSERS users, $MATCHING matching)."
    echo
    echo "| | time | users recharged (credit, execution, outbox row each) |"
    echo "|---|---:|---:|"
    echo "| (a) \`quota.scan()\`, condition compiled to a SQL predicate | $A ms | $EXECS |"
    echo "| (b) hand-written statement, same writes, literal WHERE (run 1 / run 2) | $B1 / $B2 ms | $MATCHING each |"
    awk -v a="$A" -v b1="$B1" -v b2="$B2" 'BEGIN { printf "| b/a (target >= 0.5) | %.2f | |\n", ((b1 + b2) / 2) / a }'
    echo
    echo "Scanning backend memory after the scan: VmHWM $HWM (includes the shared buffers it touched), RssAnon $ANON."
    echo
    echo "$COND_OUT"
)"
header "results"
echo "$REPORT"
mkdir -p "$REPO/.test-run"
echo "$REPORT" >"$REPO/.test-run/bench_scan.md"
