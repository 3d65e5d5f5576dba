#!/usr/bin/env bash
# long-sessions: long-lived client sessions while the gateway rotates its upstream connections.
# OpenAI closes a WebSocket after 60 minutes; here the gateway's max_conn_age_secs is 3 s (time
# compressed), so every shardgate round of 10 s rotates each pooled upstream connection a few
# times. Reports rotations (upstream connections the mock saw opened per round) and failed turns
# (should be 0: rotation happens between turns, never inside one).
#   perf/long-sessions.sh [steady.sh options] [--max-conn-age SECS]
set -euo pipefail
NAME=long-sessions CONNS=16 SECS=10 RATE=400 PAYLOAD=8000 IDLE=0 ROUNDS=2
AGE=3
args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --max-conn-age) AGE=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
GW_UPSTREAM_EXTRA="max_conn_age_secs = $AGE"
source "$(dirname "$0")/lib.sh"
parse_common "${args[@]+"${args[@]}"}"
compare_main
python3 - "$OUT/summary.json" "$AGE" "$SECS" "$CONNS" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
age, secs, conns = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
g = s["targets"].get("shardgate")
if g:
    print(f"\nrotation: max_conn_age {age:g} s, rounds of {secs:g} s, {conns} client sessions")
    print(f"  upstream connections opened per shardgate round: {g['upstream_conns']} "
          f"(a pool that never rotated would open none after round 1)")
    print(f"  failed turns through shardgate: {g['turns_failed']}")
PY
