# shellcheck shell=bash
# Shared helpers for scripts/run.sh, scripts/test.sh, scripts/pg_test.sh and scripts/bench.sh.
# Source it; do not execute it.
#
# Conventions
# - Meant to run as root on Debian 12 (the README's setup). initdb/postgres refuse root, so every
#   server-side command runs as the `postgres` OS user (runuser, or sudo when not root).
# - PostgreSQL is Debian's 15 (/usr/lib/postgresql/15). scripts/run.sh installs the extension into
#   it (`cargo pgrx install --pg-config /usr/lib/postgresql/15/bin/pg_config`). Every other script
#   (test.sh, pg_test.sh, fault_test.sh, bench.sh, bench_scan.sh) calls `use_test_pg` first: it
#   works on a private copy of that PostgreSQL (/tmp/pg_quota-testpg-<hash of the repo path>/,
#   made when missing), installs what it builds there only, with its own PGRX_HOME and cargo
#   target dir (<target>/test), so a running run.sh system and the tests never touch each other's
#   pg_quota.so.
# - Clusters are never the system one (port 5432). Each script uses its own port:
#     55432 run.sh (kept), 55433 pg_test, 55434 e2e, 55435 bench, 55436 bench_scan, 55437 faults
#     (throwaway); the #[pg_test] cluster and the sidecars of tests take free ports.
# - Throwaway clusters live in a fresh `mktemp -d /tmp/pg_quota-<what>.XXXXXX` owned by postgres
#   (data in ./data, the unix socket in the dir itself, the server log in ./postgres.log); the
#   EXIT trap stops the server and deletes the directory.

# ---------------------------------------------------------------------------------------------
# Basics

REPO="${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export REPO

PG_MAJOR=15
SYSTEM_PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
SYSTEM_PG_CONFIG="${SYSTEM_PG_BIN}/pg_config"
PGRX_VERSION="0.18.0"
EXT_NAME="pg_quota"

# set_pg_root ROOT: use the PostgreSQL under ROOT ("" = the system one): sets PG_BIN, PG_CONFIG,
# PG_REGRESS. Every cluster, psql, pg_regress and install below goes through these.
set_pg_root() {
    PG_ROOT="$1"
    PG_BIN="${PG_ROOT}/usr/lib/postgresql/${PG_MAJOR}/bin"
    PG_CONFIG="${PG_BIN}/pg_config"
    PG_REGRESS="${PG_ROOT}/usr/lib/postgresql/${PG_MAJOR}/lib/pgxs/src/test/regress/pg_regress"
    export PG_REGRESS
}
set_pg_root ""

# Packages the scripts need. pgrx needs the server headers and libclang (bindgen); sudo is used by
# `cargo pgrx test --runas postgres`; wrk and curl by bench.sh and the health checks; shellcheck by
# the lint stage of test.sh.
APT_PACKAGES=("postgresql-${PG_MAJOR}" "postgresql-server-dev-${PG_MAJOR}" libclang-dev clang sudo
              pkg-config libssl-dev wrk curl ca-certificates shellcheck)

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if [ -t 1 ]; then _B=$'\033[1m'; _R=$'\033[31m'; _G=$'\033[32m'; _Y=$'\033[33m'; _N=$'\033[0m'
else _B=""; _R=""; _G=""; _Y=""; _N=""; fi

log()    { printf '%s==>%s %s\n' "$_B" "$_N" "$*" >&2; }
warn()   { printf '%swarning:%s %s\n' "$_Y" "$_N" "$*" >&2; }
die()    { printf '%serror:%s %s\n' "$_R" "$_N" "$*" >&2; exit 1; }
ok()     { printf '%s%s%s\n' "$_G" "$*" "$_N"; }
header() { printf '\n%s========== %s ==========%s\n' "$_B" "$*" "$_N"; }

# Print the comment block at the top of a script (its usage text).
usage_of() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Run a command as root (we usually are; otherwise sudo).
as_root() { if is_root; then "$@"; else sudo "$@"; fi; }

# Run a command as the postgres OS user, from / (the caller's cwd may be unreadable for it, e.g.
# a checkout under /root; pass absolute paths).
as_postgres() {
    if [ "$(id -un)" = postgres ]; then "$@"
    elif is_root && command -v runuser >/dev/null 2>&1; then (cd / && runuser -u postgres -- "$@")
    else (cd / && sudo -u postgres -- "$@"); fi
}

# A short stable hash of a string (used to name per-repo dirs outside the repo).
short_hash() { printf '%s' "$1" | sha256sum | cut -c1-12; }

# Random hex secret (32 bytes -> 64 hex chars), no openssl needed.
random_hex() { od -An -tx1 -N"${1:-32}" /dev/urandom | tr -d ' \n'; }

# Benchmark figures: ratio A B (2 decimals, n/a when B is 0), fmt X (no decimals), median of
# the arguments.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt() { awk -v x="$1" 'BEGIN { printf "%.0f", x }'; }
median() { tr ' ' '\n' <<<"$*" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# pgbench_tps SOCKDIR PORT DB SCRIPT CLIENTS SECONDS [pgbench args...]: one timed pgbench run of
# sql/bench/SCRIPT (-n -M prepared, -j up to the cores), printing its tps; dies with pgbench's
# output when it fails or reports failed transactions.
pgbench_tps() {
    local sock="$1" port="$2" db="$3" script="$4" c="$5" secs="$6" j out rc=0 ncpu
    shift 6
    ncpu="$(nproc)"
    j=$((c < ncpu ? c : ncpu))
    out="$("$PG_BIN/pgbench" -n -M prepared -T "$secs" -c "$c" -j "$j" "$@" \
        -f "$REPO/sql/bench/$script" -h "$sock" -p "$port" -U postgres "$db" 2>&1)" || rc=$?
    if [ $rc -ne 0 ] || ! grep -q '^tps = ' <<<"$out" || grep -Eq 'number of failed transactions: [1-9]' <<<"$out"; then
        echo "$out" >&2
        die "pgbench $script failed (rc $rc)"
    fi
    sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out" | head -n 1
}

file_sha() { if [ -f "$1" ]; then sha256sum "$1" | cut -d' ' -f1; else echo none; fi; }

# ---------------------------------------------------------------------------------------------
# Cleanup stack: `on_exit "command string"`; commands run in reverse order when the script exits
# (normally, on error, or on Ctrl-C), errors ignored. $_EXIT_RC holds the script's exit status.

_CLEANUP=()
_EXIT_RC=0
on_exit() { _CLEANUP+=("$1"); }
_run_cleanup() {
    local rc=$? i
    _EXIT_RC=$rc
    trap - EXIT INT TERM
    for ((i = ${#_CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${_CLEANUP[$i]}" || true
    done
    exit "$rc"
}
install_cleanup_trap() {
    trap _run_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------------------------------------
# Dependencies

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# apt packages, only those missing (a second run does not touch apt at all).
ensure_apt_packages() {
    local missing=() p
    command -v dpkg-query >/dev/null 2>&1 || { warn "not a Debian system: skipping apt checks"; return 0; }
    for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing apt packages: ${missing[*]}"
    # Keep apt from starting the system cluster (port 5432) when it installs postgresql-15: we
    # never use it, and the test command must leave nothing running. Standard policy-rc.d trick,
    # only if no policy is in place already.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy" && made_policy=1
    fi
    local rc=0
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
    if [ $rc -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" || rc=$?
    fi
    [ $made_policy -eq 1 ] && as_root rm -f "$policy"
    [ $rc -eq 0 ] || die "apt-get failed (rc $rc)"
}

ensure_rust() {
    command -v cargo >/dev/null 2>&1 && return 0
    log "cargo not found: installing the stable Rust toolchain with rustup"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    command -v cargo >/dev/null 2>&1 || die "cargo still not found after rustup"
}

# rustfmt and clippy (the lint stage of test.sh; rustup's minimal profile has neither).
ensure_rust_lint_tools() {
    local missing=()
    cargo fmt --version >/dev/null 2>&1 || missing+=(rustfmt)
    cargo clippy --version >/dev/null 2>&1 || missing+=(clippy)
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v rustup >/dev/null 2>&1 || die "cargo ${missing[*]} not found and no rustup to add them"
    log "rustup component add ${missing[*]}"
    rustup component add "${missing[@]}"
}

pgrx_home() { printf '%s' "${PGRX_HOME:-$HOME/.pgrx}"; }

# cargo-pgrx 0.18.0 (only if another or no version is installed) and `cargo pgrx init` for the
# system PG 15 (only if ~/.pgrx/config.toml has no pg15 entry; the private PGRX_HOME of the tests
# is written by use_test_pg instead).
ensure_pgrx() {
    local have
    have="$(cargo pgrx --version 2>/dev/null || true)"
    if [ "${have##* }" != "$PGRX_VERSION" ]; then
        log "installing cargo-pgrx $PGRX_VERSION (found: ${have:-none}); takes a few minutes"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    [ -n "${PG_QUOTA_TEST_PG_ROOT:-}" ] && [ "$(pgrx_home)" = "$PG_QUOTA_TEST_PG_ROOT/pgrx" ] && return 0
    local cfg
    cfg="$(pgrx_home)/config.toml"
    if ! grep -Eq "^[[:space:]]*pg${PG_MAJOR}[[:space:]]*=" "$cfg" 2>/dev/null; then
        log "cargo pgrx init --pg${PG_MAJOR} $SYSTEM_PG_CONFIG"
        cargo pgrx init "--pg${PG_MAJOR}" "$SYSTEM_PG_CONFIG"
    fi
}

ensure_deps() {
    ensure_apt_packages "${APT_PACKAGES[@]}"
    id postgres >/dev/null 2>&1 || die "no 'postgres' OS user (the postgresql-${PG_MAJOR} package creates it)"
    [ -x "$SYSTEM_PG_CONFIG" ] || die "$SYSTEM_PG_CONFIG not found"
    ensure_rust
    ensure_rust_lint_tools
    ensure_pgrx
}

# ---------------------------------------------------------------------------------------------
# The private PostgreSQL of the tests (and benchmarks)
#
# A copy of Debian's PostgreSQL 15 (bin, lib, share: about 50 MB; Debian's build is relocatable, so
# its pg_config reports the copy's own directories and its postgres loads extensions from there),
# with usr/include pointing at the system headers for pgrx's bindgen. It never holds a pg_quota.*
# file of the system tree: only what the tests install. Rebuilt when missing or when the system
# PostgreSQL changed (a package upgrade); otherwise kept between runs as a cache.
#
#   <root>/usr/lib/postgresql/15/   bin/ (postgres, pg_ctl, psql, pg_config), lib/ (pg_quota.so goes here)
#   <root>/usr/share/postgresql/15/ extension/ (pg_quota.control, pg_quota--*.sql go here)
#   <root>/usr/include -> /usr/include
#   <root>/pgrx/config.toml         PGRX_HOME: pg15 = <root>/usr/lib/postgresql/15/bin/pg_config
#   <root>/.stamp                   the system PostgreSQL it was copied from

test_pg_root() { printf '%s' "${PG_QUOTA_TEST_PG_ROOT:-/tmp/pg_quota-testpg-$(short_hash "$REPO")}"; }

# ensure_test_pg ROOT
ensure_test_pg() {
    local root="$1" want
    [ -x "$SYSTEM_PG_CONFIG" ] || die "$SYSTEM_PG_CONFIG not found (run scripts/test.sh deps)"
    want="$("$SYSTEM_PG_CONFIG" --version) $(file_sha "$SYSTEM_PG_BIN/postgres") $(file_sha "$SYSTEM_PG_CONFIG")"
    if [ -f "$root/.stamp" ] && [ "$(cat "$root/.stamp")" = "$want" ] &&
        [ -x "$root/usr/lib/postgresql/$PG_MAJOR/bin/postgres" ]; then
        return 0
    fi
    log "copying the system PostgreSQL $PG_MAJOR into $root (private to the tests)"
    local tmp="$root.new.$$"
    as_root rm -rf "$tmp"
    as_root mkdir -p "$tmp/usr/lib/postgresql" "$tmp/usr/share/postgresql" "$tmp/pgrx"
    as_root cp -a "/usr/lib/postgresql/$PG_MAJOR" "$tmp/usr/lib/postgresql/"
    as_root cp -a "/usr/share/postgresql/$PG_MAJOR" "$tmp/usr/share/postgresql/"
    as_root find "$tmp/usr" \( -name "$EXT_NAME.*" -o -name "$EXT_NAME--*" \) -exec rm -f {} +
    as_root ln -s /usr/include "$tmp/usr/include"
    as_root chmod 755 "$tmp"
    local got
    got="$("$tmp/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" --pkglibdir)"
    [ "$got" = "$tmp/usr/lib/postgresql/$PG_MAJOR/lib" ] ||
        die "the copied pg_config reports pkglibdir $got, not the copy's: this PostgreSQL is not relocatable"
    printf '%s\n' "$want" | as_root tee "$tmp/.stamp" >/dev/null
    as_root rm -rf "$root"
    as_root mv "$tmp" "$root"
}

# use_test_pg: switch this script (and what it starts) to the private PostgreSQL: PG_BIN,
# PG_CONFIG, PG_REGRESS point into it; PGRX_HOME is <root>/pgrx (so `cargo pgrx test pg15` builds,
# installs and runs there); CARGO_TARGET_DIR is <target>/test (builds for the copy's pg_config
# never invalidate run.sh's, and the reverse). Exported, so scripts started from here inherit it.
use_test_pg() {
    local root
    root="$(test_pg_root)"
    ensure_test_pg "$root"
    set_pg_root "$root"
    local cfg="$root/pgrx/config.toml" want
    want="$(printf '[configs]\npg%s = "%s"' "$PG_MAJOR" "$PG_CONFIG")"
    if [ "$(cat "$cfg" 2>/dev/null || true)" != "$want" ]; then
        as_root mkdir -p "$root/pgrx"
        printf '%s\n' "$want" | as_root tee "$cfg" >/dev/null
    fi
    PG_QUOTA_TEST_PG_ROOT="$root"
    PGRX_HOME="$root/pgrx"
    PG_QUOTA_TEST_TARGET_DIR="${PG_QUOTA_TEST_TARGET_DIR:-$(target_dir)/test}"
    CARGO_TARGET_DIR="$PG_QUOTA_TEST_TARGET_DIR"
    export PG_QUOTA_TEST_PG_ROOT PGRX_HOME PG_QUOTA_TEST_TARGET_DIR CARGO_TARGET_DIR
}

# ---------------------------------------------------------------------------------------------
# Building and installing

pg_pkglibdir() { "$PG_CONFIG" --pkglibdir; }
installed_so() { printf '%s/%s.so' "$(pg_pkglibdir)" "$EXT_NAME"; }

# Unlink the installed pg_quota.so. `cargo pgrx install --sudo` (which `cargo pgrx test --runas`
# uses) installs with `sudo cp`, which rewrites the file in place: every running server that
# preloaded it then crashes (SIGSEGV in its mapped code). Unlinking first makes cp create a new
# file, and running servers keep the old one. (Plain `cargo pgrx install` as root unlinks itself.)
unlink_installed_so() { as_root rm -f "$(installed_so)"; }

# install_extension release|debug
# Builds the extension and copies pg_quota.so, pg_quota.control and pg_quota--<ver>.sql (plus
# upgrade scripts from extension/sql/) into the directories of $PG_CONFIG: Debian's PG 15 for
# run.sh, the private copy after use_test_pg.
install_extension() {
    local mode="${1:-release}" args=()
    [ "$mode" = release ] && args+=(--release)
    if ! is_root; then
        args+=(--sudo)
        unlink_installed_so
    fi
    log "cargo pgrx install ${args[*]} --pg-config $PG_CONFIG ($mode)"
    (cd "$REPO/extension" && cargo pgrx install "${args[@]}" --pg-config "$PG_CONFIG")
}

# The AiGateway mock: its own package `aigateway-mock` (tests/aigateway-mock/), or, in the older
# layout, a binary of the quota-sidecar package. Either way the binary is `aigateway-mock`.
mock_crate() {
    grep -Eq '^[[:space:]]*name[[:space:]]*=[[:space:]]*"aigateway-mock"' \
        "$REPO/tests/aigateway-mock/Cargo.toml" 2>/dev/null
}
have_mock_bin() {
    mock_crate ||
        [ -f "$REPO/sidecar/src/bin/aigateway-mock.rs" ] ||
        [ -f "$REPO/sidecar/src/bin/aigateway-mock/main.rs" ] ||
        grep -Eq '^[[:space:]]*name[[:space:]]*=[[:space:]]*"aigateway-mock"' "$REPO/sidecar/Cargo.toml" 2>/dev/null
}

# Cargo's target dir (honours CARGO_TARGET_DIR, default <repo>/target).
target_dir() {
    local t="${CARGO_TARGET_DIR:-$REPO/target}"
    case "$t" in /*) ;; *) t="$REPO/$t" ;; esac
    printf '%s' "$t"
}

# build_sidecar release|debug -> builds quota-sidecar and aigateway-mock (one cargo call)
build_sidecar() {
    local mode="${1:-release}" args=(-p quota-sidecar --bin quota-sidecar)
    if mock_crate; then
        args+=(-p aigateway-mock --bin aigateway-mock)
    elif have_mock_bin; then
        args+=(--bin aigateway-mock)
    fi
    [ "$mode" = release ] && args+=(--release)
    log "cargo build ${args[*]}"
    (cd "$REPO" && cargo build "${args[@]}")
}

# bin_path release|debug NAME
bin_path() {
    local sub=debug
    [ "$1" = release ] && sub=release
    printf '%s/%s/%s' "$(target_dir)" "$sub" "$2"
}

# ---------------------------------------------------------------------------------------------
# Clusters. A cluster is described by: DATA dir, SOCKET dir, PORT, LOG file.

# pg_ctl_status DATA -> 0 running, 3 stopped, 4 no/invalid data dir
pg_ctl_status() { as_postgres "$PG_BIN/pg_ctl" -D "$1" status >/dev/null 2>&1; }
cluster_running() { pg_ctl_status "$1"; }

# Is something accepting TCP connections on 127.0.0.1:PORT?
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free TCP port in [lo, hi] (default 20000-29999).
free_port() {
    local lo="${1:-20000}" hi="${2:-29999}" p i
    for i in $(seq 1 200); do
        p=$((lo + RANDOM % (hi - lo + 1)))
        port_in_use "$p" || { echo "$p"; return 0; }
    done
    die "no free port found in $lo-$hi"
}

# make_pg_dir DIR [MODE]: create DIR (and parents) as root, owned by postgres.
make_pg_dir() {
    as_root mkdir -p "$1"
    as_root chown postgres:postgres "$1"
    as_root chmod "${2:-700}" "$1"
}

# credentials_key DATA: the AES-256 key of pool account credentials for the cluster in DATA, kept
# beside it (not in it, so a copy of the data directory holds no key): made once (64 hex from
# /dev/urandom, owned by postgres, mode 600), printed as a path.
credentials_key() {
    local keyfile
    keyfile="$(dirname "$1")/pg_quota_credentials.key"
    if ! as_root test -s "$keyfile"; then
        random_hex 32 | as_root tee "$keyfile" >/dev/null
        as_root chown postgres:postgres "$keyfile"
        as_root chmod 600 "$keyfile"
    fi
    echo "$keyfile"
}

# cluster_conf DATA PORT SOCKDIR DBNAME [extra lines...]
# Writes DATA/pg_quota.conf (included from postgresql.conf). Rewritten on every call, so changes
# here apply at the next restart. Prints "changed" when the content differs from before.
cluster_conf() {
    local data="$1" port="$2" sock="$3" db="$4"
    shift 4
    local tmp keyfile
    keyfile="$(credentials_key "$data")"
    tmp="$(mktemp)"
    {
        echo "# written by scripts/lib.sh (cluster_conf); edits are overwritten"
        echo "quota.credentials_key_file = '$keyfile'"
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$sock'"
        echo "shared_preload_libraries = '$EXT_NAME'"
        echo "quota.database = '$db'"
        echo "max_connections = 200"
        echo "logging_collector = off"
        echo "log_line_prefix = '%m [%p] %q%u@%d '"
        local l
        for l in "$@"; do echo "$l"; done
    } >"$tmp"
    local target="$data/pg_quota.conf"
    if ! as_root cmp -s "$tmp" "$target"; then
        as_root cp "$tmp" "$target"
        as_root chown postgres:postgres "$target"
        as_root chmod 600 "$target"
        echo changed
    fi
    rm -f "$tmp"
    if ! as_root grep -q "^include_if_exists = 'pg_quota.conf'" "$data/postgresql.conf"; then
        printf '\n%s\n' "include_if_exists = 'pg_quota.conf'" | as_root tee -a "$data/postgresql.conf" >/dev/null
    fi
}

# cluster_init DATA PORT SOCKDIR DBNAME [extra conf lines...]
# initdb (trust auth, UTF8, no locale) as postgres; DATA's parent must exist. SOCKDIR is created
# owned by postgres if missing.
cluster_init() {
    local data="$1" port="$2" sock="$3" db="$4"
    shift 4
    log "initdb $data (port $port, db $db)"
    make_pg_dir "$data" 700
    [ -d "$sock" ] || make_pg_dir "$sock" 755
    as_postgres "$PG_BIN/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-locale >/dev/null
    cluster_conf "$data" "$port" "$sock" "$db" "$@" >/dev/null
}

# cluster_start DATA LOGFILE: pg_ctl -w start as postgres (LOGFILE created owned by postgres).
cluster_start() {
    local data="$1" logf="$2"
    if [ ! -e "$logf" ]; then as_root touch "$logf"; fi
    as_root chown postgres:postgres "$logf"
    log "starting PostgreSQL ($data, log $logf)"
    if ! as_postgres "$PG_BIN/pg_ctl" -D "$data" -l "$logf" -w -t 120 start >/dev/null; then
        tail -n 40 "$logf" >&2 || true
        die "PostgreSQL did not start (log: $logf)"
    fi
}

cluster_restart() {
    local data="$1" logf="$2"
    log "restarting PostgreSQL ($data)"
    if ! as_postgres "$PG_BIN/pg_ctl" -D "$data" -l "$logf" -w -t 120 -m fast restart >/dev/null; then
        tail -n 40 "$logf" >&2 || true
        die "PostgreSQL did not restart (log: $logf)"
    fi
}

# cluster_stop DATA: fast shutdown if running; quiet if not.
cluster_stop() {
    local data="$1"
    [ -d "$data" ] || return 0
    if cluster_running "$data"; then
        log "stopping PostgreSQL ($data)"
        as_postgres "$PG_BIN/pg_ctl" -D "$data" -w -t 60 -m fast stop >/dev/null ||
            as_postgres "$PG_BIN/pg_ctl" -D "$data" -w -t 30 -m immediate stop >/dev/null || true
    fi
}

# psql_cmd SOCKDIR PORT DB [psql args...]: psql as the postgres role, stop on first error.
psql_cmd() {
    local sock="$1" port="$2" db="$3"
    shift 3
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$sock" -p "$port" -U postgres -d "$db" "$@"
}

# psql_val SOCKDIR PORT DB SQL: one value, unaligned, no headers.
psql_val() { psql_cmd "$1" "$2" "$3" -At -c "$4"; }

db_exists() { [ "$(psql_val "$1" "$2" postgres "SELECT 1 FROM pg_database WHERE datname = '$3'")" = 1 ]; }

# create_db_with_extension SOCKDIR PORT DB: createdb (if missing) + CREATE EXTENSION pg_quota.
create_db_with_extension() {
    local sock="$1" port="$2" db="$3"
    if ! db_exists "$sock" "$port" "$db"; then
        log "createdb $db"
        "$PG_BIN/createdb" -h "$sock" -p "$port" -U postgres "$db"
    fi
    psql_cmd "$sock" "$port" "$db" -c "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS $EXT_NAME"
}

# throwaway_cluster NAME PORT DB [extra conf lines...]
# A fresh cluster in /tmp/pg_quota-NAME.XXXXXX, started, with DB + extension created, stopped and
# deleted when the script exits. Sets TMP_BASE, TMP_DATA, TMP_SOCK, TMP_LOG.
throwaway_cluster() {
    local name="$1" port="$2" db="$3"
    shift 3
    if port_in_use "$port"; then
        die "port $port is in use: is an earlier run still alive? (check: ss -ltnp | grep $port)"
    fi
    TMP_BASE="$(mktemp -d "/tmp/pg_quota-${name}.XXXXXX")"
    as_root chown postgres:postgres "$TMP_BASE"
    as_root chmod 755 "$TMP_BASE"
    TMP_DATA="$TMP_BASE/data"
    TMP_SOCK="$TMP_BASE"
    TMP_LOG="$TMP_BASE/postgres.log"
    on_exit "cluster_stop '$TMP_DATA'; rm -rf '$TMP_BASE'"
    cluster_init "$TMP_DATA" "$port" "$TMP_SOCK" "$db" "$@"
    cluster_start "$TMP_DATA" "$TMP_LOG"
    create_db_with_extension "$TMP_SOCK" "$port" "$db"
}

# The database role the sidecar connects as: quota_sidecar, a login role that is a member of
# quota_admin (a role CREATE EXTENSION pg_quota creates; quota_admin may execute every quota.*
# function and write no table directly). Trust auth on our loopback clusters, so no password.
SIDECAR_ROLE=quota_sidecar

# sidecar_role SOCKDIR PORT DB [--lenient]: create quota_sidecar if missing (roles are per cluster),
# grant it quota_admin, print its name. When the cluster has no quota_admin role: fail if the
# extension's sources define it (CREATE EXTENSION should have made it); otherwise (sources from
# before the roles) or with --lenient (run.sh: a cluster made by an older build) warn and print
# postgres.
sidecar_role() {
    local sock="$1" port="$2" db="$3" mode="${4:-}"
    if [ "$(psql_val "$sock" "$port" "$db" "SELECT count(*) FROM pg_roles WHERE rolname = 'quota_admin'")" != 1 ]; then
        if [ "$mode" = --lenient ]; then
            warn "no role quota_admin in this cluster (extension created by an older build): the sidecar" \
                "connects as postgres. 'scripts/run.sh reset' recreates it."
        elif grep -rqs quota_admin "$REPO/extension/sql" "$REPO/extension/src"; then
            die "CREATE EXTENSION $EXT_NAME created no role quota_admin (its sources define one): cannot create $SIDECAR_ROLE"
        else
            warn "this build of $EXT_NAME defines no role quota_admin yet: the sidecar connects as postgres"
        fi
        echo postgres
        return 0
    fi
    psql_cmd "$sock" "$port" "$db" \
        -c "SET client_min_messages = warning" \
        -c "DO \$\$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$SIDECAR_ROLE') THEN
                  CREATE ROLE $SIDECAR_ROLE LOGIN;
              END IF;
            END \$\$" \
        -c "ALTER ROLE $SIDECAR_ROLE LOGIN NOSUPERUSER" \
        -c "GRANT quota_admin TO $SIDECAR_ROLE" >/dev/null
    echo "$SIDECAR_ROLE"
}

# ---------------------------------------------------------------------------------------------
# Background processes (sidecar, mock)

# pid_alive PIDFILE NAME: the pid in PIDFILE runs and its command name is NAME (guards against
# a reused pid).
pid_alive() {
    local pidf="$1" name="$2" pid comm
    [ -s "$pidf" ] || return 1
    pid="$(cat "$pidf")"
    kill -0 "$pid" 2>/dev/null || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [ "$comm" = "${name:0:15}" ]
}

# start_bg PIDFILE LOGFILE CMD [ARGS...]: start in the background (stdin /dev/null, output
# appended to LOGFILE), write the pid. Set environment with `env K=V` in CMD.
start_bg() {
    local pidf="$1" logf="$2"
    shift 2
    nohup "$@" >>"$logf" 2>&1 </dev/null &
    echo $! >"$pidf"
}

# stop_pid PIDFILE NAME: SIGTERM, wait up to 15 s, then SIGKILL. Removes PIDFILE.
stop_pid() {
    local pidf="$1" name="$2" pid i
    if pid_alive "$pidf" "$name"; then
        pid="$(cat "$pidf")"
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            warn "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidf"
}

# ---------------------------------------------------------------------------------------------
# Waiting

# wait_tcp PORT [TIMEOUT_S]
wait_tcp() {
    local port="$1" timeout="${2:-30}" i
    for ((i = 0; i < timeout * 10; i++)); do
        port_in_use "$port" && return 0
        sleep 0.1
    done
    return 1
}

# wait_http URL [TIMEOUT_S] [PIDFILE NAME]: until URL answers 200. If PIDFILE/NAME are given,
# give up early when that process dies. On failure prints the last answer.
wait_http() {
    local url="$1" timeout="${2:-60}" pidf="${3:-}" name="${4:-}" i code=000
    for ((i = 0; i < timeout * 5; i++)); do
        code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)"
        [ "$code" = 200 ] && return 0
        if [ -n "$pidf" ] && ! pid_alive "$pidf" "$name"; then
            warn "$name exited while waiting for $url"
            return 1
        fi
        sleep 0.2
    done
    warn "$url did not answer 200 within ${timeout}s (last HTTP status: $code)"
    curl -s --max-time 2 "$url" >&2 || true
    echo >&2
    return 1
}

# ---------------------------------------------------------------------------------------------
# Sidecar / AiGateway mock environment. The names the sidecar reads are in contract.md; the
# AiGateway ones belong to a later issue and are set only when the mock exists.
#   QUOTA_LISTEN, QUOTA_DATABASE_URL, QUOTA_ADMIN_TOKEN, QUOTA_SERVICE_TOKEN, RUST_LOG
#   QUOTA_AIGATEWAY_URL, QUOTA_AIGATEWAY_CREDENTIAL  (sidecar -> AiGateway)
#   AIGATEWAY_MOCK_LISTEN, AIGATEWAY_MOCK_CREDENTIAL (the mock)
