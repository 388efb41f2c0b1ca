#!/usr/bin/env bash
# Benchmark of pool admission (issue 13): quota.pool_acquire + quota.pool_release pairs against
# the bare SQL doing the same writes, and the same pairs over HTTP.
#
#   scripts/bench_pools.sh          (BENCH_SECONDS=10 BENCH_ROUNDS=3 BENCH_CLIENTS="1 4 16")
#
# - installs the extension (release) into the private PostgreSQL of the tests (use_test_pg in
#   lib.sh; a running scripts/run.sh system is not touched) and builds the sidecar (release);
# - throwaway cluster on port 55440 (db pg_quota_bench_pools);
# - sql/bench/pools_setup.sql: 50 providers of 4 accounts each, every limit set but never binding;
# - pgbench -M prepared at 1, 4, 16 clients, each figure the median of BENCH_ROUNDS runs,
#   extension and baseline interleaved:
#     (p)  sql/bench/pool_pair.sql           pool_acquire, then pool_release (two transactions)
#     (pb) sql/bench/pool_pair_baseline.sql  the same writes in bare SQL (target p/pb >= 0.7)
# - HTTP: the sidecar, wrk -t2 -c16 --latency -s sql/bench/pool_pair.lua alternating
#   POST /api/v1/pool/:provider_id/acquire and POST /api/v1/pool/accounts/:account_id/release;
#   pairs per second compared with (p) at 16 clients (target >= 0.5), with p50 and p99 per request;
# - prints a Markdown table (also .test-run/bench_pools.md) and checks quota.verify().
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECS="${BENCH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-3}"
read -r -a CLIENTS <<<"${BENCH_CLIENTS:-1 4 16}"
NPROV="${BENCH_PROVIDERS:-50}"
HTTP_CONNS="${BENCH_HTTP_CONNECTIONS:-16}"
PORT="${BENCH_PORT:-55440}"
DB=pg_quota_bench_pools
NCPU="$(nproc)"

case "${1:-}" in -h | --help) usage_of "$0"; exit 0 ;; esac
install_cleanup_trap

header "dependencies and build (release)"
ensure_deps
use_test_pg
command -v wrk >/dev/null 2>&1 || die "wrk not found (apt-get install -y wrk)"
install_extension release
build_sidecar release
SIDECAR_BIN="$(bin_path release quota-sidecar)"

header "cluster (port $PORT)"
throwaway_cluster bench_pools "$PORT" "$DB"
SOCK="$TMP_SOCK"
BASE="$TMP_BASE"
psqlb() { psql_cmd "$SOCK" "$PORT" "$DB" "$@"; }
val() { psql_val "$SOCK" "$PORT" "$DB" "$1"; }
log "creating $NPROV providers of 4 accounts"
psqlb -v nprov="$NPROV" -f "$REPO/sql/bench/pools_setup.sql" >/dev/null

# pgbench_run SCRIPT CLIENTS SECONDS -> prints tps
pgbench_run() {
    psqlb -c "VACUUM quota.pool_accounts, quota.pool_leases, quota.pool_counters" -c CHECKPOINT >/dev/null
    pgbench_tps "$SOCK" "$PORT" "$DB" "$1" "$2" "$3" -D nprov="$NPROV"
}

header "smoke test"
before="$(val "SELECT count(*) FROM quota.pool_request_logs")"
for s in pool_pair.sql pool_pair_baseline.sql; do
    "$PG_BIN/pgbench" -n -M prepared -t 5 -c 1 -f "$REPO/sql/bench/$s" -D nprov="$NPROV" \
        -h "$SOCK" -p "$PORT" -U postgres "$DB" >/dev/null
done
after="$(val "SELECT count(*) FROM quota.pool_request_logs")"
[ $((after - before)) = 10 ] || die "expected 10 request logs from the smoke test, found $((after - before))"
[ "$(val "SELECT count(*) FROM quota.pool_leases WHERE status = 'held'")" = 0 ] || die "the smoke test left leases held"
ok "both scripts acquire, release and log one request per pair"

header "warm-up"
for s in pool_pair.sql pool_pair_baseline.sql; do
    pgbench_run "$s" 4 3 >/dev/null
done

declare -A TPS RUNS
PAIRS=("p:pool_pair.sql pb:pool_pair_baseline.sql")
for r in $(seq 1 "$ROUNDS"); do
    for c in "${CLIENTS[@]}"; do
        for pair in "${PAIRS[@]}"; do
            read -r -a order <<<"$pair"
            [ $((r % 2)) = 0 ] && order=("${order[1]}" "${order[0]}")
            header "round $r/$ROUNDS: $c clients, ${SECS}s"
            for s in "${order[@]}"; do
                t="$(pgbench_run "${s#*:}" "$c" "$SECS")"
                RUNS[${s%%:*}-$c]+=" $t"
                echo "(${s%%:*}) ${s#*:}: $t tps"
            done
        done
    done
done
for key in "${!RUNS[@]}"; do TPS[$key]="$(median "${RUNS[$key]}")"; done

# ---------------------------------------------------------------------------------------------
header "HTTP: sidecar + wrk ($HTTP_CONNS connections, ${SECS}s)"
HPORT="$(free_port 22000 22999)"
SERVICE_TOKEN="$(random_hex 32)"
ROLE="$(sidecar_role "$SOCK" "$PORT" "$DB")"
start_bg "$BASE/sidecar.pid" "$BASE/sidecar.log" env \
    QUOTA_LISTEN="127.0.0.1:$HPORT" \
    QUOTA_DATABASE_URL="host=$SOCK port=$PORT user=$ROLE dbname=$DB" \
    QUOTA_ADMIN_TOKEN="$(random_hex 32)" QUOTA_SERVICE_TOKEN="$SERVICE_TOKEN" \
    QUOTA_DB_POOL_SIZE="$HTTP_CONNS" RUST_LOG=warn "$SIDECAR_BIN"
on_exit "stop_pid '$BASE/sidecar.pid' quota-sidecar"
if ! wait_http "http://127.0.0.1:$HPORT/health" 60 "$BASE/sidecar.pid" quota-sidecar; then
    tail -n 30 "$BASE/sidecar.log" >&2 || true
    die "sidecar did not start"
fi
psqlb -At -c "SELECT provider_id FROM public.bench_providers ORDER BY i" >"$BASE/providers.txt"
URL="http://127.0.0.1:$HPORT"
code="$(curl -s -o "$BASE/probe.json" -w '%{http_code}' -X POST "$URL/api/v1/pool/$(head -n 1 "$BASE/providers.txt")/acquire" \
    -H "X-Service-Token: $SERVICE_TOKEN" -H 'Content-Type: application/json' -d '{"tokens_needed": 1}')"
[ "$code" = 200 ] || { cat "$BASE/probe.json" >&2; die "probe acquire over HTTP answered $code"; }
WRK_THREADS=$((NCPU < 2 ? 1 : 2))
wrk_run() {
    env BENCH_PROVIDERS_FILE="$BASE/providers.txt" BENCH_SERVICE_TOKEN="$SERVICE_TOKEN" \
        wrk -t"$WRK_THREADS" -c"$HTTP_CONNS" -d"${1}s" --latency -s "$REPO/sql/bench/pool_pair.lua" "$URL"
}
wrk_run 3 >/dev/null
psqlb -c CHECKPOINT >/dev/null
WRK_OUT="$(wrk_run "$SECS")"
echo "$WRK_OUT"
RPS="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$WRK_OUT")"
PAIRS_S="$(awk -v r="$RPS" 'BEGIN { printf "%.1f", r / 2 }')"
P50="$(awk '$1 == "50%" { print $2 }' <<<"$WRK_OUT")"
P99="$(awk '$1 == "99%" { print $2 }' <<<"$WRK_OUT")"
NON2XX="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$WRK_OUT")"
NON2XX="${NON2XX:-0}"
[ -n "$RPS" ] || die "could not read wrk's output"

header "consistency"
PROBLEMS="$(val "SELECT count(*) FROM quota.verify()")"
echo "quota.verify(): $PROBLEMS problem(s)"

P16="${TPS[p-16]:-}"
PGV="$(val "SHOW server_version")"
REPORT="$(
    echo "Benchmark: \`scripts/bench_pools.sh\` ($(date -u '+%Y-%m-%d'), $NCPU CPU cores, PostgreSQL $PGV, $NPROV providers of 4 accounts, every limit set, pgbench -M prepared; each figure is the median of $ROUNDS runs of ${SECS} s, extension and baseline interleaved; one pair = acquire + release, two transactions)."
    echo
    echo "| clients | (p) pool_acquire + pool_release pairs/s | (pb) bare SQL, same writes | p/pb (target 0.7) |"
    echo "|---:|---:|---:|---:|"
    for c in "${CLIENTS[@]}"; do
        echo "| $c | $(fmt "${TPS[p-$c]}") | $(fmt "${TPS[pb-$c]}") | $(ratio "${TPS[p-$c]}" "${TPS[pb-$c]}") |"
    done
    echo
    echo "| HTTP acquire + release (wrk, $HTTP_CONNS connections) | pairs/s | p50 per request | p99 per request | HTTP / (p) at 16 clients (target 0.5) |"
    echo "|---|---:|---:|---:|---:|"
    echo "| random provider of $NPROV | $(fmt "$PAIRS_S") | $P50 | $P99 | $(if [ -n "$P16" ]; then ratio "$PAIRS_S" "$P16"; else echo n/a; fi) |"
    echo
    echo "HTTP: $NON2XX non-2xx answers. quota.verify(): $PROBLEMS problem(s)."
)"
header "results"
echo "$REPORT"
mkdir -p "$REPO/.test-run"
echo "$REPORT" >"$REPO/.test-run/bench_pools.md"
[ "$PROBLEMS" = 0 ] || die "quota.verify() reports $PROBLEMS problem(s) after the benchmark"
