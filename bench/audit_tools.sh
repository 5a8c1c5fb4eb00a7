#!/usr/bin/env bash
# bench/audit_tools.sh: times `sqlgate audit verify | sessions | export (jsonl, parquet,
# arrow) | replay` on a generated hash-chained trail (RECORDS, default 1,000,000; about
# 370 MB), and prints records/s and the size of each export.
#
#   bench/audit_tools.sh
#   RECORDS=100000 SKIP_BUILD=1 bench/audit_tools.sh
#   BIN=/path/to/sqlgate SKIP_BUILD=1 bench/audit_tools.sh   # a binary built elsewhere
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RECORDS=${RECORDS:-1000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/sqlgate/target}"
BIN=${BIN:-$CARGO_TARGET_DIR/release/sqlgate}
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --bin sqlgate
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sqlgate-audit-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 bench/gen_trail.py "$TMP/trail" "$RECORDS"
echo "trail: $RECORDS records, $(du -h "$TMP/trail/audit.jsonl" | cut -f1)"
t() {
    local name=$1; shift
    /usr/bin/time -o "$TMP/time" -f "%e %M" "$@" >/dev/null 2>"$TMP/stderr" || { cat "$TMP/stderr"; exit 1; }
    read -r secs rss <"$TMP/time"
    # export's own rate: its second pass (the first reads the sessions to filter on)
    local pass2
    pass2=$(sed -n 's/^exported .*(\([0-9]*\) records\/s)$/, second pass \1 records\/s/p' "$TMP/stderr")
    awk -v n="$name" -v s="$secs" -v r="$rss" -v recs="$RECORDS" -v p="$pass2" \
        'BEGIN { printf "%-15s %6.2f s  %9.0f records/s  max RSS %6d KB%s\n", n ":", s, recs / (s > 0 ? s : 0.01), r, p }'
}
t verify         "$BIN" audit verify --dir "$TMP/trail"
t sessions       "$BIN" audit sessions --dir "$TMP/trail"
t export-jsonl   "$BIN" audit export --dir "$TMP/trail" --out "$TMP/export.jsonl"
t export-parquet "$BIN" audit export --dir "$TMP/trail" --format parquet --out "$TMP/export.parquet"
t export-arrow   "$BIN" audit export --dir "$TMP/trail" --format arrow --out "$TMP/export.arrow"
t replay         "$BIN" audit replay s-0000000000000005 --dir "$TMP/trail" --html "$TMP/replay.html"
echo "export sizes: jsonl $(du -h "$TMP/export.jsonl" | cut -f1), parquet $(du -h "$TMP/export.parquet" | cut -f1), arrow $(du -h "$TMP/export.arrow" | cut -f1)"
