#!/usr/bin/env bash
# Benchmark of the credit ledger: quota.charge vs the bare SQL doing the same writes, and over HTTP.
#
#   scripts/bench.sh                 (BENCH_SECONDS=15 BENCH_CLIENTS="1 4 16" by default)
#   BENCH_SECONDS=30 BENCH_ROUNDS=5 scripts/bench.sh   (each case is the median of BENCH_ROUNDS runs, default 7)
#   BENCH_PG_CONF="synchronous_commit=off" scripts/bench.sh    extra postgresql.conf lines (';'-separated)
#
# What it does (all in one run, on the same data):
#   - installs the extension (release) into the private PostgreSQL of the tests (use_test_pg in
#     lib.sh; a running scripts/run.sh system is not touched) and builds the sidecar (release, in
#     <target>/test);
#   - throwaway cluster in /tmp/pg_quota-bench.XXXXXX on port 55435, db pg_quota_bench;
#   - sql/bench/setup.sql: 10k users (quota.import_users) with 1e12 credits each (quota.bonus);
#   - pgbench -M prepared -T $BENCH_SECONDS at 1, 4, 16 clients, for
#       (a) sql/bench/charge.sql    SELECT quota.charge(...) on a random user
#       (b) sql/bench/baseline.sql  the same writes in bare SQL, one statement (the floor)
#       (b2) sql/bench/baseline_txn.sql  the same writes as an explicit transaction, two statements
#     on random users of 10k and on one hot user (all clients on user_1);
#   - HTTP: the sidecar on a free port (connecting as the role quota_sidecar), wrk -t2 -c16 --latency -s sql/bench/charge.lua against
#     POST /api/internal/credits/charge (random users), compared with (a) at 16 clients;
#   - the condition language's parse and evaluation rates (extension/core/examples/condition_bench.rs);
#   - prints a Markdown table (also saved to .test-run/bench.md), checks quota.verify(), and stops
#     everything it started.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECS="${BENCH_SECONDS:-15}"
ROUNDS="${BENCH_ROUNDS:-7}"
read -r -a CLIENTS <<<"${BENCH_CLIENTS:-1 4 16}"
HTTP_CONNS="${BENCH_HTTP_CONNECTIONS:-16}"
NUSERS="${BENCH_USERS:-10000}"
PORT="${BENCH_PORT:-55435}"
DB=pg_quota_bench
RUN="r$(date +%s)"
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

header "condition language throughput"
COND_OUT="$(cd "$REPO" && cargo run --release -q -p pg_quota_core --example condition_bench)"
echo "$COND_OUT"

header "cluster (port $PORT)"
EXTRA_CONF=()
if [ -n "${BENCH_PG_CONF:-}" ]; then
    IFS=';' read -r -a EXTRA_CONF <<<"$BENCH_PG_CONF"
fi
throwaway_cluster bench "$PORT" "$DB" "${EXTRA_CONF[@]}"
SOCK="$TMP_SOCK"
BASE="$TMP_BASE"
psqlb() { psql_cmd "$SOCK" "$PORT" "$DB" "$@"; }

log "loading $NUSERS users with 1e12 credits each"
psqlb -v nusers="$NUSERS" -f "$REPO/sql/bench/setup.sql" >/dev/null

# pgbench_run SCRIPT CLIENTS NUSERS SECONDS TAG -> prints tps
pgbench_run() {
    local script="$1" c="$2" n="$3" secs="$4" tag="$5"
    psqlb -c "VACUUM quota.wallets, quota.ledger" -c CHECKPOINT >/dev/null
    pgbench_tps "$SOCK" "$PORT" "$DB" "$script" "$c" "$secs" -D run="$RUN-$tag" -D seq=0 -D nusers="$n"
}

# round_ratios "A1 A2 .." "B1 B2 .." -> "min-max" of the per-round ratios Ai/Bi (the runs of one
# round are adjacent in time, so this shows how far the machine's drift moves a single pair)
round_ratios() {
    awk -v a="$1" -v b="$2" 'BEGIN { n = split(a, x, " "); split(b, y, " "); lo = 1e9; hi = -1
        for (i = 1; i <= n; i++) if (y[i] > 0) { r = x[i] / y[i]; if (r < lo) lo = r; if (r > hi) hi = r }
        if (hi < 0) print "n/a"; else printf "%.2f-%.2f", lo, hi }'
}

header "smoke test of both scripts"
pgbench_smoke() {
    local script="$1" letter="$2" rows
    "$PG_BIN/pgbench" -n -M prepared -t 5 -c 1 -f "$REPO/sql/bench/$script" \
        -D run="$RUN-smoke" -D seq=0 -D nusers="$NUSERS" -h "$SOCK" -p "$PORT" -U postgres "$DB" >/dev/null
    rows="$(psql_val "$SOCK" "$PORT" "$DB" \
        "SELECT count(*) FROM quota.ledger WHERE operation_id LIKE '$RUN-smoke-$letter-%' AND transaction_type = 'charge' AND credits = -1")"
    [ "$rows" = 5 ] || die "$script: expected 5 charges of 1 credit in the ledger, found $rows"
}
pgbench_smoke charge.sql a
pgbench_smoke baseline.sql b
pgbench_smoke baseline_txn.sql c
ok "the three scripts write one 1-credit charge per transaction"

header "warm-up"
pgbench_run charge.sql 4 "$NUSERS" 3 warm >/dev/null
pgbench_run baseline.sql 4 "$NUSERS" 3 warm >/dev/null
pgbench_run baseline_txn.sql 4 "$NUSERS" 3 warm >/dev/null

# Every case runs BENCH_ROUNDS times, the three scripts interleaved in a rotating order, and the
# table reports each case's median: single 10 s runs on a small VM vary by +-15%, mostly with
# I/O and background work, and (a) and (b) must see the same conditions.
declare -A TPS RUNS
SCRIPTS=(a:charge.sql b:baseline.sql c:baseline_txn.sql)
for r in $(seq 1 "$ROUNDS"); do
    for c in "${CLIENTS[@]}"; do
        for w in random hot; do
            n="$NUSERS"
            [ "$w" = hot ] && n=1
            header "round $r/$ROUNDS pgbench: $w, $c clients, ${SECS}s"
            for k in 0 1 2; do
                i=$(((k + r - 1) % 3))
                letter="${SCRIPTS[$i]%%:*}"
                script="${SCRIPTS[$i]#*:}"
                t="$(pgbench_run "$script" "$c" "$n" "$SECS" "$letter$w$c-$r")"
                RUNS[$letter-$w-$c]+=" $t"
                echo "($letter) $script: $t tps"
            done
        done
    done
done
for key in "${!RUNS[@]}"; do
    TPS[$key]="$(median "${RUNS[$key]}")"
done
for c in "${CLIENTS[@]}"; do
    for w in random hot; do
        printf '%s %s clients: (a) %s tps   (b) %s tps   (b2) %s tps   a/b %s   a/b2 %s   runs a [%s ] b [%s ]\n' \
            "$w" "$c" "${TPS[a-$w-$c]}" "${TPS[b-$w-$c]}" "${TPS[c-$w-$c]}" \
            "$(ratio "${TPS[a-$w-$c]}" "${TPS[b-$w-$c]}")" "$(ratio "${TPS[a-$w-$c]}" "${TPS[c-$w-$c]}")" \
            "${RUNS[a-$w-$c]}" "${RUNS[b-$w-$c]}"
    done
done

# ---------------------------------------------------------------------------------------------
header "HTTP: sidecar + wrk ($HTTP_CONNS connections, ${SECS}s)"
HPORT="$(free_port 22000 22999)"
SERVICE_TOKEN="$(random_hex 32)"
ROLE="$(sidecar_role "$SOCK" "$PORT" "$DB")"
start_bg "$BASE/sidecar.pid" "$BASE/sidecar.log" env \
    QUOTA_LISTEN="127.0.0.1:$HPORT" \
    QUOTA_DATABASE_URL="host=$SOCK port=$PORT user=$ROLE dbname=$DB" \
    QUOTA_ADMIN_TOKEN="$(random_hex 32)" QUOTA_SERVICE_TOKEN="$SERVICE_TOKEN" \
    QUOTA_DB_POOL_SIZE="${BENCH_POOL_SIZE:-$HTTP_CONNS}" \
    RUST_LOG=warn "$SIDECAR_BIN"
on_exit "stop_pid '$BASE/sidecar.pid' quota-sidecar"
if ! wait_http "http://127.0.0.1:$HPORT/health" 60 "$BASE/sidecar.pid" quota-sidecar; then
    tail -n 30 "$BASE/sidecar.log" >&2 || true
    die "sidecar did not start"
fi
URL="http://127.0.0.1:$HPORT/api/internal/credits/charge"
code="$(curl -s -o "$BASE/probe.json" -w '%{http_code}' -X POST "$URL" -H "X-Service-Token: $SERVICE_TOKEN" \
    -H 'Content-Type: application/json' -d "{\"user_id\":\"user_1\",\"cost_usd\":0.0001,\"operation_id\":\"$RUN-probe\"}")"
[ "$code" = 200 ] || { cat "$BASE/probe.json" >&2; die "probe charge over HTTP answered $code"; }

WRK_THREADS=$((NCPU < 2 ? 1 : 2))
wrk_run() {
    local secs="$1" tag="$2"
    env BENCH_SERVICE_TOKEN="$SERVICE_TOKEN" BENCH_RUN="$RUN-$tag" BENCH_NUSERS="$NUSERS" \
        wrk -t"$WRK_THREADS" -c"$HTTP_CONNS" -d"${secs}s" --latency -s "$REPO/sql/bench/charge.lua" "$URL"
}
wrk_run 3 hwarm >/dev/null
psqlb -c CHECKPOINT >/dev/null
WRK_OUT="$(wrk_run "$SECS" http)"
echo "$WRK_OUT"
RPS="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$WRK_OUT")"
P50="$(awk '$1 == "50%" { print $2 }' <<<"$WRK_OUT")"
P99="$(awk '$1 == "99%" { print $2 }' <<<"$WRK_OUT")"
TOTAL="$(awk '/requests in/ { print $1 }' <<<"$WRK_OUT")"
NON2XX="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$WRK_OUT")"
NON2XX="${NON2XX:-0}"
ERRS="$(awk '/Socket errors:/ { print }' <<<"$WRK_OUT")"
[ -n "$RPS" ] || die "could not read wrk's output"
RECORDED="$(psql_val "$SOCK" "$PORT" "$DB" "SELECT count(*) FROM quota.ledger WHERE operation_id LIKE '$RUN-http-%'")"

header "consistency"
PROBLEMS="$(psql_val "$SOCK" "$PORT" "$DB" "SELECT count(*) FROM quota.verify()")"
LEDGER_ROWS="$(psql_val "$SOCK" "$PORT" "$DB" "SELECT count(*) FROM quota.ledger")"
echo "quota.verify(): $PROBLEMS problem(s); ledger rows: $LEDGER_ROWS"

# ---------------------------------------------------------------------------------------------
A16="${TPS[a-random-16]:-}"
PGV="$(psql_val "$SOCK" "$PORT" "$DB" "SHOW server_version")"
SYNC="$(psql_val "$SOCK" "$PORT" "$DB" "SHOW synchronous_commit")"
SB="$(psql_val "$SOCK" "$PORT" "$DB" "SHOW shared_buffers")"
REPORT="$(
    echo "Benchmark: \`scripts/bench.sh\` ($(date -u '+%Y-%m-%d'), $NCPU CPU cores, PostgreSQL $PGV,"
    echo "shared_buffers $SB, synchronous_commit $SYNC, $NUSERS users, pgbench -M prepared; each figure is the median of $ROUNDS runs of ${SECS} s, the three scripts interleaved)."
    echo
    echo "| workload | clients | (a) \`quota.charge\` tps | (b) bare SQL, one statement | (b2) bare SQL, explicit transaction | a/b | a/b per round | a/b2 |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for w in random hot; do
        label="random user of $NUSERS"
        [ "$w" = hot ] && label="one hot user"
        for c in "${CLIENTS[@]}"; do
            echo "| $label | $c | $(fmt "${TPS[a-$w-$c]}") | $(fmt "${TPS[b-$w-$c]}") | $(fmt "${TPS[c-$w-$c]}") | $(ratio "${TPS[a-$w-$c]}" "${TPS[b-$w-$c]}") | $(round_ratios "${RUNS[a-$w-$c]}" "${RUNS[b-$w-$c]}") | $(ratio "${TPS[a-$w-$c]}" "${TPS[c-$w-$c]}") |"
        done
    done
    echo
    echo "| HTTP \`POST /api/internal/credits/charge\` (wrk, $HTTP_CONNS connections) | requests/s | p50 | p99 | HTTP / (a) at 16 clients |"
    echo "|---|---:|---:|---:|---:|"
    echo "| random user of $NUSERS | $(fmt "$RPS") | $P50 | $P99 | $(if [ -n "$A16" ]; then ratio "$RPS" "$A16"; else echo n/a; fi) |"
    echo
    echo "HTTP: $TOTAL requests, $NON2XX non-2xx, $RECORDED charges recorded${ERRS:+; $ERRS}. quota.verify(): $PROBLEMS problem(s)."
    echo
    echo "$COND_OUT"
)"
header "results"
echo "$REPORT"
mkdir -p "$REPO/.test-run"
echo "$REPORT" >"$REPO/.test-run/bench.md"
echo
log "saved to .test-run/bench.md"
[ "$PROBLEMS" = 0 ] || die "quota.verify() reports $PROBLEMS problem(s) after the benchmark"
