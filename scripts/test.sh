#!/usr/bin/env bash
# Run every test. Starts what it needs and leaves nothing running.
#
#   scripts/test.sh                  all stages: deps, lint, unit, pgrx, pg_test, faults, e2e
#   scripts/test.sh STAGE [STAGE...] only these (deps always runs first)
#
# Stages
#   deps     apt packages (incl. shellcheck), rustfmt + clippy, cargo-pgrx 0.18.0, cargo pgrx init
#            (only what is missing)
#   lint     cargo fmt --all --check; cargo clippy --workspace --all-targets --keep-going -- -D warnings;
#            and `shellcheck -x` over scripts/*.sh and .ci/run (all three run; any finding fails)
#   unit     cargo test -p pg_quota_core -p quota-sidecar (-p aigateway-mock once it is a package)
#   pgrx     #[pg_test]s: cargo pgrx test pg15 --runas postgres --pgdata /tmp/pg_quota-pgrx-<hash>
#   pg_test  scripts/pg_test.sh: pg_test/sql/*.sql vs pg_test/expected/*.out, cluster on port 55433
#   faults   scripts/fault_test.sh: the cluster crashed mid-scan (port 55437)
#   e2e      cluster on port 55434 (db pg_quota_e2e) + sidecar (debug, connecting as the role
#            quota_sidecar) on a free port + the AiGateway mock on a free port, then
#            cargo test -p pg_quota_e2e with E2E_DATABASE_URL (as postgres), E2E_SIDECAR_URL,
#            E2E_ADMIN_TOKEN, E2E_SERVICE_TOKEN, E2E_SIDECAR_BIN, E2E_AIGATEWAY_URL,
#            E2E_AIGATEWAY_CREDENTIAL, E2E_AIGATEWAY_MOCK_BIN
#
# Isolation: nothing here touches the system PostgreSQL's files, so a running scripts/run.sh system
# is not disturbed (and run.sh does not disturb this). After deps, every stage uses a private copy
# of PostgreSQL 15 in /tmp/pg_quota-testpg-<hash of the repo path>/ (made when missing, kept as a
# cache): the extension is installed there only, clusters run its binaries, PGRX_HOME is its
# pgrx/ dir, and cargo builds into <repo>/target/test (see use_test_pg in scripts/lib.sh).
#
# Everything is a debug build (no release build here: CI has 2 cores). The last line is
# "N passed, 0 failed" (N = stages passed) or "N passed, 1 failed".
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_STAGES=(lint unit pgrx pg_test faults e2e)
STAGES=()
for arg in "$@"; do
    case "$arg" in
        all) STAGES=("${ALL_STAGES[@]}") ;;
        deps) ;;
        lint | unit | pgrx | pg_test | faults | e2e) STAGES+=("$arg") ;;
        -h | --help) usage_of "$0"; exit 0 ;;
        *) die "unknown stage '$arg' (stages: deps ${ALL_STAGES[*]})" ;;
    esac
done
[ ${#STAGES[@]} -eq 0 ] && [ $# -eq 0 ] && STAGES=("${ALL_STAGES[@]}")

PASSED=0
CURRENT=""
T0=$SECONDS

summary() {
    echo
    if [ "$_EXIT_RC" -eq 0 ]; then
        ok "all stages passed in $((SECONDS - T0)) s"
        echo "$PASSED passed, 0 failed"
    else
        printf '%sstage "%s" failed%s (after %d s)\n' "$_R" "${CURRENT:-?}" "$_N" "$((SECONDS - T0))"
        echo "$PASSED passed, 1 failed"
    fi
}
install_cleanup_trap
on_exit summary # registered first, so it runs last

stage_begin() {
    CURRENT="$1"
    header "stage $1"
    STAGE_T0=$SECONDS
}
stage_end() {
    PASSED=$((PASSED + 1))
    ok "stage $CURRENT passed ($((SECONDS - STAGE_T0)) s)"
    CURRENT=""
}

# The debug extension is installed (into the private PostgreSQL) once and shared by pg_test, faults
# and e2e (the pgrx stage installs its own test build over it, so it runs before them).
DEBUG_INSTALLED=0
ensure_debug_install() {
    [ $DEBUG_INSTALLED -eq 1 ] && return 0
    install_extension debug
    DEBUG_INSTALLED=1
}

# ---------------------------------------------------------------------------------------------
stage_deps() {
    stage_begin deps
    ensure_deps
    stage_end
}

stage_lint() {
    stage_begin lint
    local failed=()
    log "cargo fmt --all --check"
    (cd "$REPO" && cargo fmt --all --check) || failed+=("cargo fmt")
    # The workspace includes the pgrx crate: its build script finds pg_config through PGRX_HOME,
    # set by use_test_pg like for the pgrx stage (same target dir, so the bindings are shared).
    log "cargo clippy --workspace --all-targets --keep-going -- -D warnings"
    (cd "$REPO" && cargo clippy --workspace --all-targets --keep-going -- -D warnings) ||
        failed+=("cargo clippy")
    log "shellcheck scripts/*.sh .ci/run"
    (cd "$REPO" && shellcheck -x -P SCRIPTDIR scripts/*.sh .ci/run) || failed+=(shellcheck)
    [ ${#failed[@]} -eq 0 ] || die "lint: ${failed[*]} reported findings (see above)"
    stage_end
}

stage_unit() {
    stage_begin unit
    local pkgs=(-p pg_quota_core -p quota-sidecar)
    mock_crate && pkgs+=(-p aigateway-mock)
    (cd "$REPO" && cargo test "${pkgs[@]}")
    stage_end
}

# Stop clusters a killed earlier run may have left in the pgrx base dir, then delete it.
pgrx_clean() {
    local base="$1" d
    [ -d "$base" ] || return 0
    for d in "$base"/*; do
        [ -f "$d/postmaster.pid" ] && cluster_stop "$d"
    done
    as_root rm -rf "$base"
}

stage_pgrx() {
    stage_begin pgrx
    local base
    base="/tmp/pg_quota-pgrx-$(short_hash "$REPO")"
    pgrx_clean "$base"
    make_pg_dir "$base" 755 # initdb runs as postgres and creates <base>/15... inside
    on_exit "pgrx_clean '$base'"
    # PGRX_HOME (use_test_pg) makes the harness build against, install into (`sudo cp`, in place)
    # and run the private PostgreSQL; the system one is not touched. Unlinking the private copy's
    # library first keeps even a stray server of an earlier run from crashing on the in-place copy.
    unlink_installed_so
    (cd "$REPO/extension" && cargo pgrx test "pg$PG_MAJOR" --runas postgres --pgdata "$base")
    pgrx_clean "$base"
    DEBUG_INSTALLED=0 # cargo pgrx test installed its own (pg_test) build
    stage_end
}

stage_pg_test() {
    stage_begin pg_test
    ensure_debug_install
    PG_QUOTA_SKIP_INSTALL=1 bash "$REPO/scripts/pg_test.sh"
    stage_end
}

stage_faults() {
    stage_begin faults
    ensure_debug_install
    PG_QUOTA_SKIP_INSTALL=1 bash "$REPO/scripts/fault_test.sh"
    stage_end
}

stage_e2e() {
    stage_begin e2e
    local port=55434 db=pg_quota_e2e listen
    ensure_debug_install
    build_sidecar debug
    # Compile the tests before anything is started.
    (cd "$REPO" && cargo test -p pg_quota_e2e --no-run)

    throwaway_cluster e2e "$port" "$db"
    local base="$TMP_BASE" pglog="$TMP_LOG"
    local admin service sidecar_bin
    admin="$(random_hex 32)"
    service="$(random_hex 32)"
    sidecar_bin="$(bin_path debug quota-sidecar)"
    # The tests probe with SQL as postgres; the sidecar connects with its least role.
    local dburl="postgres://postgres@127.0.0.1:$port/$db" role sidecar_dburl
    role="$(sidecar_role "$TMP_SOCK" "$port" "$db")"
    sidecar_dburl="postgres://$role@127.0.0.1:$port/$db"

    local mock_env=() test_env=()
    if have_mock_bin; then
        local mport mcred mbin
        mport="$(free_port 21000 21999)"
        mcred="$(random_hex 16)"
        mbin="$(bin_path debug aigateway-mock)"
        start_bg "$base/aigateway-mock.pid" "$base/aigateway-mock.log" env \
            AIGATEWAY_MOCK_LISTEN="127.0.0.1:$mport" AIGATEWAY_MOCK_CREDENTIAL="$mcred" \
            RUST_LOG="${RUST_LOG:-info}" "$mbin"
        on_exit "stop_pid '$base/aigateway-mock.pid' aigateway-mock"
        wait_http "http://127.0.0.1:$mport/health" 30 "$base/aigateway-mock.pid" aigateway-mock ||
            { tail -n 30 "$base/aigateway-mock.log" >&2; die "aigateway-mock did not start"; }
        mock_env=(QUOTA_AIGATEWAY_URL="http://127.0.0.1:$mport" QUOTA_AIGATEWAY_CREDENTIAL="$mcred")
        test_env=(E2E_AIGATEWAY_URL="http://127.0.0.1:$mport" E2E_AIGATEWAY_CREDENTIAL="$mcred"
                  E2E_AIGATEWAY_MOCK_BIN="$mbin")
    fi

    listen="127.0.0.1:$(free_port 25000 25999)"
    log "sidecar on $listen as database role $role"
    start_bg "$base/sidecar.pid" "$base/sidecar.log" env \
        QUOTA_LISTEN="$listen" QUOTA_DATABASE_URL="$sidecar_dburl" \
        QUOTA_ADMIN_TOKEN="$admin" QUOTA_SERVICE_TOKEN="$service" \
        RUST_LOG="${RUST_LOG:-info}" "${mock_env[@]}" "$sidecar_bin"
    on_exit "stop_pid '$base/sidecar.pid' quota-sidecar"
    if ! wait_http "http://$listen/health" 60 "$base/sidecar.pid" quota-sidecar; then
        tail -n 40 "$base/sidecar.log" >&2 || true
        die "the sidecar did not become healthy"
    fi

    local rc=0
    (cd "$REPO" && env \
        E2E_DATABASE_URL="$dburl" \
        E2E_SIDECAR_URL="http://$listen" \
        E2E_ADMIN_TOKEN="$admin" \
        E2E_SERVICE_TOKEN="$service" \
        E2E_SIDECAR_BIN="$sidecar_bin" \
        E2E_PG_SOCKET_DIR="$TMP_SOCK" \
        E2E_PG_PORT="$port" \
        "${test_env[@]}" \
        cargo test -p pg_quota_e2e --no-fail-fast -- --test-threads=4) || rc=$?
    if [ $rc -ne 0 ]; then
        echo "----- sidecar log (last 60 lines) -----" >&2
        tail -n 60 "$base/sidecar.log" >&2 || true
        echo "----- server log (last 40 lines) -----" >&2
        tail -n 40 "$pglog" >&2 || true
        mkdir -p "$REPO/.test-run/e2e"
        cp -f "$base"/*.log "$REPO/.test-run/e2e/" 2>/dev/null || true
        die "e2e tests failed (logs copied to .test-run/e2e/)"
    fi
    stage_end
}

# ---------------------------------------------------------------------------------------------
stage_deps
use_test_pg
log "PostgreSQL for the tests: $PG_ROOT (PGRX_HOME=$PGRX_HOME, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
for s in "${STAGES[@]}"; do
    "stage_$s"
done
