#!/usr/bin/env bash
# failure-mix: scripted upstream faults at a fixed rate, direct vs nginx vs shardgate. After each
# mock reset a script queues, per 100 upstream turns: 5 `server_error` error events before the
# first event, 2 closes with 1012, 2 dropped connections after two events, 91 clean turns (the
# mix repeats; each upstream attempt, retries included, takes the next rule). Reports attempts per
# client request (upstream turns / client requests) and the share of client turns that ended in an
# error (err %: includes faults that are final by design, e.g. a drop after events reached the
# client). For shardgate it adds the gateway's own view from its /metrics: attempts/request,
# retry-exhausted share (requests that used up the retry budget), retries by reason. Direct and
# nginx pass every fault through; shardgate's numbers show whatever retry policy the build has.
#   perf/failure-mix.sh [steady.sh options]
set -euo pipefail
NAME=failure-mix CONNS=16 SECS=4 RATE=1000 PAYLOAD=8000 IDLE=0 ROUNDS=2
source "$(dirname "$0")/lib.sh"
parse_common "$@"
mock_round_script() {
  python3 - "$RATE" "$SECS" <<'PY'
import json, sys
rate, secs = float(sys.argv[1] or 5000), float(sys.argv[2])
block = [
    {"value": "", "times": 18}, {"value": "error=server_error"},
    {"value": "", "times": 18}, {"value": "close=1012"},
    {"value": "", "times": 18}, {"value": "error=server_error"},
    {"value": "", "times": 18}, {"value": "after=2,drop"},
    {"value": "", "times": 19}, {"value": "error=server_error"},
    {"value": "close=1012"}, {"value": "error=server_error"},
    {"value": "after=2,drop"}, {"value": "error=server_error"},
]
assert sum(r.get("times", 1) for r in block) == 100
repeats = int(rate * secs * 3 / 100) + 10
print(json.dumps({"turns": block * repeats}))
PY
}
compare_main
