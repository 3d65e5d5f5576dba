#!/usr/bin/env bash
# steady: many sessions, many chained store=false turns, Codex-sized frames; the same load run
# (a) direct to the mock, (b) through nginx as a raw WebSocket relay, (c) through shardgate,
# alternating rounds in one run. Prints per-target percentiles and the added latency and CPU of
# (b) and (c) over (a) as ratios. Stops by itself.
#
#   perf/steady.sh [--rounds 3] [--connections 32] [--secs 5] [--payload 30000] [--shards 2]
#                  [--rate TURNS_PER_SEC]   (open-loop cap; without it the load is closed-loop)
#                  [--warmup]               (a generate:false warm-up before each turn, as Codex does)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=3 CONNS=32 SECS=5 PAYLOAD=30000 SHARDS=2 RATE="" WARMUP="" NAME=steady
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    --payload) PAYLOAD=$2; shift 2 ;;
    --shards) SHARDS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --warmup) WARMUP=1; shift ;;
    --name) NAME=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

build
start_mock --shards 1
start_gateway "$SHARDS"
start_nginx
OUT="$ROOT/perf/out/$NAME-$(date +%Y%m%dT%H%M%S)"
mkdir -p "$OUT"

nginx_cpu() { local t=0; for p in $(pgrep -f "nginx: worker process" || true); do t=$(awk -v t="$t" '{print t + ($14 + $15) / 100}' "/proc/$p/stat"); done; echo "$t"; }

run_one() { # name url key round
  local before_gw before_ng
  before_gw=$(cpu_secs "$GW_PID"); before_ng=$(nginx_cpu)
  "$BIN" load --url "$2" --key "$3" --connections "$CONNS" --duration-secs "$SECS" \
    --store-false-chain --payload-bytes "$PAYLOAD" ${RATE:+--rate "$RATE"} ${WARMUP:+--warmup} --json-out "$OUT/$1-$4.json" >/dev/null
  python3 - "$OUT/$1-$4.json" "$(cpu_secs "$GW_PID")" "$before_gw" "$(nginx_cpu)" "$before_ng" "$1" <<'PY'
import json, sys
path, gw_after, gw_before, ng_after, ng_before, name = sys.argv[1:]
r = json.load(open(path))
cpu = {"shardgate": float(gw_after) - float(gw_before), "nginx": float(ng_after) - float(ng_before)}.get(name, 0.0)
r["relay_cpu_secs"] = cpu
json.dump(r, open(path, "w"))
PY
}

for round in $(seq 1 "$ROUNDS"); do
  run_one direct "$MOCK_URL" sk-mock "$round"
  run_one nginx "$NGINX_URL" sk-mock "$round"
  run_one shardgate "$GW_URL" "$KEY" "$round"
done

python3 - "$OUT" "$ROUNDS" "$(peak_rss_kib "$GW_PID")" <<'PY'
import json, sys, statistics as st
out, rounds, rss = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names = ["direct", "nginx", "shardgate"]
runs = {n: [json.load(open(f"{out}/{n}-{i}.json")) for i in range(1, rounds + 1)] for n in names}
def med(n, f): return st.median(f(r) for r in runs[n])
rows = []
print(f"{out.rsplit('/', 1)[-1]}: {runs['direct'][0]['connections']} connections, {rounds} alternating rounds, payload {runs['direct'][0]['payload_bytes']} B (medians over rounds)")
print(f"{'target':<10} {'turns/s':>9} {'ttft p50':>9} {'p95~p90':>9} {'p99':>8} {'p99.9':>8} {'evt p50':>8} {'evt p99':>8} {'errors':>7} {'cpu s/1k turns':>15}")
summary = {}
for n in names:
    s = {
        "turns_per_sec": med(n, lambda r: r["turns_per_sec"]),
        "ttft_p50": med(n, lambda r: r["ttft_us"]["p50"]),
        "ttft_p90": med(n, lambda r: r["ttft_us"]["p90"]),
        "ttft_p99": med(n, lambda r: r["ttft_us"]["p99"]),
        "ttft_p999": med(n, lambda r: r["ttft_us"]["p999"]),
        "evt_p50": med(n, lambda r: r["event_latency_us"]["p50"]),
        "evt_p99": med(n, lambda r: r["event_latency_us"]["p99"]),
        "errors": sum(r["errors_total"] for r in runs[n]),
        "cpu_per_1k": med(n, lambda r: 1000 * r.get("relay_cpu_secs", 0) / max(r["turns_ok"], 1)),
    }
    summary[n] = s
    print(f"{n:<10} {s['turns_per_sec']:>9.0f} {s['ttft_p50']:>9} {s['ttft_p90']:>9} {s['ttft_p99']:>8} {s['ttft_p999']:>8} {s['evt_p50']:>8} {s['evt_p99']:>8} {s['errors']:>7} {s['cpu_per_1k']:>15.3f}")
d = summary["direct"]
print("\nadded over direct (µs) and ratio shardgate/nginx:")
for k, label in [("ttft_p50", "TTFT p50"), ("ttft_p90", "TTFT p90"), ("ttft_p99", "TTFT p99"), ("evt_p50", "event p50"), ("evt_p99", "event p99")]:
    ng, sg = summary["nginx"][k] - d[k], summary["shardgate"][k] - d[k]
    ratio = f"{sg / ng:.2f}" if ng > 0 else "n/a"
    print(f"  {label:<10} nginx +{ng:>6}  shardgate +{sg:>6}  ratio {ratio}")
ng, sg = summary["nginx"]["cpu_per_1k"], summary["shardgate"]["cpu_per_1k"]
print(f"  relay CPU s per 1000 turns: nginx {ng:.3f}  shardgate {sg:.3f}  ratio {sg / ng if ng else float('nan'):.2f}")
print(f"  shardgate peak RSS: {rss / 1024:.1f} MiB")
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(f"\nJSON: {out}")
PY
