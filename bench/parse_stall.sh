#!/usr/bin/env bash
# bench/parse_stall.sh: do sessions sending large statements stall everyone else?
# (issue 12: one agent cannot exhaust the gateway; large statements parse on a bounded pool)
#
#   bench/parse_stall.sh                                   # current tree (builds it), about 40 s of runs
#   SQLGATE_BIN=/path/to/sqlgate LABEL=before bench/parse_stall.sh
#   SQLGATE_BINS="before=/a/sqlgate after=/b/sqlgate" bench/parse_stall.sh   # several, one table
#
# Per binary: a fresh gateway; one session runs `SELECT 1` in a loop for DURATION seconds and
# its latency (p50/p90/p99/p99.9/max) is reported for three phases:
#   baseline     nothing else runs
#   load         BIG sessions through the gateway pipeline ~STMT_BYTES `SELECT ... WHERE id IN (...)`
#                statements (DEPTH in flight each, every text unique: no verdict cache hits)
#   load-direct  the same statements straight to PostgreSQL (reference: the CPU PostgreSQL
#                itself spends on them, on the same cores)
# The config uses no [limits] keys, so binaries from before the parser pool run it too
# (PARSE_THREADS / PARSE_QUEUE add them, for binaries that know them).
# The table is printed and appended to bench/results/YYYY-MM-DD-parse-stall.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# ---------------------------------------------------------------- settings

DURATION=${DURATION:-10}          # seconds of SELECT 1 per phase
WARMUP=${WARMUP:-1}               # seconds the big senders run before measuring
BIG=${BIG:-2}                     # sessions sending large statements
DEPTH=${DEPTH:-2}                 # statements each keeps in flight (pipelined)
STMT_BYTES=${STMT_BYTES:-900000}  # under limits.max_statement_bytes (default 1 MiB)
PHASES=${PHASES:-baseline,load,load-direct}
PARSE_THREADS=${PARSE_THREADS:-}  # set: [limits] parse_threads (new binaries only)
PARSE_QUEUE=${PARSE_QUEUE:-}      # set: [limits] parse_queue (new binaries only)

PG_HOST=127.0.0.1
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
BENCH_DB=${BENCH_DB:-sqlgate_bench}
TABLE=${TABLE:-sqlgate_bench_ids}
SQLGATE_PORT=${SQLGATE_PORT:-6478}
ISSUER_PORT=${ISSUER_PORT:-6477}
export SQLGATE_LOG=${SQLGATE_LOG:-warn}   # the gateway's log level (its log is kept in the temp dir)

SKIP_BUILD=${SKIP_BUILD:-0}       # 1: no cargo build (implied by SQLGATE_BIN / SQLGATE_BINS)
KEEP_TMP=${KEEP_TMP:-0}
RESULTS_DIR=${RESULTS_DIR:-$ROOT/bench/results}
RESULTS_FILE=${RESULTS_FILE:-$RESULTS_DIR/$(date -u +%F)-parse-stall.md}
PYTHON=${PYTHON:-python3}

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/sqlgate/target}"
if [[ -n ${SQLGATE_BINS:-} ]]; then
    SKIP_BUILD=1
elif [[ -n ${SQLGATE_BIN:-} ]]; then
    SKIP_BUILD=1
    # Default label: the binary's name, or for .../TARGET_DIR/release/sqlgate the target dir's name.
    default_label=$(basename "$SQLGATE_BIN")
    [[ $default_label == sqlgate ]] && default_label=$(basename "$(dirname "$(dirname "$SQLGATE_BIN")")")
    SQLGATE_BINS="${LABEL:-$default_label}=$SQLGATE_BIN"
else
    SQLGATE_BINS="${LABEL:-HEAD}=$CARGO_TARGET_DIR/release/sqlgate"
fi

unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGPASSWORD PGPASSFILE PGSERVICE \
      PGSSLMODE PGSSLCERT PGSSLKEY PGSSLROOTCERT PGOPTIONS PGAPPNAME PGCONNECT_TIMEOUT

# ---------------------------------------------------------------- helpers

log() { printf '[parse-stall %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
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
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sqlgate-parse-stall.XXXXXX")
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

for tool in psql pg_isready "$PYTHON"; do have "$tool" || die "$tool not found"; done
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" || die "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT"
if [[ $SKIP_BUILD != 1 ]]; then
    log "building: cargo build --release --bin sqlgate (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    cargo build --release --bin sqlgate
fi
for spec in $SQLGATE_BINS; do
    [[ $spec == *=* ]] || die "SQLGATE_BINS entries are label=path, got: $spec"
    [[ -x ${spec#*=} ]] || die "no sqlgate binary at ${spec#*=}"
done

if [[ -z $(psql_admin -d postgres -Atc "select 1 from pg_database where datname = '$BENCH_DB'") ]]; then
    log "creating database $BENCH_DB"
    psql_admin -d postgres -c "create database \"$BENCH_DB\""
fi
# A small table without an index: PostgreSQL answers `id IN (<100k constants>)` with a hashed
# array and a 1000-row scan, so most of its cost per statement is parsing and planning.
psql_admin -d "$BENCH_DB" -c "create table if not exists $TABLE as select generate_series(1, 1000) as id" \
    -c "analyze $TABLE"

ISSUER_PORT=$(free_port "$ISSUER_PORT")
SQLGATE_PORT=$(free_port "$SQLGATE_PORT")
[[ $SQLGATE_PORT == "$ISSUER_PORT" ]] && SQLGATE_PORT=$(free_port $((SQLGATE_PORT + 1)))
ISSUER=http://127.0.0.1:$ISSUER_PORT
KEY=$TMP/issuer-key.pem
FIRST_BIN=${SQLGATE_BINS%% *}; FIRST_BIN=${FIRST_BIN#*=}
log "starting dev issuer at $ISSUER"
"$FIRST_BIN" dev-issuer --key "$KEY" --listen "127.0.0.1:$ISSUER_PORT" >"$TMP/issuer.log" 2>&1 &
PIDS+=($!)
wait_port issuer "$ISSUER_PORT" "$!"
TOKEN=$("$FIRST_BIN" token --key "$KEY" --issuer "$ISSUER" --audience api://sqlgate \
    --sub bench-agent --group bench-agents --ttl 1h) || die "sqlgate token failed"
mkdir -p "$TMP/audit"

LIMITS=""
[[ -n $PARSE_THREADS ]] && LIMITS+="parse_threads = $PARSE_THREADS"$'\n'
[[ -n $PARSE_QUEUE ]] && LIMITS+="parse_queue = $PARSE_QUEUE"$'\n'
cat >"$TMP/gateway.toml" <<EOF
[listen]
postgres = "127.0.0.1:$SQLGATE_PORT"
allow_plaintext = true        # loopback only

[identity]
issuer = "$ISSUER"
audience = "api://sqlgate"
${LIMITS:+
[limits]
$LIMITS}
[[connection]]
name = "bench"
upstream = "$PG_HOST:$PG_PORT"
database = "$BENCH_DB"
user = "$PG_USER"

[[grant]]
connection = "bench"
groups = ["bench-agents"]
access = "read-only"
ttl = "1h"

[audit]
dir = "audit"
EOF

# ---------------------------------------------------------------- runs

ROWS=""
NOTES=""
for spec in $SQLGATE_BINS; do
    label=${spec%%=*} bin=${spec#*=}
    "$bin" check --config "$TMP/gateway.toml" >"$TMP/check-$label.log" 2>&1 \
        || { cat "$TMP/check-$label.log" >&2; die "$label: sqlgate check rejected the config"; }
    log "$label: starting $bin on 127.0.0.1:$SQLGATE_PORT"
    "$bin" serve --config "$TMP/gateway.toml" >"$TMP/sqlgate-$label.log" 2>&1 &
    gw=$!
    PIDS+=("$gw")
    wait_port "sqlgate-$label" "$SQLGATE_PORT" "$gw"
    log "$label: phases $PHASES, ${DURATION}s each"
    rows=$("$PYTHON" "$ROOT/bench/parse_stall.py" --port "$SQLGATE_PORT" --connection bench \
        --token "$TOKEN" --pg-port "$PG_PORT" --pg-user "$PG_USER" --pg-db "$BENCH_DB" \
        --table "$TABLE" --phases "$PHASES" --duration "$DURATION" --warmup "$WARMUP" \
        --big "$BIG" --depth "$DEPTH" --stmt-bytes "$STMT_BYTES" --label "$label" --pid "$gw" \
        --json "$TMP/parse-stall-$label.json" 2>"$TMP/parse-stall-$label.err") \
        || { cat "$TMP/parse-stall-$label.err" >&2; show_log "sqlgate-$label"; die "$label: parse_stall.py failed"; }
    cat "$TMP/parse-stall-$label.err" >&2
    kill -0 "$gw" 2>/dev/null || { show_log "sqlgate-$label"; die "$label: the gateway died during the run"; }
    rss=$(sed -nE 's/^VmHWM:\s*//p' "/proc/$gw/status")
    stop_pid "$gw"
    ROWS+="$rows"$'\n'
    stmt=$(sed -nE 's/.*: (statement .*)/\1/p' "$TMP/parse-stall-$label.err" | tail -n 1)
    NOTES+="- $label: \`$bin\` ($("$bin" --version 2>/dev/null || echo sqlgate)); gateway peak RSS (VmHWM) $rss; $stmt"$'\n'
done

TABLE_MD="| binary | phase | SELECT 1 runs | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | > 100 ms | large stmts/s | gateway CPU % (all / async workers) | errors |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|
${ROWS%$'\n'}"
echo
echo "$TABLE_MD"
echo
echo "$NOTES"

git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
git diff --quiet HEAD 2>/dev/null || git_rev="$git_rev (dirty)"
cpu=$(sed -nE 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n 1)
pg_version=$(psql_admin -d postgres -Atc 'show server_version')
mkdir -p "$(dirname "$RESULTS_FILE")"
{
    [[ -s $RESULTS_FILE ]] || printf '# Large statements vs other sessions (bench/parse_stall.sh)\n'
    echo
    echo "## $(date -u '+%F %H:%M:%S UTC'), bench scripts from tree $git_rev"
    echo
    echo "- machine: nproc $(nproc), kernel $(uname -r), cpu: ${cpu:-unknown}; the clients, the gateway and PostgreSQL share the cores"
    echo "- load average (1/5/15 min) at the start: $LOAD_AT_START, at the end: $(cut -d" " -f1-3 /proc/loadavg) (anything else running on the 2 cores skews the numbers)"
    echo "- PostgreSQL $pg_version"
    echo "- command: \`SQLGATE_BINS=\"$SQLGATE_BINS\" DURATION=$DURATION BIG=$BIG DEPTH=$DEPTH STMT_BYTES=$STMT_BYTES PHASES=$PHASES${PARSE_THREADS:+ PARSE_THREADS=$PARSE_THREADS}${PARSE_QUEUE:+ PARSE_QUEUE=$PARSE_QUEUE} bench/parse_stall.sh\`"
    echo "$NOTES"
    echo "$TABLE_MD"
    echo
    echo "SELECT 1 runs: round trips of one session through the gateway in ${DURATION}s. large stmts/s: completed by the $BIG senders together (load: through the gateway; load-direct: straight to PostgreSQL). Gateway CPU: utime+stime of the process (all threads) and of its tokio worker threads (named tokio-rt-worker; the runtime has one per core) over the measured window, in % of one core (200 = both cores)."
} >>"$RESULTS_FILE"
log "results appended to ${RESULTS_FILE#"$ROOT"/}"
FAILED=0
