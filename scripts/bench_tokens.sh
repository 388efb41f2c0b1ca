#!/usr/bin/env bash
# Benchmark of token verification (issue 12): quota.verify_token against bare-SQL baselines, and
# POST /flow/verify over HTTP.
#
#   scripts/bench_tokens.sh          (BENCH_SECONDS=10 BENCH_ROUNDS=3 BENCH_CLIENTS="1 4 16")
#
# - installs the extension (release) into the private PostgreSQL of the tests (use_test_pg in
#   lib.sh; a running scripts/run.sh system is not touched) and builds the sidecar (release);
# - throwaway cluster on port 55439 (db pg_quota_bench_tokens);
# - sql/bench/tokens_setup.sql: 500 count tokens and 500 time tokens, each limited to 1000 per
#   minute with a burst of 1000 (the rate limiter holds all 1000: quota.rate_limit_entries 1024);
# - pgbench -M prepared at 1, 4, 16 clients, each figure the median of BENCH_ROUNDS runs,
#   extension and baseline interleaved:
#     (v)  sql/bench/verify_count.sql           verify on a count token (rate limit + durable write)
#     (vb) sql/bench/verify_count_baseline.sql  the same durable write in bare SQL (target v/vb >= 0.8)
#     (t)  sql/bench/verify_time.sql            verify on a time token (rate limit, no write)
#     (tb) sql/bench/verify_time_baseline.sql   SELECT 1 given the same input (target t/tb >= 0.7)
# - HTTP: the sidecar, wrk -t2 -c16 --latency -s sql/bench/verify.lua on POST /flow/verify with
#   random count tokens, compared with (v) at 16 clients (target >= 0.5), with p50 and p99;
# - prints a Markdown table (also .test-run/bench_tokens.md) and checks quota.verify().
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECS="${BENCH_SECONDS:-10}"
ROUNDS="${BENCH_ROUNDS:-3}"
read -r -a CLIENTS <<<"${BENCH_CLIENTS:-1 4 16}"
NTOKENS="${BENCH_TOKENS:-500}"
HTTP_CONNS="${BENCH_HTTP_CONNECTIONS:-16}"
PORT="${BENCH_PORT:-55439}"
DB=pg_quota_bench_tokens
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
throwaway_cluster bench_tokens "$PORT" "$DB"
SOCK="$TMP_SOCK"
BASE="$TMP_BASE"
psqlb() { psql_cmd "$SOCK" "$PORT" "$DB" "$@"; }
val() { psql_val "$SOCK" "$PORT" "$DB" "$1"; }
log "creating $NTOKENS count tokens and $NTOKENS time tokens"
psqlb -v ntokens="$NTOKENS" -f "$REPO/sql/bench/tokens_setup.sql" >/dev/null

# pgbench_run SCRIPT CLIENTS SECONDS -> prints tps
pgbench_run() {
    psqlb -c "VACUUM quota.tokens, quota.token_logs" -c CHECKPOINT >/dev/null
    pgbench_tps "$SOCK" "$PORT" "$DB" "$1" "$2" "$3" -D ntokens="$NTOKENS"
}

header "smoke test"
before="$(val "SELECT count(*) FROM quota.token_logs WHERE kind = 'consume'")"
"$PG_BIN/pgbench" -n -M prepared -t 5 -c 1 -f "$REPO/sql/bench/verify_count.sql" -D ntokens="$NTOKENS" \
    -h "$SOCK" -p "$PORT" -U postgres "$DB" >/dev/null
"$PG_BIN/pgbench" -n -M prepared -t 5 -c 1 -f "$REPO/sql/bench/verify_count_baseline.sql" -D ntokens="$NTOKENS" \
    -h "$SOCK" -p "$PORT" -U postgres "$DB" >/dev/null
after="$(val "SELECT count(*) FROM quota.token_logs WHERE kind = 'consume'")"
[ $((after - before)) = 10 ] || die "expected 10 consume rows from the smoke test, found $((after - before))"
[ "$(val "SELECT bool_and(valid) FROM (SELECT (quota.verify_token(token)).valid FROM public.bench_tokens WHERE i <= 3) v")" = t ] ||
    die "a bench token does not verify"
ok "both count scripts write one decrement and one log row per transaction; tokens verify"

header "warm-up"
for s in verify_count.sql verify_count_baseline.sql verify_time.sql verify_time_baseline.sql; do
    pgbench_run "$s" 4 3 >/dev/null
done

declare -A TPS RUNS
PAIRS=("v:verify_count.sql vb:verify_count_baseline.sql" "t:verify_time.sql tb:verify_time_baseline.sql")
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
ROLE="$(sidecar_role "$SOCK" "$PORT" "$DB")"
start_bg "$BASE/sidecar.pid" "$BASE/sidecar.log" env \
    QUOTA_LISTEN="127.0.0.1:$HPORT" \
    QUOTA_DATABASE_URL="host=$SOCK port=$PORT user=$ROLE dbname=$DB" \
    QUOTA_ADMIN_TOKEN="$(random_hex 32)" QUOTA_SERVICE_TOKEN="$(random_hex 32)" \
    QUOTA_DB_POOL_SIZE="$HTTP_CONNS" RUST_LOG=warn "$SIDECAR_BIN"
on_exit "stop_pid '$BASE/sidecar.pid' quota-sidecar"
if ! wait_http "http://127.0.0.1:$HPORT/health" 60 "$BASE/sidecar.pid" quota-sidecar; then
    tail -n 30 "$BASE/sidecar.log" >&2 || true
    die "sidecar did not start"
fi
psqlb -At -c "SELECT token FROM public.bench_tokens WHERE kind = 'count' ORDER BY i" >"$BASE/tokens.txt"
URL="http://127.0.0.1:$HPORT/flow/verify"
code="$(curl -s -o "$BASE/probe.json" -w '%{http_code}' -X POST "$URL" -H "Authorization: Bearer $(head -n 1 "$BASE/tokens.txt")")"
[ "$code" = 200 ] || { cat "$BASE/probe.json" >&2; die "probe verify over HTTP answered $code"; }
WRK_THREADS=$((NCPU < 2 ? 1 : 2))
wrk_run() {
    env BENCH_TOKENS_FILE="$BASE/tokens.txt" \
        wrk -t"$WRK_THREADS" -c"$HTTP_CONNS" -d"${1}s" --latency -s "$REPO/sql/bench/verify.lua" "$URL"
}
wrk_run 3 >/dev/null
psqlb -c CHECKPOINT >/dev/null
WRK_OUT="$(wrk_run "$SECS")"
echo "$WRK_OUT"
RPS="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$WRK_OUT")"
P50="$(awk '$1 == "50%" { print $2 }' <<<"$WRK_OUT")"
P99="$(awk '$1 == "99%" { print $2 }' <<<"$WRK_OUT")"
NON2XX="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$WRK_OUT")"
NON2XX="${NON2XX:-0}"
[ -n "$RPS" ] || die "could not read wrk's output"

header "consistency"
PROBLEMS="$(val "SELECT count(*) FROM quota.verify()")"
echo "quota.verify(): $PROBLEMS problem(s)"

V16="${TPS[v-16]:-}"
PGV="$(val "SHOW server_version")"
REPORT="$(
    echo "Benchmark: \`scripts/bench_tokens.sh\` ($(date -u '+%Y-%m-%d'), $NCPU CPU cores, PostgreSQL $PGV, $NTOKENS count and $NTOKENS time tokens with a rate limit, pgbench -M prepared; each figure is the median of $ROUNDS runs of ${SECS} s, extension and baseline interleaved)."
    echo
    echo "| clients | (v) verify, count token tps | (vb) bare SQL, same write | v/vb (target 0.8) | (t) verify, time token tps | (tb) \`SELECT 1\` | t/tb (target 0.7) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    for c in "${CLIENTS[@]}"; do
        echo "| $c | $(fmt "${TPS[v-$c]}") | $(fmt "${TPS[vb-$c]}") | $(ratio "${TPS[v-$c]}" "${TPS[vb-$c]}") | $(fmt "${TPS[t-$c]}") | $(fmt "${TPS[tb-$c]}") | $(ratio "${TPS[t-$c]}" "${TPS[tb-$c]}") |"
    done
    echo
    echo "| HTTP \`POST /flow/verify\` (wrk, $HTTP_CONNS connections, count tokens) | requests/s | p50 | p99 | HTTP / (v) at 16 clients (target 0.5) |"
    echo "|---|---:|---:|---:|---:|"
    echo "| random token of $NTOKENS | $(fmt "$RPS") | $P50 | $P99 | $(if [ -n "$V16" ]; then ratio "$RPS" "$V16"; else echo n/a; fi) |"
    echo
    echo "HTTP: $NON2XX non-2xx answers. quota.verify(): $PROBLEMS problem(s)."
)"
header "results"
echo "$REPORT"
mkdir -p "$REPO/.test-run"
echo "$REPORT" >"$REPO/.test-run/bench_tokens.md"
[ "$PROBLEMS" = 0 ] || die "quota.verify() reports $PROBLEMS problem(s) after the benchmark"
