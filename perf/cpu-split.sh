#!/usr/bin/env bash
# cpu-split: where a relay's CPU per turn goes, user space against kernel, for nginx and
# shardgate over the same load (per-thread utime/stime from /proc, no perf needed). Kernel time
# is mostly the socket work both relays share; the difference in user time is the relay's own.
# The kernel keeps the sum exact (each thread's run time) but splits it by the timer ticks that
# landed in user or kernel mode: at a few thousand turns per round, one tick is several µs per
# turn and a round can show a relay's time all on one side. Read the split over long rounds
# (--secs 30 and more) and the sum from any.
#   perf/cpu-split.sh [--bin PATH] [--rounds N] [--secs S] [--wire ws|http] [--max-conn-age S]
#                     -- [shardgate load options]
# The mock, gateway and nginx are perf/lib.sh's (the same configs as every scenario).
#   e.g. perf/cpu-split.sh --max-conn-age 3 -- --connections 16 --rate 400 --payload-bytes 8000 --store-false-chain
# Prints per target and round: turns, user µs/turn, sys µs/turn, TTFT and event p50/p99.
BIN_OPT="" RUNS=1 RUN_SECS=6 SPLIT_WIRE=ws
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN_OPT=$2; shift 2 ;;
    --rounds) RUNS=$2; shift 2 ;;
    --secs) RUN_SECS=$2; shift 2 ;;
    --wire) SPLIT_WIRE=$2; shift 2 ;;
    --max-conn-age) GW_UPSTREAM_EXTRA="max_conn_age_secs = $2"; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
PERF_BIN=${BIN_OPT:-${PERF_BIN:-}}
source "$(dirname "$0")/lib.sh"
build
start_mock
start_gateway
start_nginx
# Clock ticks (user, sys) summed over every thread of the given processes.
ticks() {
  local u=0 s=0 a b
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      read -r a b < <(awk '{print $14, $15}' "$t/stat")
      u=$((u + a)) s=$((s + b))
    done
  done
  echo "$u $s"
}
hz=$(getconf CLK_TCK)
for round in $(seq "$RUNS"); do
  for target in nginx shardgate; do
    if [[ $target == nginx ]]; then url=$NGINX_URL key=sk-mock procs=$(nginx_workers | tr '\n' ' ')
    else url=$GW_URL key=$KEY procs=$GW_PID; fi
    [[ $SPLIT_WIRE == http ]] && url=${url/ws:/http:}
    # shellcheck disable=SC2086
    read -r u0 s0 < <(ticks $procs)
    "$TOOLS" load --url "$url" --key "$key" --duration-secs "$RUN_SECS" "$@" >"$WORK/load.txt" 2>&1
    # shellcheck disable=SC2086
    read -r u1 s1 < <(ticks $procs)
    turns=$(turns_ok "$WORK/load.txt")
    lat=$(awk '$1 == "ttft" {printf "ttft p50 %s p99 %s  ", $3, $6}
      $1 == "event" {printf "event p50 %s p99 %s", $4, $7}' "$WORK/load.txt")
    awk -v t="$target" -v r="$round" -v n="$turns" -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v hz="$hz" -v l="$lat" \
      'BEGIN { printf "%-9s round %s  turns %6d  user %6.1f us/turn  sys %6.1f us/turn  %s\n", t, r, n, du * 1e6 / hz / n, ds * 1e6 / hz / n, l }'
  done
done
