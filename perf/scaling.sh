#!/usr/bin/env bash
# scaling: closed-loop `steady` through shardgate only, with 1 shard and with N shards (default 2),
# alternating runs, and the throughput and CPU ratio N/1. On a 2-core box the load generator and
# the mock share the cores with the gateway, so the ratio is a floor; see perf/README.md for the
# many-core recipe (taskset to separate load/mock from gateway cores, shards = cores).
#   perf/scaling.sh [--shards N] [--runs 2] [steady.sh options, e.g. --connections 32 --secs 3]
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
N=2 RUNS=2 args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --shards) N=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
outs=()
for run in $(seq 1 "$RUNS"); do
  for shards in 1 "$N"; do
    out=$("$DIR/steady.sh" --targets shardgate --idle-sessions 0 --shards "$shards" --name "scaling-$shards" \
      "${args[@]+"${args[@]}"}" | awk '/^JSON, CSV and plots:/ {print $NF}')
    outs+=("$shards=$out")
  done
done
python3 - "$N" "${outs[@]}" <<'PY'
import json, sys, statistics as st
n = sys.argv[1]
by = {}
for arg in sys.argv[2:]:
    shards, out = arg.split("=", 1)
    g = json.load(open(f"{out}/summary.json"))["targets"]["shardgate"]
    by.setdefault(shards, []).append(g)
print(f"{'shards':>6} {'turns/s (runs)':>30} {'ttft p50':>9} {'ttft p99':>9} {'cpu s/1k':>9}")
for s in ("1", n):
    runs = by[s]
    tps = ", ".join("%.0f" % r["turns_per_sec"] for r in runs)
    print(f"{s:>6} {tps:>30} "
          f"{st.median(r['ttft_p50'] for r in runs):>9.0f} {st.median(r['ttft_p99'] for r in runs):>9.0f} "
          f"{st.median(r['cpu_per_1k'] for r in runs):>9.3f}")
t1 = st.median(r["turns_per_sec"] for r in by["1"])
tn = st.median(r["turns_per_sec"] for r in by[n])
print(f"throughput ratio {n} shards / 1 shard: {tn / t1:.2f}")
PY
