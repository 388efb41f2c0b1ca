#!/usr/bin/env bash
# Benchmark of two-phase consumption (issue 11): quota.reserve + quota.settle vs the bare SQL
# doing the same writes.
#
#   scripts/bench_reserve.sh          (BENCH_SECONDS=10 BENCH_ROUNDS=3 BENCH_CLIENTS="1 4 16")
#
# - installs the extension (release) into the private PostgreSQL of the tests (use_test_pg in
#   lib.sh; a running scripts/run.sh system is not touched);
# - throwaway cluster on port 55438 (db pg_quota_bench_reserve);
# - sql/bench/reserve_setup.sql: 100 prepaid organizations, 10k limited users spread over them,
#   1e12 credits each;
# - pgbench -M prepared at 1, 4, 16 clients, each transaction pair a hold of 2 credits settled at 1:
#     (r)  sql/bench/reserve.sql           quota.reserve, then quota.settle
#     (rb) sql/bench/reserve_baseline.sql  the same writes in bare SQL, one statement per step
#   on random users of all organizations, and on the users of one organization (every step
#   updates that organization's row: they serialize on it); a deadlock of the bare SQL (its CTEs
#   lock the wallet and the organization in no fixed order) is retried (--max-tries=10), any
#   failure left fails the run;
# - each figure is the median of BENCH_ROUNDS runs, (r) and (rb) interleaved; prints a Markdown
#   table (also .test-run/bench_reserve.md) and checks quota.verify().
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECS="${BENCH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-3}"
read -r -a CLIENTS <<<"${BENCH_CLIENTS:-1 4 16}"
NUSERS="${BENCH_USERS:-10000}"
NORGS="${BENCH_ORGS:-100}"
PORT="${BENCH_PORT:-55438}"
DB=pg_quota_bench_reserve
RUN="r$(date +%s)"
NCPU="$(nproc)"

case "${1:-}" in -h | --help) usage_of "$0"; exit 0 ;; esac
install_cleanup_trap

header "dependencies and build (release)"
ensure_deps
use_test_pg
install_extension release

header "cluster (port $PORT)"
throwaway_cluster bench_reserve "$PORT" "$DB"
SOCK="$TMP_SOCK"
psqlb() { psql_cmd "$SOCK" "$PORT" "$DB" "$@"; }
val() { psql_val "$SOCK" "$PORT" "$DB" "$1"; }
log "loading $NORGS organizations and $NUSERS users"
psqlb -v nusers="$NUSERS" -v norgs="$NORGS" -f "$REPO/sql/bench/reserve_setup.sql" >/dev/null

# pgbench_run SCRIPT CLIENTS STRIDE SECONDS TAG -> prints the transaction pairs per second
pgbench_run() {
    local script="$1" c="$2" stride="$3" secs="$4" tag="$5"
    psqlb -c "VACUUM quota.wallets, quota.organizations, quota.reservations" -c CHECKPOINT >/dev/null
    pgbench_tps "$SOCK" "$PORT" "$DB" "$script" "$c" "$secs" --max-tries=10 \
        -D run="$RUN-$tag" -D seq=0 -D nusers="$NUSERS" -D stride="$stride"
}

header "smoke test of both scripts"
for s in reserve.sql:r reserve_baseline.sql:rb; do
    "$PG_BIN/pgbench" -n -M prepared -t 5 -c 1 -f "$REPO/sql/bench/${s%%:*}" -D run="$RUN-smoke" -D seq=0 \
        -D nusers="$NUSERS" -D stride=1 -h "$SOCK" -p "$PORT" -U postgres "$DB" >/dev/null
    n="$(val "SELECT count(*) FROM quota.reservations WHERE operation_id LIKE '$RUN-smoke-${s#*:}-%' AND status = 'settled' AND charged_credits = 1")"
    [ "$n" = 5 ] || die "${s%%:*}: expected 5 settled reservations, found $n"
done
[ "$(val "SELECT count(*) FROM quota.verify()")" = 0 ] || die "quota.verify() is not clean after the smoke test"
ok "both scripts hold 2 and settle 1, five times; quota.verify() clean"

header "warm-up"
pgbench_run reserve.sql 4 1 3 warm >/dev/null
pgbench_run reserve_baseline.sql 4 1 3 warm >/dev/null

declare -A TPS RUNS
for r in $(seq 1 "$ROUNDS"); do
    for c in "${CLIENTS[@]}"; do
        for w in spread oneorg; do
            stride=1
            [ "$w" = oneorg ] && stride="$NORGS"
            header "round $r/$ROUNDS: $w, $c clients, ${SECS}s"
            order=(reserve.sql:r reserve_baseline.sql:rb)
            [ $((r % 2)) = 0 ] && order=(reserve_baseline.sql:rb reserve.sql:r)
            for s in "${order[@]}"; do
                t="$(pgbench_run "${s%%:*}" "$c" "$stride" "$SECS" "${s#*:}$w$c-$r")"
                RUNS[${s#*:}-$w-$c]+=" $t"
                echo "(${s#*:}) ${s%%:*}: $t pairs/s"
            done
        done
    done
done
for key in "${!RUNS[@]}"; do TPS[$key]="$(median "${RUNS[$key]}")"; done

header "consistency"
PROBLEMS="$(val "SELECT count(*) FROM quota.verify()")"
OPEN="$(val "SELECT count(*) FROM quota.reservations WHERE status = 'held'")"
echo "quota.verify(): $PROBLEMS problem(s); open holds: $OPEN"

PGV="$(val "SHOW server_version")"
REPORT="$(
    echo "Benchmark: \`scripts/bench_reserve.sh\` ($(date -u '+%Y-%m-%d'), $NCPU CPU cores, PostgreSQL $PGV, $NUSERS users in $NORGS organizations, pgbench -M prepared; each figure is the median of $ROUNDS runs of ${SECS} s, (r) and (rb) interleaved; one pair = a reserve and its settle, two transactions)."
    echo
    echo "| workload | clients | (r) \`quota.reserve\` + \`quota.settle\` pairs/s | (rb) bare SQL, same writes | r/rb |"
    echo "|---|---:|---:|---:|---:|"
    for w in spread oneorg; do
        label="random user of $NUSERS ($NORGS orgs)"
        [ "$w" = oneorg ] && label="users of one organization"
        for c in "${CLIENTS[@]}"; do
            echo "| $label | $c | $(fmt "${TPS[r-$w-$c]}") | $(fmt "${TPS[rb-$w-$c]}") | $(ratio "${TPS[r-$w-$c]}" "${TPS[rb-$w-$c]}") |"
        done
    done
    echo
    echo "quota.verify(): $PROBLEMS problem(s); open holds after the runs: $OPEN."
)"
header "results"
echo "$REPORT"
mkdir -p "$REPO/.test-run"
echo "$REPORT" >"$REPO/.test-run/bench_reserve.md"
[ "$PROBLEMS" = 0 ] || die "quota.verify() reports $PROBLEMS problem(s) after the benchmark"
[ "$OPEN" = 0 ] || die "$OPEN holds are still open after the benchmark"
