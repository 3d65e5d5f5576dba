#!/usr/bin/env bash
# connect-storm: thousands of short sessions — connect (TCP + WebSocket handshake), one small
# turn, close — direct vs nginx vs shardgate in alternating rounds. Reports connects/s and the
# connect and connect+first-turn latency next to the usual figures.
#   perf/connect-storm.sh [steady.sh options]   (defaults: 32 connections, 4 s, 200-byte frames)
# Each closed connection leaves a TIME_WAIT socket on the client side; loopback reuses them
# (net.ipv4.tcp_tw_reuse=2), and the open-file limit must cover --connections (ulimit -n).
set -euo pipefail
NAME=connect-storm CONNS=32 SECS=4 PAYLOAD=0 CHAIN="" IDLE=0 LOAD_EXTRA="--reconnect-every 1"
source "$(dirname "$0")/lib.sh"
parse_common "$@"
need=$((CONNS * 3 + 64))
if [[ $(ulimit -n) != unlimited && $(ulimit -n) -lt $need ]]; then
  ulimit -n "$need" 2>/dev/null || { echo "ulimit -n $(ulimit -n) is below $need" >&2; exit 1; }
fi
compare_main
