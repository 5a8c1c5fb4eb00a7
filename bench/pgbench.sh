#!/usr/bin/env bash
# bench/pgbench.sh: pgbench read-only throughput through sqlgate, compared with
# PostgreSQL directly and with pgbouncer, all in the same run on the same machine.
#
#   bench/pgbench.sh                  # full run (about 3 minutes with the defaults)
#   DURATION=3 bench/pgbench.sh       # quick smoke run
#   SKIP_SQLGATE=1 bench/pgbench.sh   # only direct + pgbouncer (no cargo build)
#
# Knobs (environment variables) are listed under "Settings" below and in bench/README.md.
# The table is printed at the end and appended to bench/results/YYYY-MM-DD.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# ---------------------------------------------------------------- settings

SCALE=${SCALE:-10}                       # pgbench -i -s SCALE
CLIENTS=${CLIENTS:-8}                    # pgbench -c, throughput runs
THREADS=${THREADS:-2}                    # pgbench -j
DURATION=${DURATION:-15}                 # pgbench -T (seconds), throughput runs
CONNECT_CLIENTS=${CONNECT_CLIENTS:-4}    # pgbench -c, connection-cost runs (-C)
CONNECT_DURATION=${CONNECT_DURATION:-10} # pgbench -T, connection-cost runs
MODES=${MODES:-"simple prepared"}        # pgbench -M values for the throughput runs

PG_HOST=127.0.0.1
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
BENCH_DB=${BENCH_DB:-sqlgate_bench}

PGBOUNCER_PORT=${PGBOUNCER_PORT:-6499}   # first port tried; the next free one is used
PGBOUNCER_POOL_MODE=${PGBOUNCER_POOL_MODE:-session}  # pgbouncer 1.18 can't do -M prepared in transaction mode
SQLGATE_PORT=${SQLGATE_PORT:-6498}
ISSUER_PORT=${ISSUER_PORT:-6497}

SKIP_SQLGATE=${SKIP_SQLGATE:-0}          # 1: no build, no sqlgate rows
SKIP_PGBOUNCER=${SKIP_PGBOUNCER:-0}      # 1: no pgbouncer rows
SKIP_BUILD=${SKIP_BUILD:-0}              # 1: use the existing release binary as is
SKIP_DIRECT_TLS=${SKIP_DIRECT_TLS:-0}    # 1: no direct-tls reference rows
AUDIT_VARIANTS=${AUDIT_VARIANTS:-0}      # 1: also sqlgate with batched audit and with no audit writes
KEEP_TMP=${KEEP_TMP:-0}                  # 1: keep the temp dir (configs, logs)
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/sqlgate/target}"
SQLGATE_BIN=${SQLGATE_BIN:-$CARGO_TARGET_DIR/release/sqlgate}

# Keep libpq from picking up anything from the caller's environment.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
      PGSSLMODE PGSSLCERT PGSSLKEY PGSSLROOTCERT PGOPTIONS PGAPPNAME PGCONNECT_TIMEOUT

# ---------------------------------------------------------------- helpers

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# free_port START: the first port >= START nothing listens on.
free_port() {
    local p=$1
    while tcp_open 127.0.0.1 "$p"; do p=$((p + 1)); done
    echo "$p"
}

# wait_port NAME PORT PID: wait up to 30s for PORT to accept; fail early if PID died.
wait_port() {
    local name=$1 port=$2 pid=$3 i
    for ((i = 0; i < 300; i++)); do
        tcp_open 127.0.0.1 "$port" && return 0
        kill -0 "$pid" 2>/dev/null || { show_log "$name"; die "$name exited before listening on $port"; }
        sleep 0.1
    done
    show_log "$name"
    die "$name did not listen on 127.0.0.1:$port within 30s"
}

show_log() { [[ -f "$TMP/$1.log" ]] && { log "last lines of $TMP/$1.log:"; tail -n 30 "$TMP/$1.log" >&2; } || true; }

psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$@"; }

# Background processes we started, killed (by pid) on exit.
PIDS=()
CURRENT_PID=""   # the pgbench running now
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sqlgate-bench.XXXXXX")
FAILED=1

cleanup() {
    local pid
    [[ -n $CURRENT_PID ]] && kill "$CURRENT_PID" 2>/dev/null || true
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [[ $KEEP_TMP == 1 || $FAILED == 1 ]]; then
        log "temp dir kept: $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- preflight

for tool in pgbench psql pg_isready; do have "$tool" || die "$tool not found (apt-get install postgresql-client)"; done
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT"
[[ $CONNECT_CLIENTS -ge $THREADS && $CLIENTS -ge $THREADS ]] || die "CLIENTS and CONNECT_CLIENTS must be >= THREADS"

PGBOUNCER_BIN=$(command -v pgbouncer || true)
[[ -z $PGBOUNCER_BIN && -x /usr/sbin/pgbouncer ]] && PGBOUNCER_BIN=/usr/sbin/pgbouncer
if [[ $SKIP_PGBOUNCER != 1 && -z $PGBOUNCER_BIN ]]; then
    log "pgbouncer not installed: skipping pgbouncer rows (apt-get install pgbouncer)"
    SKIP_PGBOUNCER=1
fi
if [[ $SKIP_SQLGATE != 1 ]]; then
    have openssl || die "openssl not found (needed for the gateway's TLS certificate); or set SKIP_SQLGATE=1"
fi

# ---------------------------------------------------------------- build

if [[ $SKIP_SQLGATE != 1 && $SKIP_BUILD != 1 ]]; then
    log "building: cargo build --release --bin sqlgate (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release --bin sqlgate
fi
if [[ $SKIP_SQLGATE != 1 ]]; then
    [[ -x $SQLGATE_BIN ]] || die "no sqlgate binary at $SQLGATE_BIN"
fi

# ---------------------------------------------------------------- bench database

if [[ -z $(psql_admin -d postgres -Atc "select 1 from pg_database where datname = '$BENCH_DB'") ]]; then
    log "creating database $BENCH_DB"
    psql_admin -d postgres -c "create database \"$BENCH_DB\""
fi
have_scale=$(psql_admin -d "$BENCH_DB" -Atc \
    "select case when to_regclass('pgbench_branches') is null then 0 else (select count(*) from pgbench_branches) end" \
    2>/dev/null || echo 0)
if [[ $have_scale != "$SCALE" ]]; then
    log "initialising $BENCH_DB: pgbench -i -s $SCALE (found scale ${have_scale:-0})"
    pgbench -i -q -s "$SCALE" -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$BENCH_DB" >"$TMP/init.log" 2>&1 \
        || { tail -n 20 "$TMP/init.log" >&2; die "pgbench -i failed"; }
else
    log "$BENCH_DB already initialised at scale $SCALE"
fi

# ---------------------------------------------------------------- targets
# Each target: how pgbench reaches it (environment + connection arguments).

declare -A T_ENV T_ARGS
TARGETS=()

add_target() { TARGETS+=("$1"); T_ENV[$1]=$2; T_ARGS[$1]=$3; }

add_target direct "PGSSLMODE=disable" "-h $PG_HOST -p $PG_PORT -U $PG_USER $BENCH_DB"
if [[ $SKIP_DIRECT_TLS != 1 && $(psql_admin -d postgres -Atc 'show ssl') == on ]]; then
    # Reference for the sqlgate-tls rows: PostgreSQL's own TLS on the same machine.
    add_target direct-tls "PGSSLMODE=require" "-h $PG_HOST -p $PG_PORT -U $PG_USER $BENCH_DB"
fi

# -- pgbouncer
if [[ $SKIP_PGBOUNCER != 1 ]]; then
    PGBOUNCER_PORT=$(free_port "$PGBOUNCER_PORT")
    pool=$(( (CLIENTS > CONNECT_CLIENTS ? CLIENTS : CONNECT_CLIENTS) + 2 ))
    mkdir -p "$TMP/pgbouncer"
    cat >"$TMP/pgbouncer/pgbouncer.ini" <<EOF
[databases]
$BENCH_DB = host=$PG_HOST port=$PG_PORT dbname=$BENCH_DB user=$PG_USER

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
; trust upstream, and no client auth: every client logs in as the database's user
auth_type = any
pool_mode = $PGBOUNCER_POOL_MODE
default_pool_size = $pool
max_client_conn = $((pool * 4))
server_tls_sslmode = disable
EOF
    chmod 755 "$TMP" "$TMP/pgbouncer"
    chmod 644 "$TMP/pgbouncer/pgbouncer.ini"
    # pgbouncer refuses to run as root; -u drops privileges (same pid, so kill works).
    PGBOUNCER_CMD=("$PGBOUNCER_BIN")
    [[ $(id -u) == 0 ]] && PGBOUNCER_CMD+=(-u nobody)
    PGBOUNCER_CMD+=("$TMP/pgbouncer/pgbouncer.ini")
    log "starting pgbouncer on 127.0.0.1:$PGBOUNCER_PORT (pool_mode=$PGBOUNCER_POOL_MODE, pool size $pool)"
    "${PGBOUNCER_CMD[@]}" >"$TMP/pgbouncer.log" 2>&1 &
    PIDS+=($!)
    wait_port pgbouncer "$PGBOUNCER_PORT" "$!"
    add_target pgbouncer "PGSSLMODE=disable" "-h 127.0.0.1 -p $PGBOUNCER_PORT -U $PG_USER $BENCH_DB"
fi

# -- sqlgate: dev OIDC issuer + gateway
TOKEN=""
if [[ $SKIP_SQLGATE != 1 ]]; then
    ISSUER_PORT=$(free_port "$ISSUER_PORT")
    SQLGATE_PORT=$(free_port "$SQLGATE_PORT")
    [[ $SQLGATE_PORT == "$ISSUER_PORT" ]] && SQLGATE_PORT=$(free_port $((SQLGATE_PORT + 1)))
    ISSUER=http://127.0.0.1:$ISSUER_PORT
    KEY=$TMP/issuer-key.pem

    log "starting dev issuer at $ISSUER"
    "$SQLGATE_BIN" dev-issuer --key "$KEY" --listen "127.0.0.1:$ISSUER_PORT" >"$TMP/issuer.log" 2>&1 &
    PIDS+=($!)
    wait_port issuer "$ISSUER_PORT" "$!"
    if have curl; then
        curl -fsS "$ISSUER/.well-known/openid-configuration" >/dev/null \
            || { show_log issuer; die "issuer discovery document not served at $ISSUER/.well-known/openid-configuration"; }
    fi
    [[ -s $KEY ]] || die "dev-issuer did not create $KEY"

    TOKEN=$("$SQLGATE_BIN" token --key "$KEY" --issuer "$ISSUER" --audience api://sqlgate \
        --sub bench-agent --group bench-agents --ttl 1h) || die "sqlgate token failed"
    [[ -n $TOKEN ]] || die "sqlgate token printed nothing"

    log "generating a self-signed TLS certificate for the gateway"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 2 -subj /CN=localhost \
        >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; die "openssl failed"; }
    mkdir -p "$TMP/audit"

    # start_gateway NAME PORT AUDIT_LINES [SERVE_FLAGS...]: one gateway, its config in $TMP/NAME.toml.
    start_gateway() {
        local name=$1 port=$2 audit_lines=$3; shift 3
        mkdir -p "$TMP/audit-$name"
        cat >"$TMP/$name.toml" <<EOF
[listen]
postgres = "127.0.0.1:$port"
allow_plaintext = true        # loopback only: the bench measures without TLS like pgbouncer, and a second run with TLS
tls_cert = "cert.pem"         # paths relative to this file
tls_key = "key.pem"

[identity]
issuer = "$ISSUER"
audience = "api://sqlgate"

[[connection]]
name = "bench"
upstream = "$PG_HOST:$PG_PORT"
database = "$BENCH_DB"
user = "$PG_USER"
# trust upstream: no password

[[grant]]
connection = "bench"
groups = ["bench-agents"]
access = "read-only"
ttl = "1h"
max_sessions_per_identity = 256   # every pgbench client is the same agent

[audit]
dir = "audit-$name"
$audit_lines
EOF
        log "starting $name on 127.0.0.1:$port"
        "$SQLGATE_BIN" serve --config "$TMP/$name.toml" "$@" >"$TMP/$name.log" 2>&1 &
        PIDS+=($!)
        wait_port "$name" "$port" "$!"
    }
    start_gateway sqlgate "$SQLGATE_PORT" 'durability = "strict"'

    # One real query end to end, so a misconfiguration fails here with a clear message.
    for sslmode in disable require; do
        out=$(PGPASSWORD=$TOKEN PGSSLMODE=$sslmode psql -X -h 127.0.0.1 -p "$SQLGATE_PORT" -U bench-agent -d bench \
            -Atc 'select count(*) from pgbench_branches' 2>&1) \
            || { show_log sqlgate; die "query through sqlgate (sslmode=$sslmode) failed: $out"; }
        [[ $out == "$SCALE" ]] || die "unexpected answer through sqlgate (sslmode=$sslmode): $out"
    done
    log "sqlgate answers (plaintext and TLS)"

    add_target sqlgate "PGSSLMODE=disable PGPASSWORD=\$TOKEN" "-h 127.0.0.1 -p $SQLGATE_PORT -U bench-agent bench"
    add_target sqlgate-tls "PGSSLMODE=require PGPASSWORD=\$TOKEN" "-h 127.0.0.1 -p $SQLGATE_PORT -U bench-agent bench"

    if [[ $AUDIT_VARIANTS == 1 ]]; then
        # The audit trail's cost: batched durability, and no audit writes at all (a
        # bench-only switch; the records are built, then dropped unwritten).
        BATCHED_PORT=$(free_port $((SQLGATE_PORT + 1)))
        start_gateway sqlgate-batched "$BATCHED_PORT" $'durability = "batched"\nbatch_interval = "200ms"'
        NOAUDIT_PORT=$(free_port $((BATCHED_PORT + 1)))
        start_gateway sqlgate-noaudit "$NOAUDIT_PORT" "" --bench-discard-audit
        add_target sqlgate-batched "PGSSLMODE=disable PGPASSWORD=\$TOKEN" "-h 127.0.0.1 -p $BATCHED_PORT -U bench-agent bench"
        add_target sqlgate-noaudit "PGSSLMODE=disable PGPASSWORD=\$TOKEN" "-h 127.0.0.1 -p $NOAUDIT_PORT -U bench-agent bench"
    fi
fi

# ---------------------------------------------------------------- runs

# Results, one entry per run: "kind|target|mode|tps|latency|conn_ms|command".
ROWS=()

# run KIND TARGET MODE PGBENCH_OPTS...: one pgbench run; records a row (or FAILED) and goes on.
run() {
    local kind=$1 target=$2 mode=$3; shift 3
    local envs=${T_ENV[$target]} args=${T_ARGS[$target]}
    local cmd="$envs pgbench $* $args"
    local out="$TMP/run-$kind-$target-$mode.log"
    log "$kind $target -M $mode: $cmd"
    # $envs holds literal "$TOKEN"; expand it only here, so the recorded command never shows the token.
    local -a envv
    read -r -a envv <<<"${envs//\$TOKEN/$TOKEN}"
    # In the background + wait, so Ctrl-C / TERM reach the trap at once (cleanup kills CURRENT_PID).
    # shellcheck disable=SC2086
    env "${envv[@]}" pgbench "$@" $args >"$out" 2>&1 &
    CURRENT_PID=$!
    local rc=0
    wait "$CURRENT_PID" || rc=$?
    CURRENT_PID=""
    if [[ $rc == 0 ]]; then
        local tps lat conn
        tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' "$out" | tail -n 1)
        lat=$(sed -nE 's/^latency average = ([0-9.]+) ms.*/\1/p' "$out" | tail -n 1)
        conn=$(sed -nE 's/^average connection time = ([0-9.]+) ms.*/\1/p' "$out" | tail -n 1)
        [[ -n $tps ]] && tps=$(printf '%.0f' "$tps")
        ROWS+=("$kind|$target|$mode|${tps:-?}|${lat:-?}|${conn:--}|$cmd")
    else
        log "FAILED ($out):"
        tail -n 5 "$out" >&2
        ROWS+=("$kind|$target|$mode|FAILED|-|-|$cmd")
    fi
}

for mode in $MODES; do
    for target in "${TARGETS[@]}"; do
        run throughput "$target" "$mode" -n -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$DURATION"
    done
done
for target in "${TARGETS[@]}"; do
    run connect "$target" simple -n -S -C -M simple -c "$CONNECT_CLIENTS" -j "$THREADS" -T "$CONNECT_DURATION"
done

# ---------------------------------------------------------------- report

# tps_of KIND TARGET MODE: the recorded tps, or empty.
tps_of() {
    local r
    for r in "${ROWS[@]}"; do
        IFS='|' read -r k t m tps _ <<<"$r"
        [[ $k == "$1" && $t == "$2" && $m == "$3" && $tps != FAILED ]] && { echo "$tps"; return; }
    done
}
ratio() {
    local num='^[0-9]+([.][0-9]+)?$'
    if [[ $1 =~ $num && $2 =~ $num ]]; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'
    else
        echo "-"
    fi
}

# Rows for the table (markdown, also readable in a terminal).
# TLS rows are compared with direct-tls when it was measured, the others with direct.
table() {
    echo "| run | target | mode | tps | latency ms | conn ms | vs direct | vs pgbouncer |"
    echo "|---|---|---|---:|---:|---:|---:|---:|"
    local r k t m tps lat conn base
    for r in "${ROWS[@]}"; do
        IFS='|' read -r k t m tps lat conn _ <<<"$r"
        base=direct
        [[ $t == *-tls && -n $(tps_of "$k" direct-tls "$m") ]] && base=direct-tls
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$k" "$t" "$m" "$tps" "$lat" "$conn" \
            "$(ratio "$tps" "$(tps_of "$k" "$base" "$m")")" "$(ratio "$tps" "$(tps_of "$k" pgbouncer "$m")")"
    done
}

pg_version=$(psql_admin -d postgres -Atc 'show server_version')
pgbouncer_version=$([[ -n $PGBOUNCER_BIN ]] && "$PGBOUNCER_BIN" --version 2>/dev/null | head -n 1 || echo "not installed")
sqlgate_version=$([[ $SKIP_SQLGATE != 1 ]] && { "$SQLGATE_BIN" --version 2>/dev/null || echo "sqlgate (version unknown)"; } || echo "sqlgate skipped")
git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
git diff --quiet HEAD 2>/dev/null || git_rev="$git_rev (dirty)"
cpu=$(sed -nE 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n 1)

TABLE=$(table)
echo
echo "$TABLE"
echo
echo "tps: pgbench 'tps = N' (throughput runs: without initial connection time; -C runs: including reconnects)."
echo "vs direct: TLS rows against direct-tls when measured. conn ms: pgbench 'average connection time' (-C runs)."

mkdir -p "$RESULTS_DIR"
RESULTS_FILE="$RESULTS_DIR/$(date -u +%F).md"
{
    [[ -s $RESULTS_FILE ]] || printf '# pgbench results %s\n' "$(date -u +%F)"
    echo
    echo "## $(date -u '+%F %H:%M:%S UTC'), sqlgate $git_rev"
    echo
    echo "- machine: nproc $(nproc), kernel $(uname -r), cpu: ${cpu:-unknown}"
    echo "- PostgreSQL $pg_version; $pgbouncer_version (pool_mode=$PGBOUNCER_POOL_MODE); $sqlgate_version"
    echo "- SCALE=$SCALE CLIENTS=$CLIENTS THREADS=$THREADS DURATION=$DURATION CONNECT_CLIENTS=$CONNECT_CLIENTS CONNECT_DURATION=$CONNECT_DURATION"
    [[ $SKIP_SQLGATE == 1 ]] && echo "- sqlgate skipped (SKIP_SQLGATE=1)"
    echo "- load generator, gateway and PostgreSQL share the same $(nproc) cores"
    echo
    echo "$TABLE"
    echo
    echo "Commands (\$TOKEN: a JWT from \`sqlgate token\`):"
    echo
    echo '```'
    for r in "${ROWS[@]}"; do echo "${r##*|}"; done
    echo '```'
} >>"$RESULTS_FILE"
log "results appended to ${RESULTS_FILE#"$ROOT"/}"

FAILED=0
for r in "${ROWS[@]}"; do [[ $r == *"|FAILED|"* ]] && FAILED=1; done
[[ $FAILED == 0 ]] || { log "some runs failed; logs in $TMP"; exit 1; }
