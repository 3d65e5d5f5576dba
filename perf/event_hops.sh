#!/usr/bin/env bash
# event_hops: where a turn's events spend their way from the mock to the client, nginx against
# shardgate: while the same open-loop load runs through each relay in turn, `perf record -a`
# takes every sendto/writev entry and recvfrom exit on every CPU for a few seconds, and
# perf/event_hops.py follows each of the mock's event sends to the relay's read, the relay's
# send, and the load's read (the three hops of an event's one-way latency). Over HTTP it also
# times the mock's response head (sent apart, just ahead of the events) to the relay's read. The
# tracepoints cost the same few microseconds to both relays: compare, do not read absolutes.
#   perf/event_hops.sh [--wire http|ws] [--rate N] [--connections N] [--payload BYTES]
#                      [--secs S] [--targets "nginx shardgate"]
# Defaults: the http-sse shape (HTTP, 16 connections, 2000 turns/s, 30 KB bodies), 2 s traced.
# RELAY_CPUS / PEER_CPUS and PERF_BIN / PERF_TOOLS_BIN as in lib.sh. Needs perf (Debian's
# linux-perf is installed if missing).
set -euo pipefail
EH_WIRE=http EH_RATE=2000 EH_CONNS=16 EH_PAYLOAD=30000 EH_SECS=2 EH_TARGETS="nginx shardgate"
source "$(dirname "$0")/lib.sh"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wire) EH_WIRE=$2; shift 2 ;;
    --rate) EH_RATE=$2; shift 2 ;;
    --connections) EH_CONNS=$2; shift 2 ;;
    --payload) EH_PAYLOAD=$2; shift 2 ;;
    --secs) EH_SECS=$2; shift 2 ;;
    --targets) EH_TARGETS=$2; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
command -v perf >/dev/null ||
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf) >&2
build
start_mock --shards 1
start_gateway "$SHARDS"
start_nginx
WIRE=$EH_WIRE
# The load over HTTP sends no chained turns (store=false responses do not chain over HTTP).
chain=(--store-false-chain)
[[ $EH_WIRE == http ]] && chain=()
echo "load: $EH_CONNS connections over $EH_WIRE, $EH_RATE turns/s, $EH_PAYLOAD B; ${EH_SECS} s traced per relay"
for target in $EH_TARGETS; do
  "${ON_PEER_CPUS[@]}" "$TOOLS" load --url "$(target_url "$target")" --key "$(target_key "$target")" \
    --connections "$EH_CONNS" --duration-secs $((EH_SECS + 4)) --payload-bytes "$EH_PAYLOAD" \
    --rate "$EH_RATE" "${chain[@]}" >"$WORK/load.txt" 2>&1 &
  load_pid=$!
  sleep 2
  perf record -a -e syscalls:sys_enter_sendto,syscalls:sys_enter_writev,syscalls:sys_exit_recvfrom \
    --exclude-perf -o "$WORK/$target.data" -- sleep "$EH_SECS" >/dev/null 2>&1 || true
  wait "$load_pid" || true
  perf script -i "$WORK/$target.data" >"$WORK/$target.txt" 2>/dev/null
  echo "== $target ($(grep -E '^event' "$WORK/load.txt" | awk '{print "load event p50 " $4 " us"}'))"
  python3 "$PERF_DIR/event_hops.py" "$WORK/$target.txt"
done
