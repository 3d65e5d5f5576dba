#!/usr/bin/env bash
# ab: two or more gateway builds through the same scenarios, alternating build by build within
# each iteration, every build driven by one mock and load generator (PERF_TOOLS_BIN), then one
# table of shardgate/nginx ratios per scenario and build (each scenario's own side-by-side run
# against nginx and direct). The way every session's start-against-end figures in README.md
# were made.
#   perf/ab.sh --bins "/path/a /path/b" [--tools /path] [--iters N] [--scenarios "steady ..."] [--aa]
# --tools defaults to the last build. --aa adds a second nginx of the same configuration to every
# round (target nginx-b in lib.sh): its nginx-b/nginx row is what the same ratios read for two
# identical relays, the run's noise floor to hold each build's row against. Scenario arguments
# are the A/B set below (short rounds, open loop where nginx and shardgate both keep up); results
# stay under perf/out/<scenario>-*/, and the list of runs in perf/out/ab-<time>.log (re-print its
# table with `perf/ab_summary.py LOG`). A scenario written NAME@RATE runs NAME open-loop at RATE
# turns a second: `connect-storm` is closed-loop, which finds each relay's capacity (its turns/s
# column), but then the faster relay's latencies are taken under more load than the slower one's;
# `connect-storm@5000` compares the latencies at one rate that both sustain.
set -euo pipefail
PERF_DIR=$(cd "$(dirname "$0")" && pwd)
ITERS=1 BINS="" TOOLS="" SCENARIOS="steady codex-shaped http-sse connect-storm connect-storm@5000 long-sessions"
TARGETS="direct nginx shardgate"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bins) BINS=$2; shift 2 ;;
    --tools) TOOLS=$2; shift 2 ;;
    --iters) ITERS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    --aa) TARGETS="direct nginx nginx-b shardgate"; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[[ -n $BINS ]] || { echo "--bins is required" >&2; exit 2; }
read -r -a bins <<<"$BINS"
TOOLS=${TOOLS:-${bins[-1]}}
args_of() { # scenario[@rate]
  if [[ $1 == *@* ]]; then echo "$(args_of "${1%@*}") --rate ${1#*@}"; return; fi
  case $1 in
    steady) echo "--rounds 2 --connections 16 --secs 3 --rate 2000 --idle-sessions 0" ;;
    codex-shaped) echo "--rounds 2 --connections 16 --secs 3 --rate 1000 --idle-sessions 0" ;;
    http-sse) echo "--rounds 2 --secs 3 --connections 16 --rate 2000" ;;
    connect-storm) echo "--rounds 2 --secs 3" ;;
    *) echo "" ;;
  esac
}
mkdir -p "$PERF_DIR/out"
LOG="$PERF_DIR/out/ab-$(date -u +%Y%m%dT%H%M%S).log"
for it in $(seq "$ITERS"); do
  for scenario in $SCENARIOS; do
    for bin in "${bins[@]}"; do
      # shellcheck disable=SC2046
      TARGETS=$TARGETS PERF_TOOLS_BIN=$TOOLS PERF_BIN=$bin "$PERF_DIR/${scenario%@*}.sh" $(args_of "$scenario") \
        >"$PERF_DIR/out/ab-last.txt" 2>&1 || { echo "$scenario failed with $bin:" >&2; tail -5 "$PERF_DIR/out/ab-last.txt" >&2; continue; }
      dir=$(ls -td "$PERF_DIR/out/${scenario%@*}"-* | head -1)
      echo "$it $scenario $bin $dir" >>"$LOG"
      echo "iteration $it: $scenario with $bin done ($dir)"
    done
  done
done
python3 "$PERF_DIR/ab_summary.py" "$LOG"
