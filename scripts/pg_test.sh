#!/usr/bin/env bash
# Run the pg_test/ SQL scripts against expected output (pg_regress) on a throwaway cluster.
#
#   scripts/pg_test.sh [--accept] [--no-install] [TEST ...]
#
# - works on the private PostgreSQL of the tests (use_test_pg in lib.sh: a copy of the system one
#   in /tmp/pg_quota-testpg-<hash>/; the system PostgreSQL and a running scripts/run.sh are not
#   touched);
# - installs the extension there (debug build) unless --no-install or PG_QUOTA_SKIP_INSTALL=1;
# - starts a cluster in /tmp/pg_quota-pg_test.XXXXXX on port 55433 (pg_quota preloaded,
#   quota.database = pg_quota_regress), creates db pg_quota_regress with the extension;
# - runs pg_regress --use-existing over pg_test/sql/<TEST>.sql (all of them in name order by
#   default; they share the database, in that order) against pg_test/expected/<TEST>.out;
# - results go to .test-run/pg_test/ (results/*.out, regression.diffs), kept for inspection;
# - --accept copies results/<TEST>.out over pg_test/expected/<TEST>.out for the tests that ran
#   (review with git diff!);
# - stops and deletes the cluster on exit.
#
# pg_regress runs psql with -a -q, sets PGTZ=PST8PDT and PGDATESTYLE='Postgres, MDY', and
# each test file starts with `\set VERBOSITY terse` itself.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${PG_TEST_PORT:-55433}"
DB=pg_quota_regress
ACCEPT=0
INSTALL=1
[ "${PG_QUOTA_SKIP_INSTALL:-0}" = 1 ] && INSTALL=0
TESTS=()
for arg in "$@"; do
    case "$arg" in
        --accept) ACCEPT=1 ;;
        --no-install) INSTALL=0 ;;
        -h | --help) usage_of "$0"; exit 0 ;;
        -*) die "unknown option $arg" ;;
        *) TESTS+=("${arg%.sql}") ;;
    esac
done

install_cleanup_trap
use_test_pg

if [ ${#TESTS[@]} -eq 0 ]; then
    shopt -s nullglob
    for f in "$REPO"/pg_test/sql/*.sql; do
        TESTS+=("$(basename "$f" .sql)")
    done
    shopt -u nullglob
fi
if [ ${#TESTS[@]} -eq 0 ]; then
    warn "no pg_test/sql/*.sql: nothing to run"
    exit 0
fi
for t in "${TESTS[@]}"; do
    [ -f "$REPO/pg_test/sql/$t.sql" ] || die "pg_test/sql/$t.sql not found"
    [ -f "$REPO/pg_test/expected/$t.out" ] ||
        warn "pg_test/expected/$t.out is missing: $t will fail (create it with --accept)"
done

# With --accept, a missing expected file is created empty so pg_regress runs the test (it stops
# at the first missing one otherwise) and its result can be accepted.
if [ $ACCEPT -eq 1 ]; then
    mkdir -p "$REPO/pg_test/expected"
    for t in "${TESTS[@]}"; do
        [ -f "$REPO/pg_test/expected/$t.out" ] || : >"$REPO/pg_test/expected/$t.out"
    done
fi

[ -x "$PG_REGRESS" ] || die "$PG_REGRESS not found (package postgresql-server-dev-$PG_MAJOR / postgresql-client-$PG_MAJOR)"
[ $INSTALL -eq 1 ] && install_extension debug

throwaway_cluster pg_test "$PORT" "$DB"

OUT="$REPO/.test-run/pg_test"
rm -rf "$OUT"
mkdir -p "$OUT"

log "pg_regress: ${TESTS[*]}"
rc=0
"$PG_REGRESS" --use-existing \
    --bindir="$PG_BIN" \
    --host="$TMP_SOCK" --port="$PORT" --user=postgres \
    --dbname="$DB" \
    --inputdir="$REPO/pg_test" \
    --outputdir="$OUT" \
    "${TESTS[@]}" || rc=$?

if [ $ACCEPT -eq 1 ]; then
    mkdir -p "$REPO/pg_test/expected"
    for t in "${TESTS[@]}"; do
        if [ -f "$OUT/results/$t.out" ] && ! cmp -s "$OUT/results/$t.out" "$REPO/pg_test/expected/$t.out"; then
            cp "$OUT/results/$t.out" "$REPO/pg_test/expected/$t.out"
            log "accepted pg_test/expected/$t.out"
        fi
    done
fi

if [ $rc -ne 0 ]; then
    if [ -s "$OUT/regression.diffs" ]; then
        echo "----- $OUT/regression.diffs -----" >&2
        cat "$OUT/regression.diffs" >&2
    fi
    echo "----- server log (last 40 lines) -----" >&2
    tail -n 40 "$TMP_LOG" >&2 || true
    [ $ACCEPT -eq 1 ] && { warn "pg_regress failed; new expected output accepted (review with git diff)"; exit 0; }
    die "pg_test failed (pg_regress rc $rc); see $OUT"
fi
ok "pg_test passed (${#TESTS[@]} scripts)"

# The background worker must leave cleanly on SIGTERM (a fast shutdown sends it one). It connects
# within 5 s of the database's creation (restart delay), so wait for it to run first.
for _ in $(seq 1 30); do
    state="$(psql_val "$TMP_SOCK" "$PORT" "$DB" "SELECT state FROM quota.worker_status()")"
    [ "$state" = running ] && break
    sleep 0.5
done
[ "$state" = running ] || die "the pg_quota worker is '$state', not running, 15 s after the tests"
cluster_stop "$TMP_DATA"
grep -q 'pg_quota worker stopped' "$TMP_LOG" ||
    { tail -n 40 "$TMP_LOG" >&2; die "the pg_quota worker did not log a clean stop on SIGTERM"; }
ok "the background worker stopped cleanly on SIGTERM"
