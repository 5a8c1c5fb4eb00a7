#!/usr/bin/env bash
# bench/audit_tools.sh: times `sqlgate audit verify | sessions | export | replay` on a
# generated hash-chained trail (RECORDS, default 1,000,000; about 370 MB).
#
#   bench/audit_tools.sh
#   RECORDS=100000 SKIP_BUILD=1 bench/audit_tools.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RECORDS=${RECORDS:-1000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${HOME:-/root}/.cache/sqlgate/target}"
BIN=$CARGO_TARGET_DIR/release/sqlgate
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --release --bin sqlgate
TMP=$(mktemp -d "${TMPDIR:-/tmp}/sqlgate-audit-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
python3 bench/gen_trail.py "$TMP/trail" "$RECORDS"
echo "trail: $RECORDS records, $(du -h "$TMP/trail/audit.jsonl" | cut -f1)"
t() { local name=$1; shift; /usr/bin/time -f "$name: %e s, max RSS %M KB" "$@" >/dev/null; }
t verify   "$BIN" audit verify --dir "$TMP/trail"
t sessions "$BIN" audit sessions --dir "$TMP/trail"
t export   "$BIN" audit export --dir "$TMP/trail" --out "$TMP/export.jsonl"
t replay   "$BIN" audit replay s-0000000000000005 --dir "$TMP/trail" --html "$TMP/replay.html"
