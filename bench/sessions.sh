#!/usr/bin/env bash
# bench/sessions.sh: what idle sessions cost the gateway, and whether the session caps hold
# (issue 12: one agent cannot exhaust the gateway).
#
#   bench/sessions.sh                          # build, then both runs (about 1 minute)
#   SKIP_BUILD=1 bench/sessions.sh             # use the existing release binary
#   SSLMODES=disable bench/sessions.sh         # plaintext only
#
# Starts a dev issuer and, per sslmode, a fresh gateway with small caps, then opens idle
# sessions in steps with a stdlib-only Python wire client (bench/pgwire.py) and prints,
# per step, the gateway's VmRSS and the upstream backends PostgreSQL sees; then RSS per
# idle session (slope), a burst of concurrent logins, and every refusal with its SQLSTATE
# and message. Fails (exit 2) if PostgreSQL ever saw more backends than a cap allows. Knobs under "Settings" and in
# bench/README.md. The report is printed and appended to bench/results/YYYY-MM-DD-sessions.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# ---------------------------------------------------------------- settings

MAX_SESSIONS=${MAX_SESSIONS:-60}         # [limits] max_sessions (gateway)
CONN_A_MAX=${CONN_A_MAX:-25}             # [[connection]] "a" max_sessions
CONN_B_MAX=${CONN_B_MAX:-50}             # [[connection]] "b" max_sessions
PER_IDENTITY=${PER_IDENTITY:-10}         # [limits] max_sessions_per_identity
MAX_UNAUTH=${MAX_UNAUTH:-16}             # [limits] max_unauthenticated
STEPS=${STEPS:-"0 10 20 30 40 50 60 80 100"}  # attempted sessions after each step
PER_AGENT=${PER_AGENT:-8}                # staircase sessions per identity (< PER_IDENTITY)
EXTRA=${EXTRA:-3}                        # attempts past the identity / unauthenticated caps
BURST=${BURST:-100}                      # logins in the concurrent burst at the end (0: none)
BURST_THREADS=${BURST_THREADS:-12}       # of them at once (below MAX_UNAUTH, so the session caps race)
SSLMODES=${SSLMODES:-"disable require"}  # one fresh gateway per mode
SETTLE=${SETTLE:-0.5}                    # seconds between a step and its RSS reading

PG_HOST=127.0.0.1
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
BENCH_DB=${BENCH_DB:-sqlgate_bench}
SQLGATE_PORT=${SQLGATE_PORT:-6488}
ISSUER_PORT=${ISSUER_PORT:-6487}

SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_TMP=${KEEP_TMP:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
RESULTS_FILE=${RESULTS_FILE:-$RESULTS_DIR/$(date -u +%F)-sessions.md}
PYTHON=${PYTHON:-python3}

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/sqlgate/target}"
SQLGATE_BIN=${SQLGATE_BIN:-$CARGO_TARGET_DIR/release/sqlgate}

unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
      PGSSLMODE PGSSLCERT PGSSLKEY PGSSLROOTCERT PGOPTIONS PGAPPNAME PGCONNECT_TIMEOUT

# ---------------------------------------------------------------- helpers

log() { printf '[sessions %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }
tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
free_port() { local p=$1; while tcp_open 127.0.0.1 "$p"; do p=$((p + 1)); done; echo "$p"; }
wait_port() {
    local name=$1 port=$2 pid=$3 i
    for ((i = 0; i < 300; i++)); do
        tcp_open 127.0.0.1 "$port" && return 0
        kill -0 "$pid" 2>/dev/null || { show_log "$name"; die "$name exited before listening on $port"; }
        sleep 0.1
    done
    show_log "$name"; die "$name did not listen on 127.0.0.1:$port within 30s"
}
show_log() { [[ -f "$TMP/$1.log" ]] && { log "last lines of $TMP/$1.log:"; tail -n 30 "$TMP/$1.log" >&2; } || true; }
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$@"; }

PIDS=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sqlgate-sessions.XXXXXX")
FAILED=1
stop_pid() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    if [[ $KEEP_TMP == 1 || $FAILED == 1 ]]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- preflight

LOAD_AT_START=$(cut -d" " -f1-3 /proc/loadavg)

for tool in psql pg_isready openssl "$PYTHON"; do have "$tool" || die "$tool not found"; done
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT"
(( PER_AGENT < PER_IDENTITY )) || die "PER_AGENT must be below PER_IDENTITY (the staircase is about the other caps)"
free_slots=$(psql_admin -d postgres -Atc "select current_setting('max_connections')::int
    - current_setting('superuser_reserved_connections')::int
    - (select count(*) from pg_stat_activity where backend_type = 'client backend')")
(( free_slots >= MAX_SESSIONS + 5 )) \
    || die "PostgreSQL has $free_slots free connection slots; the bench needs MAX_SESSIONS+5 = $((MAX_SESSIONS + 5))"

if [[ $SKIP_BUILD != 1 ]]; then
    log "building: cargo build --release --bin sqlgate (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release --bin sqlgate
fi
[[ -x $SQLGATE_BIN ]] || die "no sqlgate binary at $SQLGATE_BIN"

if [[ -z $(psql_admin -d postgres -Atc "select 1 from pg_database where datname = '$BENCH_DB'") ]]; then
    log "creating database $BENCH_DB"
    psql_admin -d postgres -c "create database \"$BENCH_DB\""
fi

# ---------------------------------------------------------------- issuer, tokens, certificate

ISSUER_PORT=$(free_port "$ISSUER_PORT")
SQLGATE_PORT=$(free_port "$SQLGATE_PORT")
[[ $SQLGATE_PORT == "$ISSUER_PORT" ]] && SQLGATE_PORT=$(free_port $((SQLGATE_PORT + 1)))
ISSUER=http://127.0.0.1:$ISSUER_PORT
KEY=$TMP/issuer-key.pem
log "starting dev issuer at $ISSUER"
"$SQLGATE_BIN" dev-issuer --key "$KEY" --listen "127.0.0.1:$ISSUER_PORT" >"$TMP/issuer.log" 2>&1 &
PIDS+=($!)
wait_port issuer "$ISSUER_PORT" "$!"

max_step=0
for s in $STEPS; do (( s > max_step )) && max_step=$s; done
AGENTS=$(( (max_step + PER_AGENT - 1) / PER_AGENT ))
(( AGENTS >= 1 )) || AGENTS=1
log "minting tokens for $AGENTS agents + solo-agent"
{
    echo "{"
    for ((i = 1; i <= AGENTS; i++)); do
        t=$("$SQLGATE_BIN" token --key "$KEY" --issuer "$ISSUER" --audience api://sqlgate \
            --sub "agent-$i" --group bench-agents --ttl 1h) || die "sqlgate token failed"
        printf '"agent-%d": "%s",\n' "$i" "$t"
    done
    t=$("$SQLGATE_BIN" token --key "$KEY" --issuer "$ISSUER" --audience api://sqlgate \
        --sub solo-agent --group bench-agents --ttl 1h) || die "sqlgate token failed"
    printf '"solo-agent": "%s"\n}\n' "$t"
} >"$TMP/tokens.json"

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" -days 2 -subj /CN=localhost \
    >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; die "openssl failed"; }
mkdir -p "$TMP/audit"

cat >"$TMP/gateway.toml" <<EOF
[listen]
postgres = "127.0.0.1:$SQLGATE_PORT"
allow_plaintext = true        # loopback only
tls_cert = "cert.pem"
tls_key = "key.pem"

[identity]
issuer = "$ISSUER"
audience = "api://sqlgate"

[limits]
max_sessions = $MAX_SESSIONS
max_sessions_per_identity = $PER_IDENTITY
max_unauthenticated = $MAX_UNAUTH

# Two connections to the same database, so the staircase meets a connection cap (a)
# and then the gateway's cap (b has room left).
[[connection]]
name = "a"
upstream = "$PG_HOST:$PG_PORT"
database = "$BENCH_DB"
user = "$PG_USER"
max_sessions = $CONN_A_MAX

[[connection]]
name = "b"
upstream = "$PG_HOST:$PG_PORT"
database = "$BENCH_DB"
user = "$PG_USER"
max_sessions = $CONN_B_MAX

[[grant]]
connection = "a"
groups = ["bench-agents"]
access = "read-only"
ttl = "1h"

[[grant]]
connection = "b"
groups = ["bench-agents"]
access = "read-only"
ttl = "1h"

[audit]
dir = "audit"
EOF
"$SQLGATE_BIN" check --config "$TMP/gateway.toml" >"$TMP/check.log" 2>&1 \
    || { cat "$TMP/check.log" >&2; die "sqlgate check rejected the config (a binary without the session caps of issue 12?)"; }

# ---------------------------------------------------------------- runs

REPORT=""
STATUS=0
for sslmode in $SSLMODES; do
    log "sslmode=$sslmode: starting a fresh gateway on 127.0.0.1:$SQLGATE_PORT"
    "$SQLGATE_BIN" serve --config "$TMP/gateway.toml" >"$TMP/sqlgate-$sslmode.log" 2>&1 &
    gw=$!
    PIDS+=("$gw")
    wait_port "sqlgate-$sslmode" "$SQLGATE_PORT" "$gw"
    log "sslmode=$sslmode: opening sessions (steps: $STEPS)"
    rc=0
    out=$("$PYTHON" "$ROOT/bench/sessions.py" --port "$SQLGATE_PORT" --pid "$gw" \
        --pg-port "$PG_PORT" --pg-user "$PG_USER" --database "$BENCH_DB" \
        --tokens "$TMP/tokens.json" --sslmode "$sslmode" --steps "${STEPS// /,}" \
        --per-agent "$PER_AGENT" --extra "$EXTRA" --burst "$BURST" --burst-threads "$BURST_THREADS" --settle "$SETTLE" \
        --cap-gateway "$MAX_SESSIONS" --cap-a "$CONN_A_MAX" --cap-b "$CONN_B_MAX" \
        --cap-identity "$PER_IDENTITY" --cap-unauth "$MAX_UNAUTH" \
        --json "$TMP/sessions-$sslmode.json") || rc=$?
    kill -0 "$gw" 2>/dev/null || { show_log "sqlgate-$sslmode"; die "the gateway died during the run"; }
    stop_pid "$gw"
    [[ -n $out ]] || { show_log "sqlgate-$sslmode"; die "sessions.py failed (rc $rc)"; }
    (( rc == 0 )) || { STATUS=$rc; log "sslmode=$sslmode: a cap did not hold or sessions died (rc $rc)"; }
    echo
    echo "$out"
    REPORT+="$out"$'\n\n'
done

# ---------------------------------------------------------------- record

git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
git diff --quiet HEAD 2>/dev/null || git_rev="$git_rev (dirty)"
cpu=$(sed -nE 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n 1)
pg_version=$(psql_admin -d postgres -Atc 'show server_version')
mkdir -p "$(dirname "$RESULTS_FILE")"
{
    [[ -s $RESULTS_FILE ]] || printf '# Idle sessions and session caps (bench/sessions.sh)\n'
    echo
    echo "## $(date -u '+%F %H:%M:%S UTC'), bench scripts from tree $git_rev"
    echo
    echo "- machine: nproc $(nproc), kernel $(uname -r), cpu: ${cpu:-unknown}; client, gateway and PostgreSQL share the cores"
    echo "- load average (1/5/15 min) at the start: $LOAD_AT_START, at the end: $(cut -d" " -f1-3 /proc/loadavg) (anything else running on the 2 cores skews the numbers)"
    echo "- PostgreSQL $pg_version; $("$SQLGATE_BIN" --version 2>/dev/null || echo sqlgate) ($SQLGATE_BIN)"
    echo "- command: \`$([[ $SKIP_BUILD == 1 ]] && echo "SKIP_BUILD=1 SQLGATE_BIN=$SQLGATE_BIN ")MAX_SESSIONS=$MAX_SESSIONS CONN_A_MAX=$CONN_A_MAX CONN_B_MAX=$CONN_B_MAX PER_IDENTITY=$PER_IDENTITY MAX_UNAUTH=$MAX_UNAUTH STEPS=\"$STEPS\" PER_AGENT=$PER_AGENT BURST=$BURST BURST_THREADS=$BURST_THREADS SSLMODES=\"$SSLMODES\" bench/sessions.sh\`"
    echo "- VmRSS from /proc/PID/status of the \`sqlgate serve\` process; upstream backends from pg_stat_activity (application_name set by the client, passed through by sqlgate)"
    echo
    echo "$REPORT"
} >>"$RESULTS_FILE"
log "results appended to ${RESULTS_FILE#"$ROOT"/}"
FAILED=$(( STATUS != 0 ))
exit "$STATUS"
