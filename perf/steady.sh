#!/usr/bin/env bash
# steady: many sessions, many chained store=false turns, Codex-sized frames; the same load run
# (a) direct to the mock, (b) through nginx as a raw WebSocket relay, (c) through shardgate,
# alternating rounds in one run. Prints per-target percentiles, the added latency and CPU of
# (b) and (c) over (a) as ratios, pool reuse, attempts per request and RSS per idle session.
# Stops by itself.
#
#   perf/steady.sh [--rounds 3] [--connections 32] [--secs 5] [--payload 30000] [--shards 2]
#                  [--rate TURNS_PER_SEC]   (open-loop cap; without it the load is closed-loop)
#                  [--warmup]               (a generate:false warm-up before each turn, as Codex does)
#                  [--idle-sessions 1000] [--hold-secs 3] [--targets "direct nginx shardgate"]
set -euo pipefail
NAME=${NAME:-steady}
source "$(dirname "$0")/lib.sh"
parse_common "$@"
compare_main
