#!/usr/bin/env bash
# Run everything: PostgreSQL 15 with pg_quota preloaded, demo data, the sidecar and the AiGateway
# mock. The extension (release build) is installed into the system PostgreSQL 15
# (/usr/lib/postgresql/15, /usr/share/postgresql/15); scripts/test.sh never touches that install.
# The sidecar connects as the login role quota_sidecar (a member of quota_admin), not as postgres.
#
#   scripts/run.sh [up]    install what is missing, build, start (or reuse) everything, print how to call it
#   scripts/run.sh up --no-build   same, without the dependency checks and builds (uses what is installed/built)
#   scripts/run.sh status  what runs
#   scripts/run.sh down    stop everything `up` started (data is kept)
#   scripts/run.sh reset   down, then delete the cluster, tokens and logs (next `up` starts from scratch)
#
# Where things are (all under <repo>/.run/, git-ignored):
#   pgdata/         the cluster's data dir (port 55432, db pg_quota). If the postgres OS user cannot
#                   reach the repo (e.g. a checkout under /root), the data, socket and server log
#                   live in /var/tmp/pg_quota-<hash of repo path>/ instead and .run/pgdata and
#                   .run/postgres.log are symlinks to them.
#   sock/           the unix socket dir (psql -h <repo>/.run/sock -p 55432 -U postgres pg_quota)
#   postgres.log    the server log
#   env             generated secrets (mode 600): QUOTA_ADMIN_TOKEN, QUOTA_SERVICE_TOKEN, the demo
#                   user token, QUOTA_DATABASE_URL, QUOTA_LISTEN. `set -a; . .run/env; set +a`
#   sidecar.log, sidecar.pid, aigateway-mock.log, aigateway-mock.pid
#
# Environment overrides: PG_QUOTA_PORT (55432), QUOTA_LISTEN (127.0.0.1:8080),
# AIGATEWAY_MOCK_PORT (1002), RUST_LOG (info).
#
# Run twice, it reuses what is built and running: cargo builds incrementally; a running cluster is
# kept unless the installed pg_quota.so or the generated config changed (then it restarts, which a
# preloaded library needs); a running sidecar is kept unless its binary or settings changed.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PORT="${PG_QUOTA_PORT:-55432}"
DB=pg_quota
LISTEN="${QUOTA_LISTEN:-127.0.0.1:8080}"
MOCK_PORT="${AIGATEWAY_MOCK_PORT:-1002}"
RUN_DIR="$REPO/.run"
ENV_FILE="$RUN_DIR/env"
SIDECAR_PID="$RUN_DIR/sidecar.pid"
SIDECAR_LOG="$RUN_DIR/sidecar.log"
SIDECAR_STAMP="$RUN_DIR/sidecar.stamp"
MOCK_PID="$RUN_DIR/aigateway-mock.pid"
MOCK_LOG="$RUN_DIR/aigateway-mock.log"
MOCK_STAMP="$RUN_DIR/aigateway-mock.stamp"
SO_STAMP="$RUN_DIR/cluster.so.sha256"
SQL_STAMP="$RUN_DIR/extension.sql.sha256"
DEMO_MARK="pg_quota demo data loaded"

# Where the cluster lives. Decided once and remembered in .run/pgbase.
# Sets PG_BASE, PG_DATA, PG_SOCK, PG_LOG.
layout() {
    mkdir -p "$RUN_DIR"
    chmod 755 "$RUN_DIR"
    local base
    if [ -s "$RUN_DIR/pgbase" ]; then
        base="$(cat "$RUN_DIR/pgbase")"
    else
        base="$RUN_DIR"
        # postgres must reach the repo, and a unix socket path has a ~107 byte limit.
        if ! as_postgres test -x "$RUN_DIR" 2>/dev/null ||
            [ ${#RUN_DIR} -gt 80 ]; then
            base="/var/tmp/pg_quota-$(short_hash "$REPO")"
        fi
        echo "$base" >"$RUN_DIR/pgbase"
    fi
    PG_BASE="$base"
    PG_DATA="$base/pgdata"
    PG_SOCK="$base/sock"
    PG_LOG="$base/postgres.log"
    if [ "$base" != "$RUN_DIR" ]; then
        mkdir -p "$base"
        chmod 755 "$base"
        ln -sfn "$PG_DATA" "$RUN_DIR/pgdata"
        ln -sfn "$PG_LOG" "$RUN_DIR/postgres.log"
        ln -sfn "$PG_SOCK" "$RUN_DIR/sock"
    fi
}

listen_port() { printf '%s' "${LISTEN##*:}"; }
sidecar_url() {
    local host="${LISTEN%:*}"
    case "$host" in 0.0.0.0 | "" | "[::]") host=127.0.0.1 ;; esac
    printf 'http://%s:%s' "$host" "$(listen_port)"
}
# The sidecar's connection (its role is decided by setup_database).
SIDECAR_USER=postgres
db_url() { printf 'host=%s port=%s user=%s dbname=%s' "$PG_SOCK" "$PORT" "$SIDECAR_USER" "$DB"; }

load_env() {
    QUOTA_ADMIN_TOKEN="" QUOTA_SERVICE_TOKEN="" QUOTA_DEMO_USER_TOKEN="" QUOTA_AIGATEWAY_CREDENTIAL=""
    if [ -f "$ENV_FILE" ]; then
        # shellcheck disable=SC1090
        . "$ENV_FILE"
    fi
    [ -n "$QUOTA_ADMIN_TOKEN" ] || QUOTA_ADMIN_TOKEN="$(random_hex 32)"
    [ -n "$QUOTA_SERVICE_TOKEN" ] || QUOTA_SERVICE_TOKEN="$(random_hex 32)"
    [ -n "$QUOTA_AIGATEWAY_CREDENTIAL" ] || QUOTA_AIGATEWAY_CREDENTIAL="$(random_hex 16)"
}

write_env() {
    local tmp="$ENV_FILE.tmp"
    (
        umask 077
        {
            echo "# written by scripts/run.sh; secrets are generated once. Use: set -a; . .run/env; set +a"
            printf 'QUOTA_ADMIN_TOKEN=%q\n' "$QUOTA_ADMIN_TOKEN"
            printf 'QUOTA_SERVICE_TOKEN=%q\n' "$QUOTA_SERVICE_TOKEN"
            printf 'QUOTA_DEMO_USER_TOKEN=%q\n' "$QUOTA_DEMO_USER_TOKEN"
            printf 'QUOTA_AIGATEWAY_CREDENTIAL=%q\n' "$QUOTA_AIGATEWAY_CREDENTIAL"
            printf 'QUOTA_LISTEN=%q\n' "$LISTEN"
            printf 'QUOTA_DATABASE_URL=%q\n' "$(db_url)"
            printf 'QUOTA_URL=%q\n' "$(sidecar_url)"
        } >"$tmp"
    )
    chmod 600 "$tmp"
    mv -f "$tmp" "$ENV_FILE"
}

psql_db() { psql_cmd "$PG_SOCK" "$PORT" "$DB" "$@"; }

# --------------------------------------------------------------------------------------------
start_cluster() {
    header "PostgreSQL cluster (port $PORT)"
    if [ ! -f "$PG_DATA/PG_VERSION" ]; then
        if [ -e "$PG_DATA" ] && [ -n "$(ls -A "$PG_DATA" 2>/dev/null)" ]; then
            die "$PG_DATA exists but is not a cluster; remove it or run scripts/run.sh reset"
        fi
        [ -d "$PG_SOCK" ] || make_pg_dir "$PG_SOCK" 755
        cluster_init "$PG_DATA" "$PORT" "$PG_SOCK" "$DB"
    fi
    [ -d "$PG_SOCK" ] || make_pg_dir "$PG_SOCK" 755
    local changed so
    changed="$(cluster_conf "$PG_DATA" "$PORT" "$PG_SOCK" "$DB")"
    so="$(file_sha "$(installed_so)")"
    CLUSTER_RESTARTED=0
    if cluster_running "$PG_DATA"; then
        if [ "$(cat "$SO_STAMP" 2>/dev/null || true)" != "$so" ]; then
            log "pg_quota.so changed since the cluster started"
            cluster_restart "$PG_DATA" "$PG_LOG"
            CLUSTER_RESTARTED=1
        elif [ -n "$changed" ]; then
            log "generated configuration changed"
            cluster_restart "$PG_DATA" "$PG_LOG"
            CLUSTER_RESTARTED=1
        else
            log "cluster already running: reused"
        fi
    else
        port_in_use "$PORT" && die "port $PORT is taken by another program (set PG_QUOTA_PORT)"
        cluster_start "$PG_DATA" "$PG_LOG"
        CLUSTER_RESTARTED=1
    fi
    echo "$so" >"$SO_STAMP"
}

setup_database() {
    header "database $DB"
    local fresh=0
    db_exists "$PG_SOCK" "$PORT" "$DB" || fresh=1
    create_db_with_extension "$PG_SOCK" "$PORT" "$DB"
    local sql_file sql_sha
    sql_file="$("$PG_CONFIG" --sharedir)/extension/$(psql_val "$PG_SOCK" "$PORT" "$DB" \
        "SELECT 'pg_quota--' || default_version || '.sql' FROM pg_available_extensions WHERE name = 'pg_quota'")"
    sql_sha="$(file_sha "$sql_file")"
    if [ $fresh -eq 1 ]; then
        echo "$sql_sha" >"$SQL_STAMP"
    else
        local installed default
        installed="$(psql_val "$PG_SOCK" "$PORT" "$DB" "SELECT extversion FROM pg_extension WHERE extname = 'pg_quota'")"
        default="$(psql_val "$PG_SOCK" "$PORT" "$DB" "SELECT default_version FROM pg_available_extensions WHERE name = 'pg_quota'")"
        if [ "$installed" != "$default" ]; then
            log "ALTER EXTENSION pg_quota UPDATE ($installed -> $default)"
            psql_db -c "ALTER EXTENSION pg_quota UPDATE" ||
                warn "ALTER EXTENSION UPDATE failed: run scripts/run.sh reset to recreate the demo database"
            echo "$sql_sha" >"$SQL_STAMP"
        elif [ -f "$SQL_STAMP" ] && [ "$(cat "$SQL_STAMP")" != "$sql_sha" ]; then
            warn "the extension's SQL ($sql_file) changed since database $DB was created with the same" \
                "version: its functions may be stale. Run 'scripts/run.sh reset' then 'scripts/run.sh up'."
        fi
    fi
    SIDECAR_USER="$(sidecar_role "$PG_SOCK" "$PORT" "$DB" --lenient)"
    log "the sidecar connects as database role $SIDECAR_USER"
    local mark
    mark="$(psql_val "$PG_SOCK" "$PORT" postgres \
        "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = '$DB'")"
    if [ "$mark" != "$DEMO_MARK" ]; then
        log "loading sql/demo.sql"
        # One transaction: the demo data and the marker comment land together or not at all.
        psql_db -1 -f "$REPO/sql/demo.sql" -c "COMMENT ON DATABASE $DB IS '$DEMO_MARK'" >/dev/null
    else
        log "demo data already loaded"
    fi
}

demo_user_token() {
    local who=""
    if [ -n "$QUOTA_DEMO_USER_TOKEN" ]; then
        who="$(psql_val "$PG_SOCK" "$PORT" "$DB" "SELECT quota.resolve_api_token('$QUOTA_DEMO_USER_TOKEN')")"
    fi
    if [ "$who" != user_111 ]; then
        log "issuing an API token for user_111"
        QUOTA_DEMO_USER_TOKEN="$(psql_val "$PG_SOCK" "$PORT" "$DB" \
            "SELECT token FROM quota.issue_api_token('user_111', 'demo')")"
    fi
}

start_mock() {
    have_mock_bin || return 0
    local bin
    bin="$(bin_path release aigateway-mock)"
    [ -x "$bin" ] || { warn "aigateway-mock is declared but $bin was not built"; return 0; }
    header "AiGateway mock (127.0.0.1:$MOCK_PORT)"
    local stamp
    stamp="$(file_sha "$bin") $MOCK_PORT $(short_hash "$QUOTA_AIGATEWAY_CREDENTIAL")"
    if pid_alive "$MOCK_PID" aigateway-mock && [ "$(cat "$MOCK_STAMP" 2>/dev/null || true)" = "$stamp" ]; then
        log "aigateway-mock already running (pid $(cat "$MOCK_PID")): reused"
        return 0
    fi
    stop_pid "$MOCK_PID" aigateway-mock
    port_in_use "$MOCK_PORT" && die "port $MOCK_PORT is taken by another program (set AIGATEWAY_MOCK_PORT)"
    start_bg "$MOCK_PID" "$MOCK_LOG" env \
        AIGATEWAY_MOCK_LISTEN="127.0.0.1:$MOCK_PORT" \
        AIGATEWAY_MOCK_CREDENTIAL="$QUOTA_AIGATEWAY_CREDENTIAL" \
        RUST_LOG="${RUST_LOG:-info}" \
        "$bin"
    echo "$stamp" >"$MOCK_STAMP"
    wait_http "http://127.0.0.1:$MOCK_PORT/health" 30 "$MOCK_PID" aigateway-mock ||
        warn "aigateway-mock is not healthy; see $MOCK_LOG"
}

start_sidecar() {
    header "sidecar ($LISTEN)"
    local bin
    bin="$(bin_path release quota-sidecar)"
    [ -x "$bin" ] || die "$bin not built"
    local mock_env=()
    if have_mock_bin && pid_alive "$MOCK_PID" aigateway-mock; then
        mock_env=(QUOTA_AIGATEWAY_URL="http://127.0.0.1:$MOCK_PORT"
                  QUOTA_AIGATEWAY_CREDENTIAL="$QUOTA_AIGATEWAY_CREDENTIAL")
    fi
    local stamp
    stamp="$(file_sha "$bin") $(printf '%s|' "$LISTEN" "$(db_url)" "$QUOTA_ADMIN_TOKEN" \
        "$QUOTA_SERVICE_TOKEN" "${mock_env[@]}" "${RUST_LOG:-info}" | sha256sum | cut -c1-16)"
    if pid_alive "$SIDECAR_PID" quota-sidecar && [ "$CLUSTER_RESTARTED" -eq 0 ] &&
        [ "$(cat "$SIDECAR_STAMP" 2>/dev/null || true)" = "$stamp" ]; then
        log "sidecar already running (pid $(cat "$SIDECAR_PID")): reused"
    else
        stop_pid "$SIDECAR_PID" quota-sidecar
        port_in_use "$(listen_port)" && die "port $(listen_port) is taken by another program (set QUOTA_LISTEN)"
        start_bg "$SIDECAR_PID" "$SIDECAR_LOG" env \
            QUOTA_LISTEN="$LISTEN" \
            QUOTA_DATABASE_URL="$(db_url)" \
            QUOTA_ADMIN_TOKEN="$QUOTA_ADMIN_TOKEN" \
            QUOTA_SERVICE_TOKEN="$QUOTA_SERVICE_TOKEN" \
            RUST_LOG="${RUST_LOG:-info}" \
            "${mock_env[@]}" \
            "$bin"
        echo "$stamp" >"$SIDECAR_STAMP"
        log "sidecar started (pid $(cat "$SIDECAR_PID"), log $SIDECAR_LOG)"
    fi
    if ! wait_http "$(sidecar_url)/health" 60 "$SIDECAR_PID" quota-sidecar; then
        tail -n 30 "$SIDECAR_LOG" >&2 || true
        die "the sidecar is not healthy (log: $SIDECAR_LOG)"
    fi
}

print_usage() {
    local url
    url="$(sidecar_url)"
    header "pg_quota is running"
    cat <<EOF
PostgreSQL 15   port $PORT, db $DB, data $PG_DATA
                psql -h $PG_SOCK -p $PORT -U postgres $DB      (or: psql postgres://postgres@127.0.0.1:$PORT/$DB)
sidecar         $url   (pid $(cat "$SIDECAR_PID"), log $SIDECAR_LOG, database role $SIDECAR_USER)
EOF
    if pid_alive "$MOCK_PID" aigateway-mock; then
        echo "AiGateway mock  http://127.0.0.1:$MOCK_PORT   (pid $(cat "$MOCK_PID"), log $MOCK_LOG)"
    fi
    cat <<EOF
secrets         $ENV_FILE   (load them with: set -a; . $ENV_FILE; set +a)
demo user       user_111, API token: $QUOTA_DEMO_USER_TOKEN

Try it (after loading $ENV_FILE as above):
  curl -s $url/health
  curl -s $url/api/v1/subscription/plans
  curl -s -X POST $url/api/internal/credits/charge -H "X-Service-Token: \$QUOTA_SERVICE_TOKEN" \\
       -H 'Content-Type: application/json' \\
       -d '{"user_id":"user_111","cost_usd":0.0123,"operation_id":"try-charge-1","description":"first call"}'
  curl -s "$url/api/internal/credits/balance/user_111" -H "X-Service-Token: \$QUOTA_SERVICE_TOKEN"
  # a purchase needs a payment the payment side confirmed (402 without one)
  curl -s -X POST $url/api/internal/payments -H "X-Service-Token: \$QUOTA_SERVICE_TOKEN" \\
       -H 'Content-Type: application/json' \\
       -d '{"payment_id":"pi_try_1","user_id":"user_111","amount_usd":5,"payment_method_id":"pm_card_visa"}'
  curl -s -X POST $url/api/v1/credits/purchase -H "Authorization: Bearer \$QUOTA_DEMO_USER_TOKEN" \\
       -H 'Content-Type: application/json' -d '{"amount_usd":5,"payment_method_id":"pm_card_visa","operation_id":"try-buy-1"}'
  curl -s $url/api/v1/subscription -H "Authorization: Bearer \$QUOTA_DEMO_USER_TOKEN"
  curl -s "$url/api/v1/transactions?limit=5" -H "Authorization: Bearer \$QUOTA_DEMO_USER_TOKEN"
  curl -s $url/api/admin/statistics -H "Authorization: Bearer \$QUOTA_ADMIN_TOKEN"
  curl -s "$url/api/admin/users?limit=10" -H "Authorization: Bearer \$QUOTA_ADMIN_TOKEN"
  curl -s "$url/api/v1/strategies?status=enabled" -H "Authorization: Bearer \$QUOTA_ADMIN_TOKEN"
  curl -s -X POST "$url/api/v1/conditions/preview" -H "Authorization: Bearer \$QUOTA_ADMIN_TOKEN" \\
       -H 'Content-Type: application/json' -d '{"condition":"and(is-vip(1), github-star(\\"zgsm\\"))"}'
  curl -s -X POST "$url/api/v1/strategies/scan" -H "Authorization: Bearer \$QUOTA_ADMIN_TOKEN"
  curl -s "http://127.0.0.1:$MOCK_PORT/mock/deltas"      (what the AiGateway mock received)
  psql -h $PG_SOCK -p $PORT -U postgres $DB -c "SELECT * FROM quota.balance('user_111')"

Stop everything: scripts/run.sh down      What runs: scripts/run.sh status
EOF
}

cmd_up() {
    if [ "${1:-}" = --no-build ]; then
        log "--no-build: using the installed extension and the built sidecar"
        [ -f "$(installed_so)" ] || die "$(installed_so) is not installed"
    else
        header "dependencies"
        ensure_deps
        header "build"
        install_extension release
        build_sidecar release
    fi
    layout
    start_cluster
    setup_database
    load_env
    demo_user_token
    write_env
    start_mock
    start_sidecar
    print_usage
}

cmd_down() {
    layout
    stop_pid "$SIDECAR_PID" quota-sidecar
    stop_pid "$MOCK_PID" aigateway-mock
    cluster_stop "$PG_DATA"
    ok "stopped (data kept in $PG_DATA; 'scripts/run.sh reset' deletes it)"
}

cmd_status() {
    layout
    local rc=0
    if cluster_running "$PG_DATA"; then
        ok "PostgreSQL      running   port $PORT, data $PG_DATA"
    else
        echo "PostgreSQL      stopped   (data $PG_DATA)"
        rc=3
    fi
    if pid_alive "$SIDECAR_PID" quota-sidecar; then
        ok "sidecar         running   pid $(cat "$SIDECAR_PID"), $(sidecar_url)"
        printf '                /health: '
        curl -s --max-time 3 "$(sidecar_url)/health" || printf 'no answer'
        echo
    else
        echo "sidecar         stopped"
        rc=3
    fi
    if pid_alive "$MOCK_PID" aigateway-mock; then
        ok "AiGateway mock  running   pid $(cat "$MOCK_PID"), http://127.0.0.1:$MOCK_PORT"
    elif have_mock_bin; then
        echo "AiGateway mock  stopped"
    fi
    return $rc
}

cmd_reset() {
    cmd_down
    layout
    log "deleting $PG_DATA, $PG_SOCK and $RUN_DIR"
    as_root rm -rf "$PG_DATA" "$PG_SOCK" "$PG_LOG"
    [ "$PG_BASE" != "$RUN_DIR" ] && as_root rm -rf "$PG_BASE"
    rm -rf "$RUN_DIR"
    ok "reset done"
}

case "${1:-up}" in
    up) shift || true; cmd_up "$@" ;;
    down | stop) cmd_down ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    -h | --help | help) usage_of "$0" ;;
    *) die "usage: scripts/run.sh [up|down|status|reset]" ;;
esac
