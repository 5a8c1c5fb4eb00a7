#!/usr/bin/env bash
# bench/sysbench.sh: sysbench read workloads through sqlgate's MySQL front end, compared with
# MariaDB directly and with HAProxy (TCP pass-through), all in the same run on the same machine.
#
#   bench/sysbench.sh                  # full run (about 5 minutes with the defaults)
#   DURATION=5 bench/sysbench.sh       # quick smoke run
#   SKIP_SQLGATE=1 bench/sysbench.sh   # only direct + haproxy (no cargo build)
#
# Knobs (environment variables) are listed under "Settings" below and in bench/README.md.
# The table is printed at the end and appended to bench/results/YYYY-MM-DD-sysbench.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# ---------------------------------------------------------------- settings

TABLES=${TABLES:-4}                      # sysbench --tables
TABLE_SIZE=${TABLE_SIZE:-10000}          # sysbench --table-size (rows per table)
THREADS=${THREADS:-8}                    # sysbench --threads (one connection each)
DURATION=${DURATION:-15}                 # sysbench --time (seconds) per run
WORKLOADS=${WORKLOADS:-"oltp_point_select oltp_read_only"}
PS_MODES=${PS_MODES:-"auto disable"}     # sysbench --db-ps-mode: auto = server-side prepared statements, disable = text queries

MARIADB_HOST=127.0.0.1
MARIADB_PORT=${MARIADB_PORT:-3306}
MARIADB_ADMIN_USER=${MARIADB_ADMIN_USER:-root}
MARIADB_ADMIN_PASSWORD=${MARIADB_ADMIN_PASSWORD:-}   # root has an empty password on the dev machine
BENCH_DB=${BENCH_DB:-sqlgate_sbtest}
BENCH_USER=${BENCH_USER:-sqlgate_sb}
BENCH_PASSWORD=${BENCH_PASSWORD:-}       # empty: a random one per run (ALTER USER each run)

HAPROXY_NBTHREAD=${HAPROXY_NBTHREAD:-}   # haproxy nbthread (empty: haproxy's default, one per core)
HAPROXY_PORT=${HAPROXY_PORT:-3399}       # first port tried; the next free one is used
SQLGATE_PORT=${SQLGATE_PORT:-3398}
ISSUER_PORT=${ISSUER_PORT:-3397}

SKIP_SQLGATE=${SKIP_SQLGATE:-0}          # 1: no build, no sqlgate rows
SKIP_SQLGATE_PLAIN=${SKIP_SQLGATE_PLAIN:-0}  # 1: no sqlgate-plain rows (gateway without TLS, loopback)
SKIP_HAPROXY=${SKIP_HAPROXY:-0}          # 1: no haproxy rows
SKIP_BUILD=${SKIP_BUILD:-0}              # 1: use the existing release binary as is
KEEP_TMP=${KEEP_TMP:-0}                  # 1: keep the temp dir (configs, logs, audit trail)
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
export SQLGATE_LOG=${SQLGATE_LOG:-info}  # sqlgate's log filter (RUST_LOG is not read)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/sqlgate/target}"
SQLGATE_BIN=${SQLGATE_BIN:-$CARGO_TARGET_DIR/release/sqlgate}

# Keep the MariaDB client from picking up anything from the caller's environment.
unset MYSQL_PWD MYSQL_HOST MYSQL_TCP_PORT MYSQL_UNIX_PORT MYSQL_TEST_LOGIN_FILE

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

# mysql_admin ARGS...: the MariaDB client as the admin user, batch mode, no option files.
mysql_admin() {
    MYSQL_PWD=$MARIADB_ADMIN_PASSWORD "$MYSQL_CLIENT" --no-defaults --protocol=tcp -h "$MARIADB_HOST" -P "$MARIADB_PORT" \
        -u "$MARIADB_ADMIN_USER" --batch --skip-column-names "$@"
}

# cpu_ticks PID: user + system clock ticks of a process (all its threads), or empty.
cpu_ticks() {
    [[ -n $1 && -r /proc/$1/stat ]] || return 0
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }               # fields from 3 on (the command name may hold spaces)
    # shellcheck disable=SC2086
    set -- $stat
    echo $(( ${12} + ${13} ))       # utime (field 14), stime (field 15)
}
CLK_TCK=$(getconf CLK_TCK 2>/dev/null || echo 100)

# Background processes we started, killed (by pid) on exit.
PIDS=()
CURRENT_PID=""   # the sysbench running now
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sqlgate-sysbench.XXXXXX")
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

have sysbench || die "sysbench not found (apt-get install sysbench)"
MYSQL_CLIENT=$(command -v mariadb || command -v mysql || true)
[[ -n $MYSQL_CLIENT ]] || die "mariadb client not found (apt-get install mariadb-client)"
mysql_admin -e 'select 1' >/dev/null 2>"$TMP/admin.err" \
    || { cat "$TMP/admin.err" >&2; die "cannot log in to MariaDB at $MARIADB_HOST:$MARIADB_PORT as $MARIADB_ADMIN_USER (MARIADB_ADMIN_PASSWORD)"; }
for name in "$BENCH_DB" "$BENCH_USER"; do
    [[ $name =~ ^[A-Za-z0-9_]+$ ]] || die "BENCH_DB / BENCH_USER must be [A-Za-z0-9_]+ (got $name)"
done
[[ $TABLES -ge 1 && $TABLE_SIZE -ge 1 && $THREADS -ge 1 ]] || die "TABLES, TABLE_SIZE and THREADS must be >= 1"

HAPROXY_BIN=$(command -v haproxy || true)
[[ -z $HAPROXY_BIN && -x /usr/sbin/haproxy ]] && HAPROXY_BIN=/usr/sbin/haproxy
if [[ $SKIP_HAPROXY != 1 && -z $HAPROXY_BIN ]]; then
    log "haproxy not installed: skipping haproxy rows (apt-get install haproxy)"
    SKIP_HAPROXY=1
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

# ---------------------------------------------------------------- bench database and user

if [[ -z $BENCH_PASSWORD ]]; then
    BENCH_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
fi
# The user connects over TCP from 127.0.0.1 (directly, through HAProxy and through sqlgate);
# MariaDB here runs with skip_name_resolve, so the host part is the address.
log "database $BENCH_DB, user $BENCH_USER@127.0.0.1 (password set for this run)"
sql_password=${BENCH_PASSWORD//\\/\\\\}
sql_password=${sql_password//\'/\\\'}
mysql_admin <<EOF
CREATE DATABASE IF NOT EXISTS \`$BENCH_DB\`;
CREATE USER IF NOT EXISTS '$BENCH_USER'@'127.0.0.1' IDENTIFIED BY '$sql_password';
ALTER USER '$BENCH_USER'@'127.0.0.1' IDENTIFIED BY '$sql_password';
GRANT ALL ON \`$BENCH_DB\`.* TO '$BENCH_USER'@'127.0.0.1';
EOF
unset sql_password

# Common sysbench options (the connection options are per target).
SB_DATA=(--tables="$TABLES" --table-size="$TABLE_SIZE")
SB_DIRECT=(--mysql-host="$MARIADB_HOST" --mysql-port="$MARIADB_PORT" --mysql-user="$BENCH_USER" --mysql-db="$BENCH_DB")

# Prepared already? Every sbtestN table present with TABLE_SIZE rows, and no extra ones.
prepared=1
have_tables=$(mysql_admin -e "select count(*) from information_schema.tables
    where table_schema = '$BENCH_DB' and table_name regexp '^sbtest[0-9]+\$'")
if [[ $have_tables != "$TABLES" ]]; then
    prepared=0
else
    for ((i = 1; i <= TABLES; i++)); do
        rows=$(mysql_admin -e "select count(*) from \`$BENCH_DB\`.sbtest$i" 2>/dev/null || echo 0)
        [[ $rows == "$TABLE_SIZE" ]] || { prepared=0; break; }
    done
fi
if [[ $prepared == 1 ]]; then
    log "$BENCH_DB already prepared: $TABLES tables x $TABLE_SIZE rows"
else
    log "preparing $BENCH_DB: sysbench oltp_read_only prepare, $TABLES tables x $TABLE_SIZE rows (found ${have_tables:-0} sbtest tables)"
    # Drop whatever is there (other table counts or sizes) first.
    for t in $(mysql_admin -e "select table_name from information_schema.tables
            where table_schema = '$BENCH_DB' and table_name regexp '^sbtest[0-9]+\$'"); do
        mysql_admin -e "drop table \`$BENCH_DB\`.\`$t\`"
    done
    sysbench oltp_read_only "${SB_DATA[@]}" "${SB_DIRECT[@]}" --mysql-password="$BENCH_PASSWORD" \
        prepare >"$TMP/prepare.log" 2>&1 \
        || { tail -n 20 "$TMP/prepare.log" >&2; die "sysbench prepare failed"; }
fi

# ---------------------------------------------------------------- targets
# Each target: its environment, how sysbench reaches it (connection options, with the literal
# placeholders $BENCH_PASSWORD / $TOKEN, so recorded commands never show a secret), the
# directory it runs in (sysbench 1.0 reads its TLS files from there) and the proxy's pid (for
# its CPU).

declare -A T_ENV T_ARGS T_DIR T_PID
TARGETS=()

add_target() { TARGETS+=("$1"); T_ENV[$1]=$2; T_ARGS[$1]=$3; T_DIR[$1]=$4; T_PID[$1]=$5; }

# libmariadb loads the auth plugins sqlgate asks for (mysql_clear_password, and
# caching_sha2_password over TLS) from .so files on first use, and the lookup and the load
# are not one locked step: threads that connect at once race, and the losers fail with
# "error 1251: Plugin mysql_clear_password could not be loaded: it is already loaded".
# Loading them at library init (LIBMYSQL_PLUGINS, read by mysql_library_init) avoids that.
SQLGATE_CLIENT_ENV=${SQLGATE_CLIENT_ENV-"LIBMYSQL_PLUGINS=mysql_clear_password;caching_sha2_password"}

add_target direct "" "--mysql-host=$MARIADB_HOST --mysql-port=$MARIADB_PORT --mysql-user=$BENCH_USER --mysql-password=\$BENCH_PASSWORD --mysql-db=$BENCH_DB" "$TMP" ""

# -- haproxy: a plain TCP relay to MariaDB
if [[ $SKIP_HAPROXY != 1 ]]; then
    HAPROXY_PORT=$(free_port "$HAPROXY_PORT")
    maxconn=$(( THREADS * 4 + 16 ))
    cat >"$TMP/haproxy.cfg" <<EOF
global
    maxconn $maxconn
$([[ -n $HAPROXY_NBTHREAD ]] && echo "    nbthread $HAPROXY_NBTHREAD")

defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h

frontend mysql_in
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend mariadb

backend mariadb
    server mariadb $MARIADB_HOST:$MARIADB_PORT
EOF
    "$HAPROXY_BIN" -c -q -f "$TMP/haproxy.cfg" >"$TMP/haproxy-check.log" 2>&1 \
        || { cat "$TMP/haproxy-check.log" >&2; die "haproxy rejected $TMP/haproxy.cfg"; }
    log "starting haproxy (mode tcp) on 127.0.0.1:$HAPROXY_PORT -> $MARIADB_HOST:$MARIADB_PORT"
    # -db: stay in the foreground (so the pid we hold is haproxy's, and kill works).
    "$HAPROXY_BIN" -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
    PIDS+=($!)
    HAPROXY_PID=$!
    wait_port haproxy "$HAPROXY_PORT" "$HAPROXY_PID"
    add_target haproxy "" "--mysql-host=127.0.0.1 --mysql-port=$HAPROXY_PORT --mysql-user=$BENCH_USER --mysql-password=\$BENCH_PASSWORD --mysql-db=$BENCH_DB" "$TMP" "$HAPROXY_PID"
fi

# -- sqlgate: dev OIDC issuer + gateway
TOKEN=""
SQLGATE_PID=""
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

    log "generating self-signed TLS certificates (gateway; sysbench's client files)"
    # sysbench 1.0 --mysql-ssl=on passes client-key.pem, client-cert.pem and cacert.pem from
    # its working directory to mysql_ssl_set(); libmariadb then verifies the gateway's
    # certificate against cacert.pem, so the gateway's self-signed certificate is the CA.
    mkdir -p "$TMP/ssl" "$TMP/audit"
    for pair in "key.pem cert.pem localhost" "ssl/client-key.pem ssl/client-cert.pem sysbench"; do
        read -r k c cn <<<"$pair"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$TMP/$k" -out "$TMP/$c" -days 2 -subj "/CN=$cn" \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            >>"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; die "openssl failed"; }
    done
    cp "$TMP/cert.pem" "$TMP/ssl/cacert.pem"

    # The held credential: the bench user's password, read by the gateway per session.
    (umask 077; printf '%s\n' "$BENCH_PASSWORD" >"$TMP/bench.pw")

    cat >"$TMP/gateway.toml" <<EOF
[listen]
mysql = "127.0.0.1:$SQLGATE_PORT"
allow_plaintext = $([[ $SKIP_SQLGATE_PLAIN == 1 ]] && echo false || echo true)   # loopback only: the sqlgate-plain rows
tls_cert = "cert.pem"         # paths relative to this file
tls_key = "key.pem"

[identity]
issuer = "$ISSUER"
audience = "api://sqlgate"

[[connection]]
name = "bench"
protocol = "mysql"
upstream = "$MARIADB_HOST:$MARIADB_PORT"
database = "$BENCH_DB"
user = "$BENCH_USER"
password_file = "bench.pw"
max_sessions = $(( THREADS + 4 > 50 ? THREADS + 4 : 50 ))

[[grant]]
connection = "bench"
groups = ["bench-agents"]
access = "read-only"
ttl = "1h"
max_sessions_per_identity = $(( THREADS + 4 > 10 ? THREADS + 4 : 10 ))

[audit]
dir = "audit"
EOF
    "$SQLGATE_BIN" check --config "$TMP/gateway.toml" >"$TMP/check.log" 2>&1 \
        || { cat "$TMP/check.log" >&2; die "sqlgate check rejected $TMP/gateway.toml"; }
    log "starting sqlgate (MySQL listener) on 127.0.0.1:$SQLGATE_PORT (SQLGATE_LOG=$SQLGATE_LOG)"
    "$SQLGATE_BIN" serve --config "$TMP/gateway.toml" >"$TMP/sqlgate.log" 2>&1 &
    PIDS+=($!)
    SQLGATE_PID=$!
    wait_port sqlgate "$SQLGATE_PORT" "$SQLGATE_PID"

    # One real query end to end with the mariadb client, so a misconfiguration fails here
    # with a clear message.
    out=$(MYSQL_PWD=$TOKEN "$MYSQL_CLIENT" --no-defaults --protocol=tcp -h 127.0.0.1 -P "$SQLGATE_PORT" \
        -u bench-agent --ssl --batch --skip-column-names bench -e 'select count(*) from sbtest1' 2>&1) \
        || { show_log sqlgate; die "query through sqlgate (mariadb --ssl) failed: $out"; }
    [[ $out == "$TABLE_SIZE" ]] || die "unexpected answer through sqlgate: $out"

    # And sysbench itself, once, with its client library's debug trace: this shows that
    # --mysql-ssl=on really negotiated TLS (the listener also allows plaintext on loopback).
    (cd "$TMP/ssl" && sysbench oltp_point_select "${SB_DATA[@]}" --threads=1 --events=20 --time=0 \
        --mysql-host=127.0.0.1 --mysql-port="$SQLGATE_PORT" --mysql-user=bench-agent \
        --mysql-password="$TOKEN" --mysql-db=bench --mysql-ssl=on --mysql-debug=on run) \
        >"$TMP/tls-check.log" 2>&1 \
        || { grep -E 'FATAL|ALERT' "$TMP/tls-check.log" >&2 || tail -n 20 "$TMP/tls-check.log" >&2; show_log sqlgate
             die "sysbench --mysql-ssl=on through sqlgate failed ($TMP/tls-check.log)"; }
    SQLGATE_CIPHER=$(sed -nE '/mysql_get_ssl_cipher\(con\)/ { s/.*mysql_get_ssl_cipher\(con\): "([^"]*)".*/\1/p; q }' "$TMP/tls-check.log")
    [[ -n $SQLGATE_CIPHER && $SQLGATE_CIPHER != "(null)" ]] \
        || die "sysbench --mysql-ssl=on did not negotiate TLS with sqlgate (see $TMP/tls-check.log)"
    log "sqlgate answers (mariadb --ssl; sysbench --mysql-ssl=on: $SQLGATE_CIPHER)"

    add_target sqlgate-tls "$SQLGATE_CLIENT_ENV" "--mysql-host=127.0.0.1 --mysql-port=$SQLGATE_PORT --mysql-user=bench-agent --mysql-password=\$TOKEN --mysql-db=bench --mysql-ssl=on" "$TMP/ssl" "$SQLGATE_PID"
    if [[ $SKIP_SQLGATE_PLAIN != 1 ]]; then
        add_target sqlgate-plain "$SQLGATE_CLIENT_ENV" "--mysql-host=127.0.0.1 --mysql-port=$SQLGATE_PORT --mysql-user=bench-agent --mysql-password=\$TOKEN --mysql-db=bench" "$TMP" "$SQLGATE_PID"
    fi
fi

MARIADB_SSL=$(mysql_admin -e "show global variables like 'have_ssl'" | awk '{print $2}')

# ---------------------------------------------------------------- runs

# Results, one entry per run: "workload|mode|target|tps|qps|p95|avg|errors|proxy_cpu|command".
ROWS=()
FAILS=()   # per failed run: a title line, then sysbench's error lines (counted)

# run WORKLOAD MODE TARGET: one sysbench run; records a row (or FAILED) and goes on.
run() {
    local workload=$1 mode=$2 target=$3
    local envs=${T_ENV[$target]} args=${T_ARGS[$target]} dir=${T_DIR[$target]} pid=${T_PID[$target]}
    local opts="${SB_DATA[*]} --threads=$THREADS --time=$DURATION --db-ps-mode=$mode --histogram=off"
    local cmd="sysbench $workload $opts $args run"
    [[ -n $envs ]] && cmd="${envs//;/\\;} $cmd"
    local out="$TMP/run-$workload-$mode-$target.log"
    log "$workload ps=$mode $target: $cmd"
    # $args holds literal "$BENCH_PASSWORD" / "$TOKEN"; expanded only here.
    local real=${args//\$BENCH_PASSWORD/$BENCH_PASSWORD}
    real=${real//\$TOKEN/$TOKEN}
    local -a argv
    read -r -a argv <<<"$opts $real"
    local t0 c0 t1 c1
    c0=$(cpu_ticks "$pid"); t0=$(date +%s%N)
    # In the background + wait, so Ctrl-C / TERM reach the trap at once (cleanup kills CURRENT_PID).
    local -a envv=()
    [[ -n $envs ]] && read -r -a envv <<<"$envs"
    (cd "$dir" && exec env "${envv[@]}" sysbench "$workload" "${argv[@]}" run) >"$out" 2>&1 &
    CURRENT_PID=$!
    local rc=0
    wait "$CURRENT_PID" || rc=$?
    CURRENT_PID=""
    c1=$(cpu_ticks "$pid"); t1=$(date +%s%N)
    local cpu="-"
    if [[ -n $c0 && -n $c1 ]]; then
        # Whole run (connecting included): % of one core.
        cpu=$(awk -v d=$((c1 - c0)) -v hz="$CLK_TCK" -v ns=$((t1 - t0)) 'BEGIN { printf "%.0f", 100 * d / hz / (ns / 1e9) }')
    fi
    local tps qps p95 avg errs
    tps=$(sed -nE 's/^ *transactions: +[0-9]+ +\(([0-9.]+) per sec\.\).*/\1/p' "$out" | tail -n 1)
    qps=$(sed -nE 's/^ *queries: +[0-9]+ +\(([0-9.]+) per sec\.\).*/\1/p' "$out" | tail -n 1)
    p95=$(sed -nE 's/^ *95th percentile: +([0-9.]+).*/\1/p' "$out" | tail -n 1)
    avg=$(sed -nE 's/^ *avg: +([0-9.]+).*/\1/p' "$out" | tail -n 1)
    errs=$(sed -nE 's/^ *ignored errors: +([0-9]+) .*/\1/p' "$out" | tail -n 1)
    if [[ $rc == 0 && -n $tps ]]; then
        tps=$(printf '%.0f' "$tps"); qps=$(printf '%.0f' "${qps:-0}")
        [[ ${errs:-0} == 0 ]] || log "$errs ignored errors in $out"
        ROWS+=("$workload|$mode|$target|$tps|$qps|${p95:-?}|${avg:-?}|${errs:-?}|$cpu|$cmd")
    else
        local why
        why=$(grep -E 'FATAL|ALERT|error' "$out" | sort | uniq -c | sort -rn | head -n 10 || true)
        [[ -n $why ]] || why=$(tail -n 10 "$out")
        log "FAILED (exit $rc, $out):"
        echo "$why" >&2
        FAILS+=("$workload ps=$mode $target (exit $rc):" "$why")
        ROWS+=("$workload|$mode|$target|FAILED|-|-|-|-|$cpu|$cmd")
    fi
}

for workload in $WORKLOADS; do
    for mode in $PS_MODES; do
        for target in "${TARGETS[@]}"; do
            run "$workload" "$mode" "$target"
        done
    done
done

# ---------------------------------------------------------------- report

# tps_of WORKLOAD MODE TARGET: the recorded tps, or empty.
tps_of() {
    local r
    for r in "${ROWS[@]}"; do
        IFS='|' read -r w m t tps _ <<<"$r"
        [[ $w == "$1" && $m == "$2" && $t == "$3" && $tps != FAILED ]] && { echo "$tps"; return; }
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
table() {
    echo "| workload | ps-mode | target | tps | qps | p95 ms | avg ms | vs direct | vs haproxy | proxy CPU % |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    local r w m t tps qps p95 avg errs cpu
    for r in "${ROWS[@]}"; do
        IFS='|' read -r w m t tps qps p95 avg errs cpu _ <<<"$r"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${w#oltp_}" "$m" "$t" "$tps" "$qps" "$p95" "$avg" \
            "$(ratio "$tps" "$(tps_of "$w" "$m" direct)")" "$(ratio "$tps" "$(tps_of "$w" "$m" haproxy)")" "$cpu"
    done
}

# Denied statements (the read-only classifier) seen in the audit trail, counted.
denials() {
    local trail=$TMP/audit/audit.jsonl
    [[ -s $trail ]] || return 0
    # The 20 most frequent (sed, not head: nothing in the pipe may die of SIGPIPE under pipefail).
    { grep -F '"decision":"deny"' "$trail" || true; } | if have jq; then
        jq -r 'select(.decision == "deny") | "\(.kind // "-") | \(.reason // "-") | \(.statement // "-")"'
    else
        cat
    fi | sort | uniq -c | sort -rn | sed -n 1,20p
}

mariadb_version=$(mysql_admin -e 'select version()')
haproxy_version="haproxy not installed"
[[ -n $HAPROXY_BIN ]] && haproxy_version=$("$HAPROXY_BIN" -v 2>/dev/null | sed -nE '1{s/ - https.*//;p}')
sysbench_version=$(sysbench --version 2>/dev/null | sed -n 1p)
sqlgate_version=$([[ $SKIP_SQLGATE != 1 ]] && { "$SQLGATE_BIN" --version 2>/dev/null || echo "sqlgate (version unknown)"; } || echo "sqlgate skipped")
git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
git diff --quiet HEAD 2>/dev/null || git_rev="$git_rev (dirty)"
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)

if [[ $MARIADB_SSL == YES ]]; then
    tls_note="MariaDB has TLS on, but the direct and haproxy rows connect without it: sqlgate-tls is the only TLS row."
else
    tls_note="MariaDB has TLS off (have_ssl=${MARIADB_SSL:-?}): sqlgate-tls is the only TLS row; direct, haproxy and sqlgate-plain are plaintext."
fi
audit_note=""
if [[ -s $TMP/audit/audit.jsonl ]]; then
    audit_note="sqlgate audit trail: $(wc -l <"$TMP/audit/audit.jsonl") records, $(du -h "$TMP/audit/audit.jsonl" | cut -f1) (one per statement prepared or executed)."
fi
DENIALS=$(denials)

TABLE=$(table)
echo
echo "$TABLE"
echo
echo "tps/qps: sysbench 'transactions'/'queries' per second; p95/avg: sysbench latency per transaction (ms)."
echo "vs direct / vs haproxy: tps ratio (the same as the qps ratio: fixed queries per transaction)."
echo "proxy CPU %: the proxy process's CPU over the run, 100 = one core of $(nproc)."
echo "$tls_note"
[[ -n $audit_note ]] && echo "$audit_note"
if [[ -n $DENIALS ]]; then
    echo
    echo "DENIED by sqlgate (count | kind | reason | statement):"
    echo "$DENIALS"
fi

mkdir -p "$RESULTS_DIR"
RESULTS_FILE="$RESULTS_DIR/$(date -u +%F)-sysbench.md"
{
    [[ -s $RESULTS_FILE ]] || printf '# sysbench results %s\n' "$(date -u +%F)"
    echo
    echo "## $(date -u '+%F %H:%M:%S UTC'), sqlgate $git_rev"
    echo
    echo "- machine: nproc $(nproc), kernel $(uname -r), cpu: ${cpu:-unknown}"
    echo "- MariaDB $mariadb_version; $haproxy_version (mode tcp); $sysbench_version; $sqlgate_version"
    echo "- TABLES=$TABLES TABLE_SIZE=$TABLE_SIZE THREADS=$THREADS DURATION=$DURATION PS_MODES=\"$PS_MODES\""
    [[ $SKIP_SQLGATE == 1 ]] && echo "- sqlgate skipped (SKIP_SQLGATE=1)"
    [[ -n ${SQLGATE_CIPHER:-} ]] && echo "- sqlgate-tls: sysbench --mysql-ssl=on negotiated $SQLGATE_CIPHER"
    echo "- $tls_note"
    [[ -n $audit_note ]] && echo "- $audit_note"
    echo "- sysbench, the proxy and MariaDB all run on this one machine and share its $(nproc) cores"
    echo
    echo "$TABLE"
    if [[ ${#FAILS[@]} -gt 0 ]]; then
        echo
        echo "Failed runs (sysbench's errors, counted):"
        echo
        echo '```'
        printf '%s\n' "${FAILS[@]}"
        echo '```'
    fi
    if [[ -n $DENIALS ]]; then
        echo
        echo "Denied by sqlgate (count | kind | reason | statement):"
        echo
        echo '```'
        echo "$DENIALS"
        echo '```'
    fi
    echo
    echo "Commands (\$TOKEN: a JWT from \`sqlgate token\`; \$BENCH_PASSWORD: the bench user's password;"
    echo "sqlgate-tls runs in a directory holding cacert.pem, the gateway's self-signed certificate, and a"
    echo "client-cert.pem / client-key.pem pair: sysbench 1.0's --mysql-ssl=on reads those names from its working directory):"
    echo
    echo '```'
    for r in "${ROWS[@]}"; do echo "${r##*|}"; done
    echo '```'
} >>"$RESULTS_FILE"
log "results appended to ${RESULTS_FILE#"$ROOT"/}"

FAILED=0
for r in "${ROWS[@]}"; do [[ $r == *"|FAILED|"* ]] && FAILED=1; done
[[ -z $DENIALS ]] || FAILED=1
[[ $FAILED == 0 ]] || { log "some runs failed or statements were denied; logs in $TMP"; exit 1; }
